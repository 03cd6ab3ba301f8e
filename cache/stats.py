"""Stats as small values: mutable counters inside a tier, frozen snapshots outward.

Every ``hit_rate`` here (and in every stats dict of the cache) is a FRACTION 0..1: hits / (hits + misses),
0.0 before the first lookup.

Latency percentiles come from a bounded reservoir (Algorithm R with an injectable RNG) so memory is
constant however long a replica runs, and p50/p99 stay representative of the whole run.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

__all__ = ["LatencyReservoir", "TierCounters", "TierStats", "TokenCacheStats", "hit_rate", "merged_percentile"]


def hit_rate(hits: int, misses: int) -> float:
    """Fraction 0..1 of lookups that hit; 0.0 when there were none."""
    looked = hits + misses
    return hits / looked if looked else 0.0


class LatencyReservoir:
    """Uniform sample of at most ``capacity`` latencies (ms), plus an exact running sum and count."""

    def __init__(self, capacity: int = 1024, rng: random.Random | None = None) -> None:
        self.capacity = capacity
        self._rng = rng or random.Random(0)
        self._samples: list[float] = []
        self.count = 0
        self.total_ms = 0.0

    def add(self, ms: float) -> None:
        self.count += 1
        self.total_ms += ms
        if len(self._samples) < self.capacity:
            self._samples.append(ms)
        else:
            j = self._rng.randrange(self.count)
            if j < self.capacity:
                self._samples[j] = ms

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile, ``q`` in 0..100; 0.0 when empty."""
        if not self._samples:
            return 0.0
        ordered = sorted(self._samples)
        idx = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
        return ordered[idx]

    def samples(self) -> list[float]:
        return list(self._samples)

    @property
    def mean(self) -> float:
        return self.total_ms / self.count if self.count else 0.0

    def reset(self) -> None:
        self._samples.clear()
        self.count = 0
        self.total_ms = 0.0


def merged_percentile(a: LatencyReservoir, b: LatencyReservoir, q: float) -> float:
    """Percentile ``q`` of the two reservoirs' samples taken together."""
    merged = LatencyReservoir(capacity=a.capacity + b.capacity)
    for res in (a, b):
        for ms in res.samples():
            merged.add(ms)
    return merged.percentile(q)


@dataclass(frozen=True, slots=True)
class TierStats:
    """Snapshot of one tier (l0, a shard, redis, or the tokenizer)."""

    hits: int
    misses: int
    errors: int
    corruptions: int
    evictions: int
    entries: int
    size_bytes: int
    hit_rate: float  # fraction 0..1
    latency_p50_ms: float
    latency_p99_ms: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(slots=True)
class TierCounters:
    """Mutable counters one tier updates; ``snapshot`` freezes them with the tier's size figures."""

    hits: int = 0
    misses: int = 0
    errors: int = 0
    corruptions: int = 0
    evictions: int = 0
    latency: LatencyReservoir = field(default_factory=LatencyReservoir)

    def snapshot(self, entries: int = 0, size_bytes: int = 0, evictions: int | None = None) -> TierStats:
        return TierStats(
            hits=self.hits,
            misses=self.misses,
            errors=self.errors,
            corruptions=self.corruptions,
            evictions=self.evictions if evictions is None else evictions,
            entries=entries,
            size_bytes=size_bytes,
            hit_rate=hit_rate(self.hits, self.misses),
            latency_p50_ms=self.latency.percentile(50),
            latency_p99_ms=self.latency.percentile(99),
        )


@dataclass(frozen=True, slots=True)
class TokenCacheStats:
    """The original plan's summary fields, per agent. ``hit_rate`` is a fraction 0..1."""

    cache_hits: int
    cache_misses: int
    hit_rate: float
    total_tokens_cached: int
    cache_size_mb: float
    avg_hit_latency_ms: float
    avg_miss_latency_ms: float

    def to_dict(self) -> dict:
        return asdict(self)
