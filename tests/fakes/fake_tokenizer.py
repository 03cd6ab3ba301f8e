"""Test doubles for TokenizerBackend: deterministic, counting, optionally slow or wide-vocab."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from tokenization import TokenizerBackend


class FakeTokenizer(TokenizerBackend):
    """Whitespace 'tokenizer': each word maps to a stable id; counts calls and texts tokenized."""

    def __init__(self, fingerprint: str = "f" * 64, delay_s: float = 0.0, id_offset: int = 0) -> None:
        self._fingerprint = fingerprint
        self.delay_s = delay_s
        self.id_offset = id_offset
        self.batch_calls = 0
        self.texts_encoded = 0
        self._lock = threading.Lock()
        self._vocab: dict[str, int] = {}

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def _id(self, word: str) -> int:
        with self._lock:
            return self._vocab.setdefault(word, len(self._vocab) + self.id_offset)

    def encode(self, text: str) -> list[int]:
        return [self._id(w) for w in text.split()]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        with self._lock:
            self.batch_calls += 1
            self.texts_encoded += len(texts)
        if self.delay_s:
            time.sleep(self.delay_s)
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        inverse = {v: k for k, v in self._vocab.items()}
        return " ".join(inverse[i] for i in ids)

    @property
    def vocab_size(self) -> int:
        return len(self._vocab) + self.id_offset
