"""Metrics of KV-event routing: what the router believes each replica holds, next to the engine's own count.

Plain Python, no Ray: the metric objects come from an injected factory (``deployments/prefix_router.py``
passes one over ``ray.util.metrics``; tests pass a fake sink). Tag ``replica`` is the replica's unique id,
the same value the LLM replicas tag their own ``tcrag_llm_*`` metrics with, so a query can put the two
side by side:

- ``tcrag_router_kv_resident_blocks`` (gauge): blocks the index holds for the replica, from its events.
- ``tcrag_router_kv_replica_status`` (gauge, tag ``status`` in warm/resyncing/cold): 1 for the replica's
  current status, 0 for the others; all 0 once the replica left the index.
- ``tcrag_router_predicted_cached_tokens`` (counter): for every request placed on the replica, the prompt
  tokens the policy believed it holds (the leading blocks it matched, in tokens). Compare its rate with
  the engine's ``tcrag_llm_prefix_cached_tokens``: a ratio above 1 means the router believes in blocks
  the engine no longer has (missed evictions), below 1 that it misses blocks the engine reuses (a cold
  or lagging index, fallback decisions, which predict nothing). Counted when Ray reports the placement,
  so a request chosen several times counts once, on the replica that took it.

Gauges are refreshed from ``KVBlockIndex.stats()`` (one pass over the replicas, no block walk) at most
every ``refresh_interval_s`` when asked with ``maybe_refresh`` (the router asks on every routing
decision), and at once with ``refresh`` (after a replica left). Every router process exports its own
view: the gauges are per process (aggregate them with ``max``/``avg``), the counter adds up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from routing.kv_index import KVBlockIndex

__all__ = [
    "KVIndexMetrics",
    "MetricsFactory",
    "PREDICTED_CACHED_TOKENS",
    "REPLICA_STATUS",
    "RESIDENT_BLOCKS",
    "STATUSES",
]

RESIDENT_BLOCKS = "tcrag_router_kv_resident_blocks"
REPLICA_STATUS = "tcrag_router_kv_replica_status"
PREDICTED_CACHED_TOKENS = "tcrag_router_predicted_cached_tokens"
STATUSES = ("warm", "resyncing", "cold")


class GaugeLike(Protocol):
    def set(self, value: float, tags: dict[str, str] | None = None) -> None: ...


class CounterLike(Protocol):
    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None: ...


class MetricsFactory(Protocol):
    """Makes the metric objects; ``ray.util.metrics.Gauge``/``Counter`` have exactly these methods."""

    def gauge(self, name: str, description: str, tag_keys: Sequence[str]) -> GaugeLike: ...

    def counter(self, name: str, description: str, tag_keys: Sequence[str]) -> CounterLike: ...


class KVIndexMetrics:
    """Turns an index's per-replica stats and the routed requests into metric updates; see the module
    docstring. Not thread-safe: call it from the thread that owns the index (the router's loop)."""

    def __init__(
        self,
        index: KVBlockIndex,
        factory: MetricsFactory,
        refresh_interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if refresh_interval_s < 0:
            raise ValueError("refresh_interval_s must be >= 0")
        self._index = index
        self._interval_s = refresh_interval_s
        self._clock = clock
        self._next_refresh_s = float("-inf")
        self._reported: set[str] = set()  # replicas whose gauges hold a non-zero value
        self._blocks = factory.gauge(
            RESIDENT_BLOCKS, "KV blocks the router's index believes the replica holds (from its KV events).",
            ("replica",))
        self._status = factory.gauge(
            REPLICA_STATUS, "1 for the replica's status in the router's KV index (warm, resyncing, cold).",
            ("replica", "status"))
        self._predicted = factory.counter(
            PREDICTED_CACHED_TOKENS,
            "Prompt tokens the KV-aware policy believed cached on the replica a request was placed on.",
            ("replica",))

    def routed(self, replica_id: str, predicted_cached_tokens: int) -> None:
        """A request was placed on ``replica_id`` with this many prompt tokens believed cached there."""
        if predicted_cached_tokens > 0:  # Ray's Counter refuses increments <= 0
            self._predicted.inc(predicted_cached_tokens, tags={"replica": replica_id})

    def maybe_refresh(self) -> bool:
        """``refresh`` if the last one is ``refresh_interval_s`` old; True when it ran."""
        now = self._clock()
        if now < self._next_refresh_s:
            return False
        self.refresh()
        return True

    def refresh(self) -> None:
        """Set the gauges from the index as it is now; replicas it no longer knows drop to 0."""
        self._next_refresh_s = self._clock() + self._interval_s
        seen: set[str] = set()
        for stats in self._index.stats():
            seen.add(stats.replica_id)
            self._set(stats.replica_id, stats.num_blocks, {s: float(s == stats.status) for s in STATUSES})
        for gone in self._reported - seen:
            self._set(gone, 0, {s: 0.0 for s in STATUSES})
        self._reported = seen

    def _set(self, replica_id: str, blocks: int, statuses: Mapping[str, float]) -> None:
        self._blocks.set(blocks, tags={"replica": replica_id})
        for status, value in statuses.items():
            self._status.set(value, tags={"replica": replica_id, "status": status})
