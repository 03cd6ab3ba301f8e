"""A cache shard (the L1 tier's unit) and the contract clients use to reach one.

``CacheShard`` is a plain class: a byte-bounded LRU keyed by storage key plus an index so a collection
or one document's chunks can be dropped without scanning. The Serve deployment in
``deployments/cache_group.py`` is a thin remote wrapper around it; ``LocalShardClient`` reaches one in
the same process (tests, single-process use, and the L0 tier which is a CacheShard too).

Single-flight across processes: ``get_or_claim`` answers the keys present and *claims* the missing ones
for the caller, who must compute them and ``put_many`` them. A key someone else has claimed is reported
as waiting until its claim's lease runs out (a crashed or cancelled owner never blocks anyone for longer
than the lease). ``CacheShard`` stays synchronous with an injectable clock; ``ClaimingShard`` adds the
asyncio wait (until the key is put or its lease lapses, bounded by the caller's ``wait_s``) and is shared
by the Serve deployment and ``LocalShardClient``, so in-process tests run the same logic.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cache.lru import DEFAULT_ENTRY_OVERHEAD_BYTES, ByteBoundedLRU
from cache.stats import hit_rate

__all__ = ["CacheShard", "ClaimReply", "ClaimingShard", "ShardClient", "LocalShardClient"]

# Measured cost of the invalidation index per entry in the worst case (one chunk per document: a set
# per document, the owner tuple per key); charged to the byte budget with the LRU's own overhead.
INDEX_OVERHEAD_BYTES = 576


@dataclass(frozen=True, slots=True)
class ClaimReply:
    """Answer of ``get_or_claim``. ``found``: values present. ``claimed``: keys the caller now owns and
    must compute and ``put_many`` (or let the lease lapse). ``waiting``: keys another caller owns, with
    their lease expiry on the shard's clock; after ``ClaimingShard``'s wait these are the keys whose wait
    ran out, which the caller computes without a claim."""

    found: dict[str, bytes] = field(default_factory=dict)
    claimed: list[str] = field(default_factory=list)
    waiting: dict[str, float] = field(default_factory=dict)


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
        # key -> lease expiry of its claim, in claim order (so lapsed claims are pruned from the front).
        self._claims: dict[str, float] = {}
        self._clock = clock
        self.hits = 0
        self.misses = 0
        self.claims_granted = 0
        self.claims_lapsed = 0

    @property
    def lru(self) -> ByteBoundedLRU:
        return self._lru

    @property
    def clock(self) -> Callable[[], float]:
        return self._clock

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

    def get_or_claim(self, keys: Iterable[str], lease_s: float) -> ClaimReply:
        """Values of the keys present; each missing key is claimed for ``lease_s`` seconds by this caller
        unless another caller's claim on it is still live (then it is reported under ``waiting``)."""
        now = self._clock()
        self._prune_claims(now)
        reply = ClaimReply()
        for key in dict.fromkeys(keys):
            value = self.get(key)
            if value is not None:
                reply.found[key] = value
                continue
            expires_at = self._claims.get(key)
            if expires_at is not None and expires_at > now:
                reply.waiting[key] = expires_at
                continue
            if expires_at is not None:
                del self._claims[key]  # lapsed: its owner died or is too slow; the caller takes over
                self.claims_lapsed += 1  # claims that ended without a put
            self._claims[key] = now + lease_s
            self.claims_granted += 1
            reply.claimed.append(key)
        return reply

    def put_many(self, items: dict[str, bytes], owners: dict[str, tuple[str, str]]) -> None:
        """Store values (releasing any claim on them); ``owners`` maps key -> (collection, doc_id)."""
        for key, value in items.items():
            self._claims.pop(key, None)
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
        """Drop every entry and every claim."""
        self._lru.clear()
        self._owners.clear()
        self._by_doc.clear()
        self._claims.clear()

    def stats(self) -> dict:
        """Counters and sizes; ``hit_rate`` is a fraction 0..1."""
        return {
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": hit_rate(self.hits, self.misses),
            "entries": self._lru.entries,
            "size_bytes": self._lru.size_bytes,
            "max_bytes": self._lru.max_bytes,
            "evictions": self._lru.evictions,
            "expirations": self._lru.expirations,
            "claims": len(self._claims),
            "claims_granted": self.claims_granted,
            "claims_lapsed": self.claims_lapsed,
        }

    def collections(self) -> set[str]:
        return {owner[0] for owner in self._by_doc}

    def _prune_claims(self, now: float) -> None:
        # Claims are appended in time order, so lapsed ones sit at the front; with mixed lease lengths a
        # lapsed claim behind a live one waits for the next prune, and is ignored on lookup meanwhile.
        while self._claims:
            key = next(iter(self._claims))
            if self._claims[key] > now:
                return
            del self._claims[key]
            self.claims_lapsed += 1

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


async def wait_event(event: asyncio.Event, timeout_s: float) -> None:
    """Wait until ``event`` is set or ``timeout_s`` seconds pass, whichever is first (``ClaimingShard``'s timer)."""
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        pass


