"""The stored tiers below L0 behind one protocol: L1 (the shards) and L2 (Redis), as one client sees them.

A ``StoredTier`` reads a batch of keys and answers with the packed values it holds. ``read_through`` is
the one decode path for every such tier: verify the checksum and decode into the L0 array
(``codec.decode_compact``) and count a hit, or count a corruption and treat the key as a miss (it is
rebuilt below and rewritten). The tier also says how to write values back (``put_calls``, run by the
write-through), how to invalidate, and what its stats are.

- ``L1ShardTier``: the shards on the consistent-hash ring, one concurrent call per shard touched, each
  behind its own circuit breaker and timeout. A read also claims the missing keys on their shard
  (single-flight across replicas); keys another replica has claimed come back as ``waiting``.
- ``L2RedisTier``: one MGET through ``RedisTier`` (which keeps its own hit/miss/error counters, breaker
  and timeout); this view adds the corruption count.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from array import array
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from cache.breaker import BreakerState, CircuitBreaker
from cache.codec import compact_ids, decode_compact, encode_tokens
from cache.config import TokenCacheConfig
from cache.exceptions import CorruptEntryError
from cache.redis_tier import RedisTier
from cache.shard import ClaimReply, ShardClient
from cache.stats import TierCounters
from routing.hashring import ConsistentHashRing

__all__ = [
    "L0",
    "SHARD",
    "REDIS",
    "TOKENIZED",
    "Outcome",
    "Owners",
    "TierRead",
    "Resolved",
    "StoredTier",
    "L1ShardTier",
    "L2RedisTier",
    "read_through",
]

logger = logging.getLogger(__name__)

# Where a key's IDs came from: the labels of ``TokenLookup.hits_by_tier`` and of the stats.
L0, SHARD, REDIS, TOKENIZED = "l0", "shard", "redis", "tokenized"

Owners = dict[str, tuple[str, str]]  # storage key -> (collection, doc_id)


class Outcome(Enum):
    HIT = "hit"
    MISS = "miss"
    CORRUPT = "corrupt"


@dataclass(slots=True)
class TierRead:
    """What one tier read returned. ``claimed``: keys the caller now owns on the tier (it computes and
    writes them back, or the claim lapses). ``waiting``: keys another caller is computing. ``node``: which
    node of the tier each key was asked of (the shard), where the tier has several."""

    found: dict[str, bytes] = field(default_factory=dict)
    claimed: list[str] = field(default_factory=list)
    waiting: set[str] = field(default_factory=set)
    node: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Resolved:
    """Keys resolved in one fill round: the caller's list with its tier label, the L0 array, and the packed
    value known good (reused for write-back)."""

    ids: dict[str, tuple[list[int], str]] = field(default_factory=dict)
    compact: dict[str, array] = field(default_factory=dict)
    packed: dict[str, bytes] = field(default_factory=dict)

    def add_stored(self, key: str, raw: bytes, tier: str) -> bool:
        """Verify and decode a stored value; False (nothing added) when it fails its checksum."""
        try:
            arr = decode_compact(raw)
        except CorruptEntryError:
            return False
        self.compact[key] = arr
        self.ids[key] = (arr.tolist(), tier)
        self.packed[key] = raw
        return True

    def add_tokenized(self, key: str, ids: Sequence[int], pack: bool) -> None:
        """Add freshly computed IDs; ``pack`` when they are written through (packed from the array: no
        second pass over the ints)."""
        arr = compact_ids(ids)
        self.compact[key] = arr
        self.ids[key] = (list(ids), TOKENIZED)
        if pack:
            self.packed[key] = encode_tokens(arr)


class StoredTier(ABC):
    """A tier below L0 as ``TokenCache`` sees it. ``label`` names a hit here in ``hits_by_tier``."""

    label: str

    @abstractmethod
    async def read(self, keys: list[str], wait_s: float) -> TierRead:
        """Packed values of the keys present; never raises (a failing tier answers nothing)."""

    @abstractmethod
    def count(self, read: TierRead, key: str, outcome: Outcome) -> None:
        """Count one key's outcome of ``read`` in this client's view of the tier."""

    def where(self, read: TierRead, key: str) -> str:
        """Where ``key`` was read, for log lines."""
        node = read.node.get(key)
        return self.label if node is None else f"{self.label} {node}"

    @abstractmethod
    def put_calls(self, items: dict[str, bytes], owners: Owners, claimed: set[str]) -> list[Coroutine[Any, Any, Any]]:
        """The calls that store ``items`` (the write-through bounds and awaits them)."""

    @abstractmethod
    async def invalidate(self, collection: str, doc_id: str | None, timeout_s: float) -> int:
        """Drop a collection's (or one document's) entries; returns how many were removed."""

    @abstractmethod
    async def clear(self, timeout_s: float) -> None:
        """Drop every entry of this cache."""

    @abstractmethod
    def stats(self) -> dict: ...

    async def close(self) -> None:
        return None


async def read_through(
    tier: StoredTier, keys: list[str], wait_s: float, into: Resolved, defer_waiting: bool
) -> tuple[list[str], list[str], TierRead]:
    """Read ``keys`` from ``tier`` and decode what it found into ``into``.

    Returns the keys it missed (absent, corrupt, or its call failed: to be resolved below and written back
    to this tier), the keys deferred and the read itself. With ``defer_waiting``, keys another caller is
    computing are deferred: neither hits nor misses, the caller asks for them again later."""
    reply = await tier.read(keys, wait_s)
    missed: list[str] = []
    deferred: list[str] = []
    for key in keys:
        raw = reply.found.get(key)
        if raw is not None:
            if into.add_stored(key, raw, tier.label):
                tier.count(reply, key, Outcome.HIT)
                continue
            tier.count(reply, key, Outcome.CORRUPT)
            logger.warning("corrupt entry %s in %s; rebuilding", key, tier.where(reply, key))
        elif defer_waiting and key in reply.waiting:
            deferred.append(key)
            continue
        tier.count(reply, key, Outcome.MISS)
        missed.append(key)
    return missed, deferred, reply


class L1ShardTier(StoredTier):
    """The shard group: keys placed on a consistent-hash ring; per-shard breaker, counters and claims."""

    label = SHARD

    def __init__(
        self,
        shards: Sequence[ShardClient],
        config: TokenCacheConfig,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.shards = {s.shard_id: s for s in shards}
        if len(self.shards) != len(shards):
            raise ValueError("shard ids must be unique")
        self.ring = ConsistentHashRing(self.shards, vnodes=config.hash_ring_vnodes)
        self._lease_s = config.shard_claim_lease_s
        self._timeout_s = config.shard_timeout_s
        self._clock = clock
        self.counters = {sid: TierCounters() for sid in self.shards}  # this client's view of each shard
        self.claims = dict.fromkeys(self.shards, 0)  # keys this client claimed (and computed)
        self.claim_timeouts = dict.fromkeys(self.shards, 0)  # keys whose wait for a claim ran out
        # One breaker per shard: a dead shard costs one timeout per cooldown, not one per request.
        self.breakers = {
            sid: CircuitBreaker(config.shard_failure_threshold, config.shard_cooldown_s) for sid in self.shards
        }

    def __len__(self) -> int:
        return len(self.shards)

    def _by_shard(self, keys: Sequence[str]) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for key in keys:
            groups.setdefault(self.ring.lookup(key), []).append(key)
        return groups

    async def read(self, keys: list[str], wait_s: float) -> TierRead:
        """One concurrent ``get_or_claim`` per owning shard; a shard waits up to ``wait_s`` for keys other
        replicas are computing."""
        groups = self._by_shard(keys)
        replies = await asyncio.gather(*(self._get_or_claim(sid, ks, wait_s) for sid, ks in groups.items()))
        out = TierRead()
        for (sid, ks), reply in zip(groups.items(), replies):
            out.node.update(dict.fromkeys(ks, sid))
            out.found.update(reply.found)
            out.claimed.extend(reply.claimed)
            out.waiting.update(reply.waiting)
            self.claims[sid] += len(reply.claimed)
            if wait_s > 0:
                self.claim_timeouts[sid] += len(reply.waiting)
        return out

    async def _get_or_claim(self, shard_id: str, keys: list[str], wait_s: float) -> ClaimReply:
        breaker = self.breakers[shard_id]
        if not breaker.allow():
            return ClaimReply()  # skipped: counted as misses, rejected count in stats
        t0 = self._clock()
        call = self.shards[shard_id].get_or_claim(keys, self._lease_s, wait_s)
        try:
            # asyncio.timeout, not wait_for: no extra task per call on this hot path.
            async with asyncio.timeout(self._timeout_s):
                reply = await call
        except asyncio.CancelledError:
            breaker.record_failure()
            raise
        except Exception as err:  # noqa: BLE001 - a shard failure is a miss for that tier, never an error
            # A claim the shard granted before the call failed client-side simply lapses with its lease.
            breaker.record_failure()
            self.counters[shard_id].errors += 1
            logger.debug("shard %s get_or_claim failed: %s", shard_id, err)
            return ClaimReply()
        breaker.record_success()
        self.counters[shard_id].latency.add((self._clock() - t0) * 1000)
        return reply

    def count(self, read: TierRead, key: str, outcome: Outcome) -> None:
        counters = self.counters[read.node[key]]
        if outcome is Outcome.HIT:
            counters.hits += 1
        elif outcome is Outcome.MISS:
            counters.misses += 1
        else:
            counters.corruptions += 1

    def put_calls(self, items: dict[str, bytes], owners: Owners, claimed: set[str]) -> list[Coroutine[Any, Any, Any]]:
        calls = []
        for sid, keys in self._by_shard(list(items)).items():
            if self.breakers[sid].state is not BreakerState.CLOSED and claimed.isdisjoint(keys):
                # The shard is failing; its reads are skipped, so skip writes too. Not when we hold a
                # claim there: the shard answered us moments ago and other replicas wait for the put.
                continue
            calls.append(self.shards[sid].put_many({k: items[k] for k in keys}, {k: owners[k] for k in keys}))
        return calls

    async def invalidate(self, collection: str, doc_id: str | None, timeout_s: float) -> int:
        removed = await self._on_every_shard(
            f"invalidate {collection}/{doc_id}", lambda s: s.invalidate(collection, doc_id), timeout_s
        )
        return sum(int(n) for n in removed)

    async def clear(self, timeout_s: float) -> None:
        await self._on_every_shard("clear", lambda s: s.clear(), timeout_s)

    async def _on_every_shard(
        self, what: str, call: Callable[[ShardClient], Awaitable[Any]], timeout_s: float
    ) -> list[Any]:
        """Run ``call`` on every shard at once, each bounded by ``timeout_s``; a failure counts as an
        error of that shard, is logged and left out of the results."""
        replies = await asyncio.gather(
            *(asyncio.wait_for(call(s), timeout_s) for s in self.shards.values()), return_exceptions=True
        )
        results = []
        for sid, reply in zip(self.shards, replies):
            if isinstance(reply, BaseException):
                self.counters[sid].errors += 1
                logger.warning("shard %s %s failed: %s", sid, what, reply)
            else:
                results.append(reply)
        return results

    def stats(self) -> dict:
        return {
            sid: c.snapshot().to_dict()
            | {
                "breaker": self.breakers[sid].state.value,
                "skipped_calls": self.breakers[sid].rejected,
                "claimed": self.claims[sid],
                "claim_wait_timeouts": self.claim_timeouts[sid],
            }
            for sid, c in self.counters.items()
        }


class L2RedisTier(StoredTier):
    """Redis through ``RedisTier``; hits, misses and errors are counted there, corruptions here."""

    label = REDIS

    def __init__(self, redis: RedisTier) -> None:
        self.redis = redis
        self.corruptions = 0

    async def read(self, keys: list[str], wait_s: float) -> TierRead:
        return TierRead(found=await self.redis.get_many(keys))

    def count(self, read: TierRead, key: str, outcome: Outcome) -> None:
        if outcome is Outcome.CORRUPT:
            self.corruptions += 1

    def put_calls(self, items: dict[str, bytes], owners: Owners, claimed: set[str]) -> list[Coroutine[Any, Any, Any]]:
        return [self.redis.put_many(items, owners={k: owners[k] for k in items})]

    async def invalidate(self, collection: str, doc_id: str | None, timeout_s: float) -> int:
        return await self.redis.invalidate(collection, doc_id)  # bounded per call inside RedisTier

    async def clear(self, timeout_s: float) -> None:
        await self.redis.invalidate_all()

    def stats(self) -> dict:
        return self.redis.stats_dict() | {"corruptions": self.corruptions}

    async def close(self) -> None:
        await self.redis.close()
