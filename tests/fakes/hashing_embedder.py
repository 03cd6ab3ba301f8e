"""HashingEmbedder: a fake embedder for unit tests (deterministic bag-of-words feature hashing).

Texts sharing words get similar vectors, which is enough to test search plumbing without loading a
model. Not a semantic embedder; never use it outside tests.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

from retrieval.embedder import Embedder

__all__ = ["HashingEmbedder", "word_count"]

_WORD = re.compile(r"[a-z0-9]+")


def word_count(text: str) -> int:
    """Fake token counter: whitespace-separated words."""
    return len(text.split())


class HashingEmbedder(Embedder):
    """Fake: each lower-cased word adds +-1 to one of `dim` buckets chosen by its md5; rows normalized."""

    def __init__(self, dim: int = 256) -> None:
        self.dim = dim
        self.calls: list[list[str]] = []  # texts of each call, for assertions

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in _WORD.findall(text.lower()):
                digest = hashlib.md5(word.encode()).digest()
                bucket = int.from_bytes(digest[:4], "little") % self.dim
                out[row, bucket] += 1.0 if digest[4] & 1 else -1.0
            norm = np.linalg.norm(out[row])
            if norm == 0:
                out[row, 0] = 1.0  # empty text: a fixed unit vector
            else:
                out[row] /= norm
        return out

    async def aembed(self, texts: list[str]) -> np.ndarray:
        """Async form for RetrievalService."""
        return self.embed(texts)
