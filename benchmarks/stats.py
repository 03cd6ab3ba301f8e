"""Pure statistics for the benchmark: percentiles, per-mode summaries, reductions, memory budgets.

Nothing here does I/O, so the numbers in ``latest.json`` can be unit-tested from hand-made samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "MODES",
    "MB",
    "AGENT_BUDGET_BYTES",
    "TOTAL_BUDGET_BYTES",
    "Sample",
    "percentile",
    "summarize",
    "reduction",
    "aggregate",
    "memory_report",
    "hit_rate_curve",
    "repeat_split",
]

MODES = ("baseline", "token_cache", "full")
MB = 1024 * 1024
# The original plan's budgets: 100 MB for the text agents, 150 MB for the code agents, 500 MB in total.
AGENT_BUDGET_BYTES: dict[str, int] = {
    "support": 100 * MB, "documentation": 100 * MB, "business": 100 * MB,
    "qa": 150 * MB, "code-review": 150 * MB, "se-darwin": 150 * MB,
}
TOTAL_BUDGET_BYTES = 500 * MB


@dataclass(frozen=True, slots=True)
class Sample:
    """One measured request. Latencies are the agent's own (``latency_ms`` of the answer) except
    ``client_ms``, the wall time the harness saw (gateway and proxy included)."""

    agent: str
    mode: str
    ok: bool
    ttft_ms: float = 0.0
    total_ms: float = 0.0
    client_ms: float = 0.0
    prompt_tokens: int = 0
    prefix_cached_tokens: int = 0
    completion_tokens: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    started_s: float = 0.0  # seconds since the phase started
    error: str = ""
    topic: str = ""  # the workload topic's key (its eval label), to tell repeats from first sightings

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between ranks (numpy's default); None
    for no values."""
    data = sorted(values)
    if not data:
        return None
    if not 0 <= q <= 100:
        raise ValueError("q must be within 0..100")
    pos = (len(data) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def summarize(samples: Sequence[Sample]) -> dict[str, Any]:
    """DESIGN.md's per-mode entry. Percentiles are over successful requests; errors are counted apart.
    ``prefix_cache_hit_rate`` is sum(prefix_cached_tokens) / sum(prompt_tokens);
    ``token_cache_hit_rate`` is chunk lookups served from the token cache over all lookups."""
    ok = [s for s in samples if s.ok]
    ttft = [s.ttft_ms for s in ok]
    total = [s.total_ms for s in ok]
    hits = sum(s.cache_hits for s in ok)
    lookups = hits + sum(s.cache_misses for s in ok)
    return {
        "ttft_p50_ms": _round(percentile(ttft, 50)),
        "ttft_p95_ms": _round(percentile(ttft, 95)),
        "p50_ms": _round(percentile(total, 50)),
        "p95_ms": _round(percentile(total, 95)),
        "requests": len(samples),
        "errors": len(samples) - len(ok),
        "token_cache_hit_rate": round(_ratio(hits, lookups), 4),
        "prefix_cache_hit_rate": round(_ratio(sum(s.prefix_cached_tokens for s in ok),
                                              sum(s.prompt_tokens for s in ok)), 4),
        "token_cache_lookups": lookups,
        "client_p50_ms": _round(percentile([s.client_ms for s in ok], 50)),
        "mean_prompt_tokens": _round(_ratio(sum(s.prompt_tokens for s in ok), len(ok)), 1),
        "mean_completion_tokens": _round(_ratio(sum(s.completion_tokens for s in ok), len(ok)), 1),
    }


def reduction(improved: float | None, baseline: float | None) -> float | None:
    """1 - improved/baseline (0.75 = 75% lower), or None when either side is missing."""
    if improved is None or baseline is None or baseline <= 0:
        return None
    return round(1.0 - improved / baseline, 4)


def _reductions(modes: Mapping[str, Mapping[str, Any]], mode: str = "full") -> dict[str, float | None]:
    base, other = modes.get("baseline", {}), modes.get(mode, {})
    return {
        "ttft_reduction_p50": reduction(other.get("ttft_p50_ms"), base.get("ttft_p50_ms")),
        "latency_reduction_p50": reduction(other.get("p50_ms"), base.get("p50_ms")),
    }


def aggregate(samples: Sequence[Sample], modes: Sequence[str] = MODES,
              unavailable: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``modes``, the full-versus-baseline reductions and the same per agent. A mode in ``unavailable``
    is reported with ``available: false`` and its reason instead of numbers."""
    unavailable = unavailable or {}

    def block(subset: Sequence[Sample]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for mode in modes:
            if mode in unavailable:
                out[mode] = {**summarize([]), "available": False, "reason": unavailable[mode]}
            else:
                out[mode] = {**summarize([s for s in subset if s.mode == mode]), "available": True}
        return out

    result: dict[str, Any] = {"modes": block(samples)}
    result.update(_reductions(result["modes"]))
    if "token_cache" in modes and "token_cache" not in unavailable:
        result["token_cache_vs_baseline"] = _reductions(result["modes"], "token_cache")
    agents: dict[str, Any] = {}
    for agent in dict.fromkeys(s.agent for s in samples):
        entry: dict[str, Any] = {"modes": block([s for s in samples if s.agent == agent])}
        entry.update(_reductions(entry["modes"]))
        agents[agent] = entry
    result["agents"] = agents
    return result


def memory_report(cache_stats: Mapping[str, Any], budgets: Mapping[str, int] = AGENT_BUDGET_BYTES,
                  total_budget: int = TOTAL_BUDGET_BYTES) -> dict[str, Any]:
    """Token-cache bytes from ``GET /v1/cache/stats`` checked against the budgets.

    Per agent: the bytes of its in-process (L0) tier, summed over its replicas (the stats' ``bytes``).
    The shard actors (L1) are shared by all agents, so their bytes count once, in the total only. Redis
    (L2) lives outside the app's processes and is reported apart, not charged to the budget."""
    agents_in = cache_stats.get("agents", {})
    per_agent: dict[str, Any] = {}
    shards: dict[str, int] = {}
    redis_bytes = 0
    for name, entry in agents_in.items():
        size = int(entry.get("bytes", 0))
        budget = budgets.get(name)
        per_agent[name] = {"bytes": size, "mb": round(size / MB, 3), "entries": entry.get("entries"),
                           "budget_mb": None if budget is None else budget // MB,
                           "within_budget": None if budget is None else size < budget}
        for replica in entry.get("tiers", []) or []:
            for shard, info in (replica.get("shards") or {}).items():
                shards[shard] = max(shards.get(shard, 0), int(info.get("size_bytes", 0)))
            redis_bytes = max(redis_bytes, int((replica.get("redis") or {}).get("size_bytes", 0)))
    agents_total = sum(a["bytes"] for a in per_agent.values())
    total = agents_total + sum(shards.values())
    return {
        "agents": per_agent,
        "shards_bytes": shards,
        "redis_bytes_reported": redis_bytes,
        "total_bytes": total,
        "total_mb": round(total / MB, 3),
        "total_budget_mb": total_budget // MB,
        "total_within_budget": total < total_budget,
        "all_within_budget": total < total_budget and all(a["within_budget"] is not False
                                                          for a in per_agent.values()),
        "accounting": "agent bytes = L0 tier of each agent's replicas; total adds the shared shard (L1) "
                      "actors once; Redis (L2) is external and not charged",
    }


def hit_rate_curve(samples: Sequence[Sample]) -> list[float]:
    """Cumulative token-cache hit rate after each request (for the cold-start plot)."""
    curve: list[float] = []
    hits = lookups = 0
    for s in samples:
        hits += s.cache_hits
        lookups += s.cache_hits + s.cache_misses
        curve.append(round(_ratio(hits, lookups), 4))
    return curve


def repeat_split(samples: Sequence[Sample], seen_before: Iterable[str], mode: str = "full") -> dict[str, Any]:
    """``mode``'s summary split into requests whose topic was already sent (in ``seen_before``, e.g. the
    warm-up, or earlier in the run) and first sightings, which no cache can have prepared: it tells a cold
    tail apart from evictions."""
    seen = set(seen_before)
    groups: dict[str, list[Sample]] = {"repeat": [], "first_seen": []}
    for s in samples:
        if s.mode != mode:
            continue
        groups["repeat" if s.topic in seen else "first_seen"].append(s)
        seen.add(s.topic)
    return {name: summarize(group) for name, group in groups.items()}
