"""A cache shard (the L1 tier's unit) and the contract clients use to reach one.

``CacheShard`` is a plain class: a byte-bounded LRU keyed by storage key plus an index so a collection
or one document's chunks can be dropped without scanning. The Serve deployment in
``deployments/cache_group.py`` is a thin remote wrapper around it; ``LocalShardClient`` reaches one in
the same process (tests, single-process use, and the L0 tier which is a CacheShard too).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from cache.lru import DEFAULT_ENTRY_OVERHEAD_BYTES, ByteBoundedLRU

__all__ = ["CacheShard", "ShardClient", "LocalShardClient"]

# Measured cost of the invalidation index per entry in the worst case (one chunk per document: a set
# per document, the owner tuple per key); charged to the byte budget with the LRU's own overhead.
INDEX_OVERHEAD_BYTES = 576


class CacheShard:
    """Bytes-bounded LRU with TTL and an invalidation index by collection and by document.

    A content-addressed key can belong to several documents (identical chunk text); it is indexed under
    each owner, and invalidating any owner drops it (harmless: it is rebuilt on the next miss). Values
    are packed ``bytes`` in a shard; the L0 tier stores ``array.array`` IDs with ``value_size=sys.getsizeof``.
    """

    def __init__(
        self,
        max_bytes: int,
        ttl_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        value_size: Callable[[Any], int] = len,
    ) -> None:
        self._lru = ByteBoundedLRU(
            max_bytes,
            ttl_s=ttl_s,
            clock=clock,
            on_remove=self._unindex,
            entry_overhead_bytes=DEFAULT_ENTRY_OVERHEAD_BYTES + INDEX_OVERHEAD_BYTES,
            value_size=value_size,
        )
        # key -> owners as a small tuple (almost always one owner; a set would cost 4x the memory).
        self._owners: dict[str, tuple[tuple[str, str], ...]] = {}
        # (collection, doc_id) -> keys. A collection is the union of its documents' sets: one index,
        # and collection invalidation (rare) pays a walk over documents instead of a second index.
        self._by_doc: dict[tuple[str, str], set[str]] = {}
        self.hits = 0
        self.misses = 0

    @property
    def lru(self) -> ByteBoundedLRU:
        return self._lru

    def get(self, key: str) -> bytes | None:
        value = self._lru.get(key)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Values of the keys present (absent and expired keys are left out)."""
        found: dict[str, bytes] = {}
        for key in keys:
            value = self.get(key)
            if value is not None:
                found[key] = value
        return found

    def put_many(self, items: dict[str, bytes], owners: dict[str, tuple[str, str]]) -> None:
        """Store values; ``owners`` maps key -> (collection, doc_id) for invalidation."""
        for key, value in items.items():
            if not self._lru.put(key, value):
                continue  # larger than the whole budget: not stored, so not indexed
            owner = owners.get(key)
            if owner is not None:
                self._index(key, owner)

    def invalidate(self, collection: str, doc_id: str | None = None) -> int:
        """Drop a collection's entries, or one document's; returns how many entries were removed."""
        if doc_id is None:
            keys: set[str] = set()
            for owner, doc_keys in self._by_doc.items():
                if owner[0] == collection:
                    keys.update(doc_keys)
        else:
            keys = set(self._by_doc.get((collection, doc_id), ()))
        removed = 0
        for key in keys:
            if self._lru.delete(key):
                removed += 1
            self._unindex(key)
        return removed

    def clear(self) -> None:
        self._lru.clear()
        self._owners.clear()
        self._by_doc.clear()

    def stats(self) -> dict:
        looked = self.hits + self.misses
        return {
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": 100.0 * self.hits / looked if looked else 0.0,
            "entries": self._lru.entries,
            "size_bytes": self._lru.size_bytes,
            "max_bytes": self._lru.max_bytes,
            "evictions": self._lru.evictions,
            "expirations": self._lru.expirations,
        }

    def collections(self) -> set[str]:
        return {owner[0] for owner in self._by_doc}

    def _index(self, key: str, owner: tuple[str, str]) -> None:
        current = self._owners.get(key, ())
        if owner not in current:
            self._owners[key] = current + (owner,)
        self._by_doc.setdefault(owner, set()).add(key)

    def _unindex(self, key: str) -> None:
        for owner in self._owners.pop(key, ()):
            doc_keys = self._by_doc.get(owner)
            if doc_keys is not None:
                doc_keys.discard(key)
                if not doc_keys:
                    del self._by_doc[owner]


class ShardClient(ABC):
    """How ``TokenCache`` reaches one shard. ``shard_id`` places it on the hash ring and must be the
    same in every process (e.g. the Serve deployment name). Methods may raise ``ShardUnavailableError``."""

    @property
    @abstractmethod
    def shard_id(self) -> str: ...

    @abstractmethod
    async def get_many(self, keys: list[str]) -> dict[str, bytes]: ...

    @abstractmethod
    async def put_many(self, items: dict[str, bytes], owners: dict[str, tuple[str, str]]) -> None: ...

    @abstractmethod
    async def invalidate(self, collection: str, doc_id: str | None = None) -> int: ...

    @abstractmethod
    async def clear(self) -> None: ...

    async def stats(self) -> dict:
        return {}


class LocalShardClient(ShardClient):
    """A ``CacheShard`` in this process, behind the async contract."""

    def __init__(self, shard: CacheShard, shard_id: str = "local-0") -> None:
        self._shard = shard
        self._shard_id = shard_id

    @property
    def shard(self) -> CacheShard:
        return self._shard

    @property
    def shard_id(self) -> str:
        return self._shard_id

    async def get_many(self, keys: list[str]) -> dict[str, bytes]:
        return self._shard.get_many(keys)

    async def put_many(self, items: dict[str, bytes], owners: dict[str, tuple[str, str]]) -> None:
        self._shard.put_many(items, owners)

    async def invalidate(self, collection: str, doc_id: str | None = None) -> int:
        return self._shard.invalidate(collection, doc_id)

    async def clear(self) -> None:
        self._shard.clear()

    async def stats(self) -> dict:
        return self._shard.stats()
