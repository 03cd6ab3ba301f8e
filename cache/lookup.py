"""The lookup path: chunk keys -> token IDs through L0, the stored tiers and the tokenizer, single-flight.

Lookup order for a request's chunks (all keys of a tier in one batched call):

    L0   in-process CacheShard of compact arrays (per agent replica, ``max_cache_size_mb``)
    L1   the shard that owns the key on the consistent-hash ring (one call per shard touched, concurrent);
         the call also claims the keys it misses (``get_or_claim``)
    L2   Redis, one MGET for everything still missing
    miss tokenize all remaining texts in batches in a worker thread

Below L0 every key goes through single-flight, so concurrent requests missing the same chunk share one
lookup and one tokenization: per process (``SingleFlight``) and per shard (a missed key is claimed on its
shard for ``shard_claim_lease_s``; other replicas' lookups of it wait there, at most ``shard_claim_wait_s``,
until the owner's write-through puts it). Resolved keys go into L0 before single-flight is released and
to the tiers below by the write-through. A failing or slow tier counts as errors/misses for that tier and
the lookup falls through; a value failing its checksum is counted as a corruption, treated as a miss and
rewritten (``tiers.read_through``). Only a failure of the tokenizer itself reaches the caller.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cache.keys import ChunkRef, hash_content, storage_key
from cache.shard import CacheShard
from cache.singleflight import SingleFlight
from cache.stats import LatencyReservoir, TierCounters, hit_rate, merged_percentile
from cache.tiers import L0, TOKENIZED, Owners, Resolved, StoredTier, read_through
from cache.write_through import WriteThrough
from tokenization import TokenizerBackend

__all__ = ["TokenLookup", "TieredLookup"]

logger = logging.getLogger(__name__)


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
        return hit_rate(self.hits, self.misses)


class TieredLookup:
    """``get_tokens`` over L0, ``tiers`` (in order) and the tokenizer, with its counters."""

    def __init__(
        self,
        tokenizer: TokenizerBackend,
        l0: CacheShard,
        tiers: Sequence[StoredTier],
        writer: WriteThrough,
        claim_wait_s: float,
        tokenize_batch_size: int,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.tokenizer = tokenizer
        self.fingerprint = tokenizer.fingerprint
        self.l0 = l0
        self.tiers = list(tiers)
        self._writer = writer
        self._claim_wait_s = claim_wait_s
        self._batch_size = tokenize_batch_size
        self._clock = clock
        self.flight: SingleFlight[tuple[list[int], str]] = SingleFlight()
        self._fills: set[asyncio.Task] = set()
        self.l0_counters = TierCounters()
        self.tokenize = TierCounters()
        self.tokens_tokenized = 0
        self.hits = 0
        self.misses = 0
        self.hit_latency = LatencyReservoir()
        self.miss_latency = LatencyReservoir()

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
            ids = self.l0.get(key)
            if ids is not None:
                found[key] = (ids.tolist(), L0)
        self.l0_counters.latency.add((self._clock() - l0_t0) * 1000)

        missing = [k for k in dict.fromkeys(keys) if k not in found]
        self.l0_counters.hits += len(found)
        self.l0_counters.misses += len(missing)
        if missing:
            owned, waiting = self.flight.claim(missing)
            futures = dict(waiting)
            for key in owned:
                futures[key] = self.flight.future(key)  # type: ignore[assignment]
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
        self.hits += hits
        self.misses += misses
        (self.miss_latency if misses else self.hit_latency).add(latency_ms)
        return TokenLookup(token_ids, hits, misses, by_tier, latency_ms)

    async def _fill(self, owned: list[str], texts: dict[str, str], owners: Owners) -> None:
        """Resolve owned keys below L0; release single-flight with the outcome, value or error."""
        try:
            # Round 1 asks the tiers without waiting and computes what this replica claimed (or what no
            # shard answered for), writing it back before round 2 waits for keys other replicas are
            # computing. So two replicas that each claimed part of the other's keys never wait on each other.
            later = await self._fill_round(owned, texts, owners, wait_s=0.0, defer_waiting=True)
            if later:
                await self._fill_round(later, texts, owners, wait_s=self._claim_wait_s, defer_waiting=False)
        except BaseException as err:
            for key in owned:
                self.flight.fail(key, err)
            raise

    async def _fill_round(
        self, keys: list[str], texts: dict[str, str], owners: Owners, wait_s: float, defer_waiting: bool
    ) -> list[str]:
        """Resolve ``keys`` through the tiers (the shards claiming), then the tokenizer; write back; release
        single-flight.

        With ``defer_waiting`` keys claimed by another replica are left out and returned, to be asked for
        again with a wait; otherwise a shard waits up to ``wait_s`` and whatever is still claimed elsewhere
        is computed here too. Returns the keys left out."""
        resolved = Resolved()
        later: list[str] = []  # claimed by another replica: asked for again, with a wait
        claimed: set[str] = set()  # claims this replica now holds: released by its write-back, or lapse
        need: dict[StoredTier, list[str]] = {}  # keys each tier missed: written back to it
        remaining = list(keys)
        for tier in self.tiers:
            if not remaining:
                break
            missed, deferred, read = await read_through(tier, remaining, wait_s, resolved, defer_waiting)
            claimed.update(read.claimed)
            later.extend(deferred)
            need[tier] = missed
            remaining = missed

        if remaining:
            write_back = set().union(*need.values())
            await self._tokenize_into(resolved, remaining, texts, write_back)

        # Write back: L0 now (so later requests hit before single-flight is released), lower tiers by a
        # background task started right away (it also releases our claims and wakes waiting replicas).
        self.l0.put_many(resolved.compact, owners)
        fills = {tier: {k: resolved.packed[k] for k in ks} for tier, ks in need.items() if ks}
        if fills:
            self._writer.schedule(fills, {k: owners[k] for k in resolved.ids}, claimed)
        for key, value in resolved.ids.items():
            self.flight.resolve(key, value)
        return later

    async def _tokenize_into(
        self, resolved: Resolved, keys: list[str], texts: dict[str, str], write_back: set[str]
    ) -> None:
        """Tokenize ``keys`` in batches, off the event loop; pack those in ``write_back``."""
        for i in range(0, len(keys), self._batch_size):
            part = keys[i : i + self._batch_size]
            t0 = self._clock()
            ids_list = await asyncio.to_thread(self.tokenizer.encode_batch, [texts[k] for k in part])
            self.tokenize.latency.add((self._clock() - t0) * 1000)
            self.tokenize.misses += len(part)
            for key, ids in zip(part, ids_list):
                resolved.add_tokenized(key, ids, pack=key in write_back)
                self.tokens_tokenized += len(ids)

    def lookup_stats(self) -> dict:
        """Lookups made and their latency percentiles, hits and misses together."""
        return {
            "lookups": self.hit_latency.count + self.miss_latency.count,
            "lookup_p50_ms": merged_percentile(self.hit_latency, self.miss_latency, 50),
            "lookup_p99_ms": merged_percentile(self.hit_latency, self.miss_latency, 99),
        }

    def tokenizer_stats(self) -> dict:
        tok = self.tokenize.snapshot()
        return {
            "texts": tok.misses,
            "tokens": self.tokens_tokenized,
            "batch_p50_ms": tok.latency_p50_ms,
            "batch_p99_ms": tok.latency_p99_ms,
        }


def _consume_exception(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.debug("token fill failed: %s", task.exception())
