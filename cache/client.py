"""``TokenCache``: the tiered chunk -> token IDs cache used by every agent replica.

It wires the parts and holds the operations over all tiers:

- the lookup path (``lookup.TieredLookup``): L0, then the stored tiers, then the tokenizer, single-flight;
- the stored tiers below L0 (``tiers``): L1, the shards on the hash ring, and L2, Redis;
- the write-through (``write_through.WriteThrough``): background, bounded write-back to those tiers;
- here: warm-up, invalidation, stats, flush and close.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence

from cache.config import TokenCacheConfig
from cache.keys import ChunkRef
from cache.lookup import TieredLookup, TokenLookup
from cache.redis_tier import RedisTier
from cache.shard import CacheShard, ShardClient
from cache.stats import TokenCacheStats, hit_rate
from cache.tiers import L0, REDIS, L1ShardTier, L2RedisTier, StoredTier
from cache.write_through import WriteThrough
from tokenization import TokenizerBackend

__all__ = ["TokenCache"]

_MB = 1024 * 1024


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
        # L0 values are array.array (see codec.compact_ids), charged at their real size.
        self._l0 = CacheShard(int(config.max_cache_size_mb * _MB), ttl_s=config.l0_ttl_s, value_size=sys.getsizeof)
        self._l1 = L1ShardTier(shards, config, clock)
        self._l2 = L2RedisTier(redis) if redis is not None else None
        tiers: list[StoredTier] = [self._l1] if len(self._l1) else []  # read in this order
        if self._l2 is not None:
            tiers.append(self._l2)
        self._writer = WriteThrough(config.max_pending_writes, config.write_timeout_s)
        self._lookup = TieredLookup(
            tokenizer, self._l0, tiers, self._writer, config.claim_wait_s, config.tokenize_batch_size, clock
        )

    async def get_tokens(self, chunks: Sequence[ChunkRef]) -> TokenLookup:
        """Token IDs of each chunk, in order, from the fastest tier that has them (see ``lookup``)."""
        return await self._lookup.get_tokens(chunks)

    async def flush(self) -> None:
        """Wait for pending write-throughs (each bounded by ``write_timeout_s``); for tests and shutdown."""
        await self._writer.flush()

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
        timeout_s = self.config.write_timeout_s
        return {
            L0: self._l0.invalidate(collection, doc_id),
            "shards": await self._l1.invalidate(collection, doc_id, timeout_s),
            REDIS: await self._l2.invalidate(collection, doc_id, timeout_s) if self._l2 is not None else 0,
        }

    async def invalidate_all(self) -> None:
        """Empty every tier (L0, every shard, this cache's keys in Redis)."""
        await self.flush()
        self._l0.clear()
        await self._l1.clear(self.config.write_timeout_s)
        if self._l2 is not None:
            await self._l2.clear(self.config.write_timeout_s)

    # ------------------------------------------------------------------ stats

    def stats(self) -> dict:
        """Snapshot per tier (this client's view) and overall; plain dicts, JSON-ready. Every ``hit_rate``
        is a fraction 0..1."""
        lru = self._l0.lru
        lookup = self._lookup
        return {
            "agent": self.agent,
            "tokenizer_fingerprint": self.fingerprint[:16],
            "overall": self.token_cache_stats().to_dict() | lookup.lookup_stats(),
            L0: lookup.l0_counters.snapshot(
                entries=lru.entries, size_bytes=lru.size_bytes, evictions=lru.evictions
            ).to_dict(),
            "shards": self._l1.stats(),
            REDIS: self._l2.stats() if self._l2 is not None else None,
            "tokenizer": lookup.tokenizer_stats(),
            "writes": self._writer.stats(),
        }

    def token_cache_stats(self) -> TokenCacheStats:
        """The original plan's summary; ``hit_rate`` a fraction 0..1, sizes of this replica's L0."""
        lookup = self._lookup
        return TokenCacheStats(
            cache_hits=lookup.hits,
            cache_misses=lookup.misses,
            hit_rate=hit_rate(lookup.hits, lookup.misses),
            total_tokens_cached=sum(len(ids) for ids in self._l0.lru.values()),
            cache_size_mb=self._l0.lru.size_bytes / _MB,
            avg_hit_latency_ms=lookup.hit_latency.mean,
            avg_miss_latency_ms=lookup.miss_latency.mean,
        )

    async def close(self) -> None:
        await self.flush()
        if self._l2 is not None:
            await self._l2.close()
