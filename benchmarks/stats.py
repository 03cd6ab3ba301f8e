"""Pure statistics for the benchmark: percentiles, per-mode and per-class summaries, reductions, memory budgets.

Nothing here does I/O, so the numbers in ``latest.json`` can be unit-tested from hand-made samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks.contract import MODES
from benchmarks.workloads import TRAFFIC_CLASSES

__all__ = [
    "MODES",
    "TRAFFIC_CLASSES",
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
    "followup_history",
]

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
    topic: str = ""  # the workload topic's key (its eval label)
    traffic_class: str = ""  # first, rephrased, repeat, followup ("" outside the traffic plan: cold start)
    variant: str = ""  # which wording of the topic ("first", "rephrased:1", "edited:0", "followup:0")
    session_id: str = ""  # as sent (with the mode's prefix); "" for a request outside a conversation
    turn: int = -1  # 0 for a conversation's opening turn, 1.. for follow-ups, -1 outside one

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


def _reductions(modes: Mapping[str, Mapping[str, Any]], mode: str = "full",
                against: str = "plain_rag") -> dict[str, float | None]:
    base, other = modes.get(against, {}), modes.get(mode, {})
    return {
        "ttft_reduction_p50": reduction(other.get("ttft_p50_ms"), base.get("ttft_p50_ms")),
        "latency_reduction_p50": reduction(other.get("p50_ms"), base.get("p50_ms")),
    }


def _headline(modes: Mapping[str, Mapping[str, Any]]) -> dict[str, float | None]:
    """Full versus plain_rag (the peer), and full versus no_reuse (the reference point)."""
    vs_peer = _reductions(modes, "full", "plain_rag")
    vs_ref = _reductions(modes, "full", "no_reuse")
    return {**vs_peer, "ttft_reduction_p50_vs_no_reuse": vs_ref["ttft_reduction_p50"],
            "latency_reduction_p50_vs_no_reuse": vs_ref["latency_reduction_p50"]}


def _history_index(samples: Iterable[Sample]) -> dict[tuple[str, str, int], Sample]:
    return {(s.mode, s.session_id, s.turn): s for s in samples if s.ok and s.session_id and s.turn >= 0}


def followup_history(samples: Sequence[Sample], index: Mapping[tuple[str, str, int], Sample]) -> dict[str, Any]:
    """How much of the conversation so far the follow-up turns in ``samples`` found cached: per follow-up,
    the history is the previous turn's prompt plus its output tokens (what this turn's prompt starts with)
    and the covered part is ``min(prefix_cached_tokens, history)``. ``index`` maps (mode, session id, turn)
    to the samples that may hold the previous turn (warm-up included). Follow-ups whose previous turn is
    unknown or failed are left out (``history_requests`` counts the ones used)."""
    used = history = covered = 0
    for s in samples:
        if not s.ok or s.turn < 1 or not s.session_id:
            continue
        previous = index.get((s.mode, s.session_id, s.turn - 1))
        if previous is None:
            continue
        tokens = previous.prompt_tokens + previous.completion_tokens
        used += 1
        history += tokens
        covered += min(s.prefix_cached_tokens, tokens)
    return {"history_requests": used, "history_tokens": history,
            "history_cached_share": round(_ratio(covered, history), 4) if used else None}


def aggregate(samples: Sequence[Sample], modes: Sequence[str] = MODES,
              unavailable: Mapping[str, str] | None = None, classes: Sequence[str] = TRAFFIC_CLASSES,
              earlier: Sequence[Sample] = ()) -> dict[str, Any]:
    """DESIGN.md's benchmark shape from the measured samples: ``modes`` (each with ``classes``, the same
    summary per traffic class), the headline reductions (full vs plain_rag, full vs no_reuse), the same
    per class (``class_reductions``) and per agent (``agents``). A mode in ``unavailable`` is reported with
    ``available: false`` and its reason instead of numbers. ``earlier`` (the warm-up's samples) is only
    used to find the previous turn of a follow-up (``classes.followup.history_cached_share``)."""
    unavailable = unavailable or {}
    index = _history_index([*earlier, *samples])

    def one(subset: Sequence[Sample], cls: str | None = None) -> dict[str, Any]:
        entry = summarize(subset)
        if cls == "followup":
            entry.update(followup_history(subset, index))
        return entry

    def block(subset: Sequence[Sample]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for mode in modes:
            mine = [s for s in subset if s.mode == mode]
            if mode in unavailable:
                out[mode] = {**summarize([]), "available": False, "reason": unavailable[mode],
                             "classes": {c: one([], c) for c in classes}}
            else:
                out[mode] = {**summarize(mine), "available": True,
                             "classes": {c: one([s for s in mine if s.traffic_class == c], c) for c in classes}}
        return out

    def section(subset: Sequence[Sample]) -> dict[str, Any]:
        entry: dict[str, Any] = {"modes": block(subset)}
        entry.update(_headline(entry["modes"]))
        if "token_cache" in modes and "token_cache" not in unavailable:
            entry["token_cache_vs_plain_rag"] = _reductions(entry["modes"], "token_cache", "plain_rag")
        entry["class_reductions"] = {
            c: _headline({m: v["classes"][c] for m, v in entry["modes"].items()}) for c in classes}
        return entry

    result = section(samples)
    result["agents"] = {agent: section([s for s in samples if s.agent == agent])
                        for agent in dict.fromkeys(s.agent for s in samples)}
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
