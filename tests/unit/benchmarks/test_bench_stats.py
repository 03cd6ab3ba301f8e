"""Benchmark statistics from hand-made samples: percentiles, summaries, per-class aggregation, reductions,
memory budgets."""

import pytest

from benchmarks.contract import contract_error
from benchmarks.stats import (MB, Sample, aggregate, followup_history, hit_rate_curve, memory_report, percentile,
                              reduction, summarize)


def test_percentile_interpolates_like_numpy():
    assert percentile([], 50) is None
    assert percentile([7.0], 95) == 7.0
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([10, 20, 30, 40, 50], 95) == pytest.approx(48.0)
    assert percentile([3, 1, 2], 0) == 1 and percentile([3, 1, 2], 100) == 3
    with pytest.raises(ValueError):
        percentile([1], 101)


def _s(agent, mode, ttft, total, *, ok=True, prompt=1000, cached=0, hits=0, misses=0, cls="first", session="",
       turn=-1):
    return Sample(agent, mode, ok, ttft_ms=ttft, total_ms=total, client_ms=total + 5, prompt_tokens=prompt,
                  prefix_cached_tokens=cached, completion_tokens=16, cache_hits=hits, cache_misses=misses,
                  traffic_class=cls, session_id=session, turn=turn)


def test_summarize_counts_errors_apart_and_computes_hit_rates():
    samples = [_s("a", "full", 100, 900, cached=900, hits=5), _s("a", "full", 300, 1100, cached=500, hits=3, misses=2),
               _s("a", "full", 0, 0, ok=False, cached=1000, hits=100)]
    m = summarize(samples)
    assert m["requests"] == 3 and m["errors"] == 1
    assert m["ttft_p50_ms"] == 200 and m["p50_ms"] == 1000
    assert m["token_cache_hit_rate"] == pytest.approx(8 / 10)
    assert m["prefix_cache_hit_rate"] == pytest.approx(1400 / 2000)
    empty = summarize([])
    assert empty["ttft_p50_ms"] is None and empty["requests"] == 0 and empty["token_cache_hit_rate"] == 0.0


def test_reduction():
    assert reduction(250, 1000) == 0.75
    assert reduction(None, 1000) is None and reduction(10, 0) is None
    assert reduction(1200, 1000) == -0.2


def test_aggregate_shape_and_reductions_per_agent():
    samples = []
    for agent, peer, full in (("support", 4000, 500), ("qa", 3000, 1500)):
        samples += [_s(agent, "plain_rag", peer, peer + 800), _s(agent, "full", full, full + 800, hits=5)]
    result = aggregate(samples, unavailable={"token_cache": "not supported"})
    assert set(result["modes"]) == {"plain_rag", "no_reuse", "token_cache", "full"}
    assert result["modes"]["token_cache"]["available"] is False
    assert result["modes"]["token_cache"]["reason"] == "not supported"
    assert result["modes"]["full"]["available"] is True
    for key in ("ttft_p50_ms", "ttft_p95_ms", "p50_ms", "p95_ms", "requests", "errors", "token_cache_hit_rate",
                "prefix_cache_hit_rate", "classes"):
        assert key in result["modes"]["full"]
    assert set(result["modes"]["full"]["classes"]) == {"first", "rephrased", "repeat", "followup"}
    assert result["agents"]["support"]["ttft_reduction_p50"] == pytest.approx(1 - 500 / 4000, abs=1e-4)
    assert result["agents"]["qa"]["latency_reduction_p50"] == pytest.approx(1 - 2300 / 3800, abs=1e-4)
    assert result["ttft_reduction_p50"] == pytest.approx(1 - 1000 / 3500, abs=1e-4)
    assert "token_cache_vs_plain_rag" not in result
    assert result["ttft_reduction_p50_vs_no_reuse"] is None  # no no_reuse samples: no reduction, no crash
    for agent in ("support", "qa"):
        assert set(result["agents"][agent]) >= {"modes", "ttft_reduction_p50", "latency_reduction_p50",
                                                "ttft_reduction_p50_vs_no_reuse", "class_reductions"}


