"""``TokenCache``: the tiered chunk -> token IDs lookup used by every agent replica.

Lookup order for a request's chunks (all keys of a tier in one batched call):

    L0   in-process CacheShard of compact arrays (per agent replica, ``max_cache_size_mb``)
    L1   the shard that owns the key on the consistent-hash ring (one call per shard touched, concurrent);
         the call also claims the keys it misses (``get_or_claim``)
    L2   Redis, one MGET for everything still missing
    miss tokenize all remaining texts in ONE batch in a worker thread

Then results are written back: into L0 before answering, and to the shards and Redis by a background
task (bounded: at most ``max_pending_writes`` tasks, each under a timeout), so the answer never waits for
a write. Below L0 every key goes through single-flight, so concurrent requests missing the same chunk
share one lookup and one tokenization: per process (``SingleFlight``) and per shard (a missed key is
claimed on its shard for ``shard_claim_lease_s``; other replicas' lookups of it wait there, at most
``shard_claim_wait_s``, until the owner's write-through puts it). A failing or slow tier counts as
errors/misses for that tier and the lookup falls through; a value failing its checksum (shard, Redis)
is counted as a corruption, treated as a miss and rewritten. Only a failure of the tokenizer itself
reaches the caller.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cache.breaker import BreakerState, CircuitBreaker
from cache.codec import compact_ids, decode_compact, encode_tokens
from cache.exceptions import CorruptEntryError
from cache.keys import ChunkRef, hash_content, storage_key
from cache.redis_tier import RedisTier
from cache.shard import CacheShard, ClaimReply, ShardClient
from cache.singleflight import SingleFlight
from cache.stats import LatencyReservoir, TierCounters, TokenCacheStats
from cache.tokenizers import TokenizerBackend
from routing.hashring import ConsistentHashRing

__all__ = ["TokenCacheConfig", "TokenCache", "TokenLookup", "redis_tier_from_config"]

logger = logging.getLogger(__name__)

_MB = 1024 * 1024


class TokenCacheConfig(BaseModel):
    """Settings of one agent's token cache client (the shard group and Redis are shared)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_cache_size_mb: float = Field(
        100.0, gt=0, description="Byte budget of this agent replica's in-process L0 tier, in MiB."
    )
    l0_ttl_s: float | None = Field(
        3600.0, gt=0, description="Seconds an L0 entry lives; None keeps entries until evicted."
    )
    redis_ttl_s: float | None = Field(
        86_400.0, gt=0, description="Seconds a Redis (L2) entry lives; None means no expiry."
    )
    redis_url: str | None = Field(
        None, description="Redis URL for the L2 tier, e.g. redis://127.0.0.1:6379/0; None disables Redis."
    )
    redis_timeout_s: float = Field(0.05, gt=0, description="Timeout of one Redis round trip, in seconds.")
    shard_timeout_s: float = Field(0.25, gt=0, description="Timeout of one call to a cache shard, in seconds.")
    write_timeout_s: float = Field(
        1.0, gt=0, description="Timeout of one background write-through to the shards and Redis, in seconds."
    )
    max_pending_writes: int = Field(
        64, ge=1, description="Background write-through tasks allowed at once; beyond it writes are dropped."
    )
    tokenize_batch_size: int = Field(
        256, ge=1, description="Most texts passed to the tokenizer in one batch call."
    )
    shard_failure_threshold: int = Field(
        2, ge=1, description="Consecutive failures of one shard that open its circuit breaker (calls skipped)."
    )
    shard_cooldown_s: float = Field(
        1.0, gt=0, description="Seconds a shard's open breaker waits before one probe call is let through."
    )
    hash_ring_vnodes: int = Field(128, ge=1, description="Virtual nodes per shard on the consistent-hash ring.")
    shard_claim_lease_s: float = Field(
        0.5,
        gt=0,
        description="Seconds a key this replica claimed on its shard (it is computing it) makes other replicas "
        "wait for it; a claim whose owner dies or never writes back lapses after this.",
    )
    shard_claim_wait_s: float | None = Field(
        None,
        ge=0,
        description="Longest a shard lookup waits for keys another replica is computing before computing them "
        "itself; must be below shard_timeout_s. None: min(0.1, shard_timeout_s / 2).",
    )

    @model_validator(mode="after")
    def _claim_wait_under_shard_timeout(self) -> TokenCacheConfig:
        if self.shard_claim_wait_s is not None and self.shard_claim_wait_s >= self.shard_timeout_s:
            raise ValueError("shard_claim_wait_s must be below shard_timeout_s (the wait happens inside a shard call)")
        return self

    @property
    def claim_wait_s(self) -> float:
        """The shard claim wait in effect (see ``shard_claim_wait_s``)."""
        if self.shard_claim_wait_s is not None:
            return self.shard_claim_wait_s
        return min(0.1, self.shard_timeout_s / 2)


