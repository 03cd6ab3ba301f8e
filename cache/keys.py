"""Content-addressed cache keys for chunk token IDs.

A key names a chunk by (collection, sha256 of its text, tokenizer fingerprint). Changing the text or the
tokenizer changes the key, so a stale or foreign token list can never be served; an edited chunk simply
misses and the old entry ages out (or is invalidated by document).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

__all__ = ["hash_content", "storage_key", "ChunkRef", "ChunkKey", "KEY_PREFIX"]

KEY_PREFIX = "tcrag:tok"


def hash_content(text: str) -> str:
    """sha256 hex of the UTF-8 text: the content address of a chunk."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def storage_key(collection: str, fingerprint: str, content_hash: str) -> str:
    """``tcrag:tok:{collection}:{fingerprint[:16]}:{content_hash}``; the prefix allows SCAN by collection.

    A plain function so the per-request hot path builds keys without a ``ChunkKey`` per chunk."""
    return f"{KEY_PREFIX}:{collection}:{fingerprint[:16]}:{content_hash}"


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """A retrieved chunk as the retrieval layer hands it over. ``chunk_id`` starts with ``doc_id``."""

    collection: str
    doc_id: str
    chunk_id: str
    text: str


@dataclass(frozen=True, slots=True)
class ChunkKey:
    """The cache identity of a chunk's token IDs under one tokenizer."""

    collection: str
    content_hash: str
    tokenizer_fingerprint: str

    @property
    def storage_key(self) -> str:
        """See ``storage_key``."""
        return storage_key(self.collection, self.tokenizer_fingerprint, self.content_hash)

    @classmethod
    def for_chunk(cls, chunk: ChunkRef, fingerprint: str) -> ChunkKey:
        return cls(
            collection=chunk.collection,
            content_hash=hash_content(chunk.text),
            tokenizer_fingerprint=fingerprint,
        )