def test_headline_is_full_vs_plain_rag_and_also_vs_no_reuse():
    samples = []
    for i in range(3):
        samples += [_s("support", "plain_rag", 2000 + i, 2600 + i), _s("support", "no_reuse", 4000 + i, 4600 + i),
                    _s("support", "token_cache", 3800 + i, 4400 + i, hits=5),
                    _s("support", "full", 500 + i, 1100 + i, hits=5)]
    result = aggregate(samples)
    assert result["ttft_reduction_p50"] == pytest.approx(1 - 501 / 2001, abs=1e-4)
    assert result["latency_reduction_p50"] == pytest.approx(1 - 1101 / 2601, abs=1e-4)
    assert result["ttft_reduction_p50_vs_no_reuse"] == pytest.approx(1 - 501 / 4001, abs=1e-4)
    assert result["latency_reduction_p50_vs_no_reuse"] == pytest.approx(1 - 1101 / 4601, abs=1e-4)
    assert result["token_cache_vs_plain_rag"]["ttft_reduction_p50"] == pytest.approx(1 - 3801 / 2001, abs=1e-4)
    assert result["agents"]["support"]["ttft_reduction_p50"] == result["ttft_reduction_p50"]


def test_per_class_aggregation_and_class_reductions():
    samples = [
        _s("support", "plain_rag", 2000, 2500, cls="first", cached=0),
        _s("support", "full", 1900, 2400, cls="first", cached=100),
        _s("support", "plain_rag", 1800, 2300, cls="rephrased", cached=200),
        _s("support", "plain_rag", 1600, 2100, cls="rephrased", cached=100),
        _s("support", "full", 600, 1100, cls="rephrased", cached=800),
        _s("support", "full", 400, 900, cls="rephrased", cached=700),
        _s("support", "full", 0, 0, cls="rephrased", ok=False),
        _s("qa", "plain_rag", 300, 800, cls="repeat", cached=950),
        _s("qa", "full", 250, 750, cls="repeat", cached=980),
    ]
    result = aggregate(samples)
    full, peer = result["modes"]["full"]["classes"], result["modes"]["plain_rag"]["classes"]
    assert full["rephrased"]["requests"] == 3 and full["rephrased"]["errors"] == 1
    assert full["rephrased"]["ttft_p50_ms"] == 500 and peer["rephrased"]["ttft_p50_ms"] == 1700
    assert full["rephrased"]["prefix_cache_hit_rate"] == pytest.approx(1500 / 2000)
    assert peer["rephrased"]["prefix_cache_hit_rate"] == pytest.approx(300 / 2000)
    assert full["followup"]["requests"] == 0 and full["followup"]["ttft_p50_ms"] is None
    assert full["repeat"]["prefix_cache_hit_rate"] == pytest.approx(0.98)
    # The classes add up to the mode.
    assert sum(c["requests"] for c in full.values()) == result["modes"]["full"]["requests"] == 5
    red = result["class_reductions"]
    assert red["rephrased"]["ttft_reduction_p50"] == pytest.approx(1 - 500 / 1700, abs=1e-4)
    assert red["repeat"]["ttft_reduction_p50"] == pytest.approx(1 - 250 / 300, abs=1e-4)
    assert red["followup"]["ttft_reduction_p50"] is None
    # Per agent, the same per class.
    assert result["agents"]["qa"]["modes"]["full"]["classes"]["repeat"]["requests"] == 1
    assert result["agents"]["qa"]["modes"]["full"]["classes"]["rephrased"]["requests"] == 0
    assert result["agents"]["support"]["class_reductions"]["rephrased"] == red["rephrased"]