class ClaimingShard:
    """A ``CacheShard`` whose ``get_or_claim`` waits (asyncio) for keys other callers have claimed.

    One per shard, on one event loop: the Serve deployment's and ``LocalShardClient``'s. A waiting call
    parks on one ``asyncio.Event`` registered under each key it waits for; ``put_many`` and ``clear`` set
    the events of the keys they touch, a lapsing lease is a timeout. Woken (or timed out), the call asks
    the shard again: a put key is found, a lapsed claim is taken over. It returns when nothing is left to
    wait for, when it has taken over a claim (not to sit on a key others may now wait for), or after
    ``wait_s``, whichever is first; keys still claimed elsewhere are left under ``waiting`` and the
    caller computes them itself, so a lookup never waits longer than ``wait_s``. ``wait_s == 0`` answers
    at once (the client's first round, which must write back its own claims before it waits).
    """

    def __init__(self, shard: CacheShard, wait: Callable[[asyncio.Event, float], Awaitable[None]] | None = None) -> None:
        self.shard = shard
        self._wait = wait or wait_event  # tests pass a timer on the shard's fake clock
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self.waits = 0
        self.waits_timed_out = 0

    async def get_or_claim(self, keys: list[str], lease_s: float, wait_s: float) -> ClaimReply:
        reply = self.shard.get_or_claim(keys, lease_s)
        if not reply.waiting or wait_s <= 0:
            return reply
        self.waits += 1
        found, claimed, waiting = dict(reply.found), list(reply.claimed), reply.waiting
        clock = self.shard.clock  # one clock for the deadline and the leases (time.monotonic by default)
        deadline = clock() + max(0.0, wait_s)
        event = asyncio.Event()
        while waiting:
            left = deadline - clock()
            if left <= 0:
                break
            lease_left = min(waiting.values()) - clock()
            event.clear()
            for key in waiting:
                self._waiters.setdefault(key, set()).add(event)
            try:
                await self._wait(event, max(0.0, min(left, lease_left)))
            finally:
                self._forget(event, waiting)
            again = self.shard.get_or_claim(list(waiting), lease_s)
            found.update(again.found)
            claimed.extend(again.claimed)
            waiting = again.waiting
            if again.claimed:
                break  # took over a lapsed claim: return, others may be waiting for that key now
        if waiting:
            self.waits_timed_out += 1
        return ClaimReply(found, claimed, waiting)

    def put_many(self, items: dict[str, bytes], owners: dict[str, tuple[str, str]]) -> None:
        """Store (releasing the claims) and wake whoever waits for these keys."""
        self.shard.put_many(items, owners)
        self._wake(items)

    def clear(self) -> None:
        """Drop entries and claims; waiters wake and claim for themselves."""
        self.shard.clear()
        self._wake(list(self._waiters))

    def stats(self) -> dict:
        return self.shard.stats() | {"claim_waits": self.waits, "claim_waits_timed_out": self.waits_timed_out}

    def _wake(self, keys: Iterable[str]) -> None:
        for key in keys:
            for event in self._waiters.pop(key, ()):
                event.set()

    def _forget(self, event: asyncio.Event, keys: Iterable[str]) -> None:
        for key in keys:
            events = self._waiters.get(key)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._waiters[key]


class ShardClient(ABC):
    """How ``TokenCache`` reaches one shard. ``shard_id`` places it on the hash ring and must be the
    same in every process (e.g. the Serve deployment name). Methods may raise ``ShardUnavailableError``."""

    @property
    @abstractmethod
    def shard_id(self) -> str: ...

    @abstractmethod
    async def get_many(self, keys: list[str]) -> dict[str, bytes]: ...

    async def get_or_claim(self, keys: list[str], lease_s: float, wait_s: float) -> ClaimReply:
        """Values present, plus the missing keys this caller now owns (see ``CacheShard.get_or_claim``).

        Default for shards without claim support: a plain ``get_many`` that claims nothing, so the
        caller computes every missing key (single-flight per process only)."""
        return ClaimReply(found=await self.get_many(keys))

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

    def __init__(self, shard: CacheShard, shard_id: str = "local-0",
                 wait: Callable[[asyncio.Event, float], Awaitable[None]] | None = None) -> None:
        self._shard = shard
        self._shard_id = shard_id
        self._claiming = ClaimingShard(shard, wait=wait)

    @property
    def shard(self) -> CacheShard:
        return self._shard

    @property
    def shard_id(self) -> str:
        return self._shard_id

    async def get_many(self, keys: list[str]) -> dict[str, bytes]:
        return self._shard.get_many(keys)

    async def get_or_claim(self, keys: list[str], lease_s: float, wait_s: float) -> ClaimReply:
        return await self._claiming.get_or_claim(keys, lease_s, wait_s)

    async def put_many(self, items: dict[str, bytes], owners: dict[str, tuple[str, str]]) -> None:
        self._claiming.put_many(items, owners)

    async def invalidate(self, collection: str, doc_id: str | None = None) -> int:
        return self._shard.invalidate(collection, doc_id)

    async def clear(self) -> None:
        self._claiming.clear()

    async def stats(self) -> dict:
        return self._claiming.stats()
