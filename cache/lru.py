"""A byte-bounded LRU with optional TTL: the storage of the L0 tier and of each shard.

An ``OrderedDict`` keeps recency: ``move_to_end`` on every hit, ``popitem(last=False)`` evicts the least
recently used entry. The bound is on bytes (each value's size plus the key), not on entry count,
because chunk token lists vary widely in size and the budget (``max_cache_size_mb``) is in bytes. A
value's size is ``len(value)`` for the packed ``bytes`` a shard holds; the L0 tier stores ``array.array``
values and passes ``value_size=sys.getsizeof`` so the real allocation (header included) is charged. TTL is
checked lazily on read (an expired entry is dropped and reported as a miss); expired entries that are
never read again are evicted by the byte bound like any other cold entry. The clock is injectable so
tests drive expiry without sleeping. Not thread-safe: each instance is owned by one event loop.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["ByteBoundedLRU", "DEFAULT_ENTRY_OVERHEAD_BYTES"]

# Measured (tracemalloc, CPython 3.11) bookkeeping per entry beyond len(value) + len(key): bytes and str
# object headers, the OrderedDict slot and link, the _Entry. Charged against the budget so that memory
# really held stays within ``max_bytes`` even for many small entries.
DEFAULT_ENTRY_OVERHEAD_BYTES = 256


@dataclass(slots=True)
class _Entry:
    value: Any
    size_bytes: int
    expires_at: float | None


class ByteBoundedLRU:
    """LRU of ``str -> bytes`` (or another sized value) bounded by ``max_bytes``; entries larger than the
    budget are not stored."""

    def __init__(
        self,
        max_bytes: int,
        ttl_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_remove: Callable[[str], None] | None = None,
        entry_overhead_bytes: int = DEFAULT_ENTRY_OVERHEAD_BYTES,
        value_size: Callable[[Any], int] = len,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be > 0")
        if ttl_s is not None and ttl_s <= 0:
            raise ValueError("ttl_s must be > 0 or None")
        self.max_bytes = max_bytes
        self.entry_overhead_bytes = entry_overhead_bytes
        self._value_size = value_size
        self.ttl_s = ttl_s
        self._clock = clock
        # Called with the key whenever an entry leaves by eviction or expiry, so an owner (the shard)
        # can keep its invalidation index in step without scanning.
        self._on_remove = on_remove
        self._data: OrderedDict[str, _Entry] = OrderedDict()
        self._size_bytes = 0
        self.evictions = 0
        self.expirations = 0

    def entry_size(self, key: str, value: Any) -> int:
        """Bytes charged for one entry against ``max_bytes``."""
        return self._value_size(value) + len(key) + self.entry_overhead_bytes

    @property
    def size_bytes(self) -> int:
        return self._size_bytes

    @property
    def entries(self) -> int:
        return len(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: str) -> bool:
        return self.get(key, touch=False) is not None

    def keys(self) -> Iterator[str]:
        return iter(list(self._data))

    def values(self) -> list[Any]:
        """Current values (expired ones included until read), without touching recency."""
        return [entry.value for entry in self._data.values()]

    def get(self, key: str, touch: bool = True) -> Any | None:
        """The value, or None when absent or expired. A hit becomes most recently used."""
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry.expires_at is not None and self._clock() >= entry.expires_at:
            self._remove(key)
            self.expirations += 1
            if self._on_remove is not None:
                self._on_remove(key)
            return None
        if touch:
            self._data.move_to_end(key)
        return entry.value

    def put(self, key: str, value: Any, ttl_s: float | None = None) -> bool:
        """Store (or replace) ``key``; evicts LRU entries to fit. Returns False if it can never fit."""
        size = self.entry_size(key, value)
        if size > self.max_bytes:
            # Storing it would evict everything else and still break the bound.
            self.delete(key)
            return False
        self.delete(key)
        ttl = self.ttl_s if ttl_s is None else ttl_s
        expires_at = None if ttl is None else self._clock() + ttl
        self._data[key] = _Entry(value, size, expires_at)
        self._size_bytes += size
        while self._size_bytes > self.max_bytes:
            evicted_key, evicted = self._data.popitem(last=False)  # least recently used first
            self._size_bytes -= evicted.size_bytes
            self.evictions += 1
            if self._on_remove is not None:
                self._on_remove(evicted_key)
        return True

    def delete(self, key: str) -> bool:
        if key not in self._data:
            return False
        self._remove(key)
        return True

    def clear(self) -> None:
        self._data.clear()
        self._size_bytes = 0

    def _remove(self, key: str) -> None:
        entry = self._data.pop(key)
        self._size_bytes -= entry.size_bytes