def redis_tier_from_config(config: TokenCacheConfig) -> RedisTier | None:
    """The L2 tier described by ``config``, or None when ``redis_url`` is not set."""
    if config.redis_url is None:
        return None
    return RedisTier.from_url(config.redis_url, ttl_s=config.redis_ttl_s, timeout_s=config.redis_timeout_s)


@dataclass(frozen=True, slots=True)
class TokenLookup:
    """Result of ``get_tokens``: ``token_ids[i]`` belongs to ``chunks[i]``."""

    token_ids: list[list[int]]
    hits: int
    misses: int
    hits_by_tier: dict[str, int] = field(default_factory=dict)
    latency_ms: float = 0.0

    @property
    def hit_rate(self) -> float:
        """Fraction 0..1 of this request's chunks served from a cache tier."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


# Tier labels used in hits_by_tier and stats.
L0, SHARD, REDIS, TOKENIZED = "l0", "shard", "redis", "tokenized"


class TokenCache:
    """Tiered, single-flight chunk tokenization cache. One instance per agent replica (event loop)."""

    def __init__(
        self,
        tokenizer: TokenizerBackend,
        shards: Sequence[ShardClient],
        redis: RedisTier | None,
        config: TokenCacheConfig,
        agent: str = "",
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.tokenizer = tokenizer
        self.fingerprint = tokenizer.fingerprint
        self.config = config
        self.agent = agent
        self._clock = clock
        self._redis = redis
        self._shards = {s.shard_id: s for s in shards}
        if len(self._shards) != len(shards):
            raise ValueError("shard ids must be unique")
        self._ring = ConsistentHashRing(self._shards, vnodes=config.hash_ring_vnodes)
        # L0 values are array.array (see codec.compact_ids), charged at their real size.
        self._l0 = CacheShard(int(config.max_cache_size_mb * _MB), ttl_s=config.l0_ttl_s, value_size=sys.getsizeof)
        self._flight: SingleFlight[tuple[list[int], str]] = SingleFlight()
        self._writes: set[asyncio.Task] = set()
        self._fills: set[asyncio.Task] = set()
        # Counters (client's view of each tier).
        self._l0_counters = TierCounters()
        self._shard_counters = {sid: TierCounters() for sid in self._shards}
        self._shard_claims = dict.fromkeys(self._shards, 0)  # keys this client claimed (and computed)
        self._shard_claim_timeouts = dict.fromkeys(self._shards, 0)  # keys whose wait for a claim ran out
        # One breaker per shard: a dead shard costs one timeout per cooldown, not one per request.
        self._shard_breakers = {
            sid: CircuitBreaker(config.shard_failure_threshold, config.shard_cooldown_s) for sid in self._shards
        }
        self._redis_corruptions = 0
        self._tokenize = TierCounters()
        self._tokens_tokenized = 0
        self._hits = 0
        self._misses = 0
        self._hit_latency = LatencyReservoir()
        self._miss_latency = LatencyReservoir()
        self._writes_dropped = 0
        self._writes_failed = 0

    # ------------------------------------------------------------------ lookup

    async def get_tokens(self, chunks: Sequence[ChunkRef]) -> TokenLookup:
        """Token IDs of each chunk, in order, from the fastest tier that has them."""
        t0 = self._clock()
        fp = self.fingerprint
        keys = [storage_key(c.collection, fp, hash_content(c.text)) for c in chunks]
        owners = {k: (c.collection, c.doc_id) for k, c in zip(keys, chunks)}
        texts = {k: c.text for k, c in zip(keys, chunks)}
        found: dict[str, tuple[list[int], str]] = {}

        # L0: synchronous, no await until the claim below, so "miss in L0 then claim" is atomic. L0 holds
        # compact arrays in this process's memory (no wire, no checksum); a hit is one C loop to a fresh list.
        l0_t0 = self._clock()
        for key in dict.fromkeys(keys):
            ids = self._l0.get(key)
            if ids is not None:
                found[key] = (ids.tolist(), L0)
        self._l0_counters.latency.add((self._clock() - l0_t0) * 1000)

        missing = [k for k in dict.fromkeys(keys) if k not in found]
        self._l0_counters.hits += len(found)
        self._l0_counters.misses += len(missing)
        if missing:
            owned, waiting = self._flight.claim(missing)
            futures = dict(waiting)
            for key in owned:
                futures[key] = self._flight.future(key)  # type: ignore[assignment]
            if owned:
                # The fill runs as its own task so that cancelling this request does not cancel the
                # work other requests are waiting on.
                task = asyncio.create_task(self._fill(owned, texts, owners))
                self._fills.add(task)  # strong reference: the loop only keeps weak ones
                task.add_done_callback(self._fills.discard)
                task.add_done_callback(_consume_exception)
            results = await asyncio.gather(*(asyncio.shield(futures[k]) for k in missing))
            found.update(zip(missing, results))

        by_tier: dict[str, int] = {}
        token_ids: list[list[int]] = []
        handed_out: set[str] = set()
        shared = set(missing)  # lists resolved through single-flight are shared by every waiter
        for key in keys:
            ids, tier = found[key]
            # Callers own their lists (prompt assembly may extend them): copy any list that another
            # caller or another position of this request also holds. An L0 hit is a fresh list anyway.
            token_ids.append(list(ids) if key in shared or key in handed_out else ids)
            handed_out.add(key)
            by_tier[tier] = by_tier.get(tier, 0) + 1
        misses = by_tier.pop(TOKENIZED, 0)
        hits = len(keys) - misses
        latency_ms = (self._clock() - t0) * 1000
        self._hits += hits
        self._misses += misses
        (self._miss_latency if misses else self._hit_latency).add(latency_ms)
        return TokenLookup(token_ids, hits, misses, by_tier, latency_ms)

    async def _fill(self, owned: list[str], texts: dict[str, str], owners: dict[str, tuple[str, str]]) -> None:
        """Resolve owned keys through L1, L2 and the tokenizer; write back; release single-flight."""
        try:
            await self._fill_inner(owned, texts, owners)
        except BaseException as err:
            for key in owned:
                self._flight.fail(key, err)
            raise

    async def _fill_inner(self, owned: list[str], texts: dict[str, str], owners: dict[str, tuple[str, str]]) -> None:
        # Round 1 asks the shards without waiting and computes what this replica claimed (or what no shard
        # answered for), writing it back before round 2 waits for keys other replicas are computing. So two
        # replicas that each claimed part of the other's keys never wait on each other.
        waiting = await self._fill_round(owned, texts, owners, wait_s=0.0)
        if waiting:
            await self._fill_round(waiting, texts, owners, wait_s=self.config.claim_wait_s)

    async def _fill_round(
        self, keys: list[str], texts: dict[str, str], owners: dict[str, tuple[str, str]], wait_s: float
    ) -> list[str]:
        """Resolve ``keys`` through L1 (claiming), L2 and the tokenizer; write back; release single-flight.

        With ``wait_s == 0`` keys claimed by another replica are left out and returned, to be asked for
        again with a wait; otherwise the shard waits up to ``wait_s`` and whatever is still claimed
        elsewhere is computed here too. Returns the keys left out."""
        result: dict[str, tuple[list[int], str]] = {}
        raw_ok: dict[str, bytes] = {}  # packed values known good, reused for write-back
        compact: dict[str, array] = {}  # the L0 form of each resolved key
        later: list[str] = []  # claimed by another replica: asked for again, with a wait

        # L1: one concurrent call per owning shard. Missing keys are claimed on their shard (single-flight
        # across processes); the claim is released by our write-back, or lapses.
        remaining = list(keys)
        claimed: set[str] = set()
        if self._shards and remaining:
            groups: dict[str, list[str]] = {}
            for key in remaining:
                groups.setdefault(self._ring.lookup(key), []).append(key)
            replies = await asyncio.gather(*(self._shard_get(sid, ks, wait_s) for sid, ks in groups.items()))
            for (sid, ks), reply in zip(groups.items(), replies):
                counters = self._shard_counters[sid]
                claimed.update(reply.claimed)
                self._shard_claims[sid] += len(reply.claimed)
                if wait_s > 0:
                    self._shard_claim_timeouts[sid] += len(reply.waiting)
                for key in ks:
                    raw = reply.found.get(key)
                    if raw is not None:
                        try:
                            compact[key] = decode_compact(raw)
                            result[key] = (compact[key].tolist(), SHARD)
                            raw_ok[key] = raw
                            counters.hits += 1
                            continue
                        except CorruptEntryError:
                            counters.corruptions += 1
                            logger.warning("corrupt entry %s on shard %s; rebuilding", key, sid)
                    elif wait_s == 0 and key in reply.waiting:
                        later.append(key)
                        continue
                    counters.misses += 1
            skip = set(later)
            remaining = [k for k in remaining if k not in result and k not in skip]
            shard_need = set(remaining)
        else:
            shard_need = set()

        # L2: one MGET.
        redis_need: set[str] = set()
        if self._redis is not None and remaining:
            reply = await self._redis.get_many(remaining)
            for key in remaining:
                raw = reply.get(key)
                if raw is not None:
                    try:
                        compact[key] = decode_compact(raw)
                        result[key] = (compact[key].tolist(), REDIS)
                        raw_ok[key] = raw
                        continue
                    except CorruptEntryError:
                        self._redis_corruptions += 1
                        logger.warning("corrupt entry %s in redis; rebuilding", key)
                redis_need.add(key)
            remaining = [k for k in remaining if k not in result]

        # Miss: tokenize in batches, off the event loop.
        if remaining:
            batch_size = self.config.tokenize_batch_size
            for i in range(0, len(remaining), batch_size):
                part = remaining[i : i + batch_size]
                t0 = self._clock()
                ids_list = await asyncio.to_thread(self.tokenizer.encode_batch, [texts[k] for k in part])
                self._tokenize.latency.add((self._clock() - t0) * 1000)
                self._tokenize.misses += len(part)
                for key, ids in zip(part, ids_list):
                    result[key] = (list(ids), TOKENIZED)
                    compact[key] = compact_ids(ids)
                    if key in shard_need or key in redis_need:  # packed only if it is written through
                        raw_ok[key] = encode_tokens(compact[key])  # from the array: no second pass over ints
                    self._tokens_tokenized += len(ids)

        # Write back: L0 now (so later requests hit before single-flight is released), lower tiers by a
        # background task started right away (it also releases our claims and wakes waiting replicas).
        self._l0.put_many(compact, owners)
        shard_fill = {k: raw_ok[k] for k in shard_need}
        redis_fill = {k: raw_ok[k] for k in redis_need}
        if shard_fill or redis_fill:
            self._schedule_write(shard_fill, redis_fill, {k: owners[k] for k in result}, claimed)
        for key, value in result.items():
            self._flight.resolve(key, value)
        return later

    async def _shard_get(self, shard_id: str, keys: list[str], wait_s: float) -> ClaimReply:
        counters = self._shard_counters[shard_id]
        breaker = self._shard_breakers[shard_id]
        if not breaker.allow():
            return ClaimReply()  # skipped: counted as misses by the caller, rejected count in stats
        t0 = self._clock()
        call = self._shards[shard_id].get_or_claim(keys, self.config.shard_claim_lease_s, wait_s)
        try:
            # asyncio.timeout, not wait_for: no extra task per call on this hot path.
            async with asyncio.timeout(self.config.shard_timeout_s):
                reply = await call
        except asyncio.CancelledError:
            breaker.record_failure()
            raise
        except Exception as err:  # noqa: BLE001 - a shard failure is a miss for that tier, never an error
            # A claim the shard granted before the call failed client-side simply lapses with its lease.
            breaker.record_failure()
            counters.errors += 1
            logger.debug("shard %s get_or_claim failed: %s", shard_id, err)
            return ClaimReply()
        breaker.record_success()
        counters.latency.add((self._clock() - t0) * 1000)
        return reply

    # ------------------------------------------------------------------ write-through

    def _schedule_write(
        self,
        shard_items: dict[str, bytes],
        redis_items: dict[str, bytes],
        owners: dict[str, tuple[str, str]],
        claimed: set[str],
    ) -> None:
        if len(self._writes) >= self.config.max_pending_writes:
            # Backpressure: dropping a write only costs a future miss; queuing unboundedly costs memory.
            # Claims among the dropped keys lapse with their lease (waiters then compute for themselves).
            self._writes_dropped += 1
            return
        task = asyncio.create_task(self._write(shard_items, redis_items, owners, claimed))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(
        self,
        shard_items: dict[str, bytes],
        redis_items: dict[str, bytes],
        owners: dict[str, tuple[str, str]],
        claimed: set[str],
    ) -> None:
        calls = []
        if shard_items:
            groups: dict[str, dict[str, bytes]] = {}
            for key, raw in shard_items.items():
                groups.setdefault(self._ring.lookup(key), {})[key] = raw
            for sid, items in groups.items():
                if self._shard_breakers[sid].state is not BreakerState.CLOSED and claimed.isdisjoint(items):
                    # The shard is failing; its reads are skipped, so skip writes too. Not when we hold a
                    # claim there: the shard answered us moments ago and other replicas wait for the put.
                    continue
                calls.append(self._shards[sid].put_many(items, {k: owners[k] for k in items}))
        if redis_items and self._redis is not None:
            calls.append(self._redis.put_many(redis_items, owners={k: owners[k] for k in redis_items}))
        outcomes = await asyncio.gather(
            *(asyncio.wait_for(c, self.config.write_timeout_s) for c in calls), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                self._writes_failed += 1
                logger.debug("write-through failed: %s", outcome)

    async def flush(self) -> None:
        """Wait for pending write-throughs (each bounded by ``write_timeout_s``); for tests and shutdown."""
        while self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)

    # ------------------------------------------------------------------ warmup / invalidation

    async def warmup(
        self,
        chunks: Sequence[ChunkRef],
        batch_size: int = 64,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Make every chunk's IDs present in all tiers; returns how many had to be tokenized."""
        total = len(chunks)
        tokenized = 0
        for i in range(0, total, batch_size):
            lookup = await self.get_tokens(chunks[i : i + batch_size])
            tokenized += lookup.misses
            await self.flush()  # keeps warm-up from outrunning the write-through bound
            if progress is not None:
                progress(min(i + batch_size, total), total)
        return tokenized

    async def invalidate(self, collection: str, doc_id: str | None = None) -> dict[str, int]:
        """Drop a collection (or one document's chunks) from L0, every shard and Redis.

        Returns entries removed per tier. Other agent replicas' L0 tiers are not reached; their entries
        are content-addressed (never wrong, only unused) and age out by TTL and LRU.
        """
        await self.flush()  # a write landing after the invalidation would resurrect entries
        removed = {L0: self._l0.invalidate(collection, doc_id), "shards": 0, REDIS: 0}
        replies = await asyncio.gather(
            *(
                asyncio.wait_for(s.invalidate(collection, doc_id), self.config.write_timeout_s)
                for s in self._shards.values()
            ),
            return_exceptions=True,
        )
        for sid, reply in zip(self._shards, replies):
            if isinstance(reply, BaseException):
                self._shard_counters[sid].errors += 1
                logger.warning("shard %s invalidate %s/%s failed: %s", sid, collection, doc_id, reply)
            else:
                removed["shards"] += int(reply)
        if self._redis is not None:
            removed[REDIS] = await self._redis.invalidate(collection, doc_id)
        return removed

    async def invalidate_all(self) -> None:
        """Empty every tier (L0, every shard, this cache's keys in Redis)."""
        await self.flush()
        self._l0.clear()
        replies = await asyncio.gather(
            *(asyncio.wait_for(s.clear(), self.config.write_timeout_s) for s in self._shards.values()),
            return_exceptions=True,
        )
        for sid, reply in zip(self._shards, replies):
            if isinstance(reply, BaseException):
                self._shard_counters[sid].errors += 1
                logger.warning("shard %s clear failed: %s", sid, reply)
        if self._redis is not None:
            await self._redis.invalidate_all()

    # ------------------------------------------------------------------ stats

    def stats(self) -> dict:
        """Snapshot per tier (this client's view) and overall; plain dicts, JSON-ready."""
        lru = self._l0.lru
        l0 = self._l0_counters.snapshot(entries=lru.entries, size_bytes=lru.size_bytes, evictions=lru.evictions)
        redis = None
        if self._redis is not None:
            redis = self._redis.stats_dict()
            redis["corruptions"] = self._redis_corruptions
        tok = self._tokenize.snapshot()
        return {
            "agent": self.agent,
            "tokenizer_fingerprint": self.fingerprint[:16],
            "overall": self.token_cache_stats().to_dict()
            | {
                "lookups": self._hit_latency.count + self._miss_latency.count,
                "lookup_p50_ms": _merged_percentile(self._hit_latency, self._miss_latency, 50),
                "lookup_p99_ms": _merged_percentile(self._hit_latency, self._miss_latency, 99),
            },
            L0: l0.to_dict(),
            "shards": {
                sid: c.snapshot().to_dict()
                | {
                    "breaker": self._shard_breakers[sid].state.value,
                    "skipped_calls": self._shard_breakers[sid].rejected,
                    "claimed": self._shard_claims[sid],
                    "claim_wait_timeouts": self._shard_claim_timeouts[sid],
                }
                for sid, c in self._shard_counters.items()
            },
            REDIS: redis,
            "tokenizer": {
                "texts": tok.misses,
                "tokens": self._tokens_tokenized,
                "batch_p50_ms": tok.latency_p50_ms,
                "batch_p99_ms": tok.latency_p99_ms,
            },
            "writes": {
                "pending": len(self._writes),
                "dropped": self._writes_dropped,
                "failed": self._writes_failed,
            },
        }

    def token_cache_stats(self) -> TokenCacheStats:
        """The original plan's summary; ``hit_rate`` in percent, sizes of this replica's L0."""
        looked = self._hits + self._misses
        total_tokens = sum(len(ids) for ids in self._l0.lru.values())
        return TokenCacheStats(
            cache_hits=self._hits,
            cache_misses=self._misses,
            hit_rate=100.0 * self._hits / looked if looked else 0.0,
            total_tokens_cached=total_tokens,
            cache_size_mb=self._l0.lru.size_bytes / _MB,
            avg_hit_latency_ms=self._hit_latency.mean,
            avg_miss_latency_ms=self._miss_latency.mean,
        )

    async def close(self) -> None:
        await self.flush()
        if self._redis is not None:
            await self._redis.close()


def _merged_percentile(a: LatencyReservoir, b: LatencyReservoir, q: float) -> float:
    merged = LatencyReservoir(capacity=a.capacity + b.capacity)
    for res in (a, b):
        for ms in res.samples():
            merged.add(ms)
    return merged.percentile(q)


def _consume_exception(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.debug("token fill failed: %s", task.exception())