def test_followup_history_share_uses_the_previous_turn_warmup_included():
    warm = [_s("support", "full", 900, 1000, prompt=1200, cls="first", session="bench-full-r.s1", turn=0)]
    measured = [
        _s("support", "full", 200, 400, prompt=1500, cached=1210, cls="followup", session="bench-full-r.s1", turn=1),
        _s("support", "full", 200, 400, prompt=1900, cached=1400, cls="followup", session="bench-full-r.s1", turn=2),
        _s("support", "full", 200, 400, prompt=1900, cached=1400, cls="followup", session="bench-full-r.s9", turn=3),
        _s("support", "plain_rag", 900, 1000, prompt=1500, cached=300, cls="followup", session="bench-plain_rag-r.s1",
           turn=1),
    ]
    result = aggregate(measured, earlier=warm)
    full = result["modes"]["full"]["classes"]["followup"]
    # turn 1: history 1200 + 16, cached 1210 -> 1210; turn 2: history 1500 + 16, cached 1400 -> 1400;
    # turn 3 of s9 has no known previous turn; plain_rag's previous turn is in another session (mode).
    assert full["requests"] == 3 and full["history_requests"] == 2
    assert full["history_tokens"] == 1216 + 1516
    assert full["history_cached_share"] == pytest.approx((1210 + 1400) / (1216 + 1516), abs=1e-4)
    assert result["modes"]["plain_rag"]["classes"]["followup"]["history_cached_share"] is None
    capped = followup_history([_s("a", "full", 1, 1, cached=5000, cls="followup", session="s", turn=1)],
                              {("full", "s", 0): _s("a", "full", 1, 1, prompt=984, session="s", turn=0)})
    assert capped["history_cached_share"] == 1.0


def _stats(agent_bytes, shard_bytes=0):
    tiers = [{"shards": {"token_cache_shard_0": {"size_bytes": shard_bytes}}, "redis": {"size_bytes": 0}}]
    return {"agents": {name: {"bytes": b, "entries": 3, "tiers": tiers} for name, b in agent_bytes.items()}}


def test_memory_report_budgets_and_shared_shards_counted_once():
    report = memory_report(_stats({"support": 10 * MB, "qa": 120 * MB}, shard_bytes=5 * MB))
    assert report["agents"]["support"]["within_budget"] and report["agents"]["qa"]["within_budget"]
    assert report["total_bytes"] == 135 * MB and report["total_within_budget"] and report["all_within_budget"]
    over = memory_report(_stats({"support": 120 * MB}))
    assert over["agents"]["support"]["within_budget"] is False and not over["all_within_budget"]
    total = memory_report(_stats({"qa": 149 * MB, "code-review": 149 * MB, "se-darwin": 149 * MB}, 60 * MB))
    assert not total["total_within_budget"]


def test_hit_rate_curve_is_cumulative():
    samples = [_s("a", "full", 1, 1, hits=0, misses=5), _s("a", "full", 1, 1, hits=5), _s("a", "full", 1, 1, hits=5)]
    assert hit_rate_curve(samples) == [0.0, 0.5, pytest.approx(10 / 15, abs=1e-4)]


def test_contract_error_names_the_missing_field():
    good = {"agent": "qa", "output": {}, "sources": [], "usage": {"prompt_tokens": 1, "prefix_cached_tokens": 0,
            "completion_tokens": 1}, "cache": {"hits": 0, "misses": 0, "hit_rate": 0.0},
            "latency_ms": {"retrieve": 1, "tokens": 1, "ttft": 1, "generate": 1, "total": 1}}
    assert contract_error(good, "qa") is None
    assert contract_error(good, "support") == "agent is 'qa', expected 'support'"
    bad = {**good, "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
    assert contract_error(bad) == "missing field usage.prefix_cached_tokens"
    assert contract_error({k: v for k, v in good.items() if k != "cache"}) == "missing field cache"
    assert contract_error([]) is not None
