"""Benchmark statistics from hand-made samples: percentiles, summaries, reductions, memory budgets."""

import pytest

from benchmarks.contract import contract_error
from benchmarks.stats import (MB, Sample, aggregate, hit_rate_curve, memory_report, percentile, reduction,
                              repeat_split, summarize)


def test_percentile_interpolates_like_numpy():
    assert percentile([], 50) is None
    assert percentile([7.0], 95) == 7.0
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([10, 20, 30, 40, 50], 95) == pytest.approx(48.0)
    assert percentile([3, 1, 2], 0) == 1 and percentile([3, 1, 2], 100) == 3
    with pytest.raises(ValueError):
        percentile([1], 101)


def _s(agent, mode, ttft, total, *, ok=True, prompt=1000, cached=0, hits=0, misses=0):
    return Sample(agent, mode, ok, ttft_ms=ttft, total_ms=total, client_ms=total + 5, prompt_tokens=prompt,
                  prefix_cached_tokens=cached, completion_tokens=16, cache_hits=hits, cache_misses=misses)


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
    for agent, base, full in (("support", 4000, 500), ("qa", 3000, 1500)):
        samples += [_s(agent, "baseline", base, base + 800), _s(agent, "full", full, full + 800, hits=5)]
    result = aggregate(samples, unavailable={"token_cache": "not supported"})
    assert set(result["modes"]) == {"baseline", "token_cache", "full"}
    assert result["modes"]["token_cache"]["available"] is False
    assert result["modes"]["token_cache"]["reason"] == "not supported"
    assert result["modes"]["full"]["available"] is True
    for key in ("ttft_p50_ms", "ttft_p95_ms", "p50_ms", "p95_ms", "requests", "errors", "token_cache_hit_rate",
                "prefix_cache_hit_rate"):
        assert key in result["modes"]["full"]
    assert result["agents"]["support"]["ttft_reduction_p50"] == pytest.approx(1 - 500 / 4000, abs=1e-4)
    assert result["agents"]["qa"]["latency_reduction_p50"] == pytest.approx(1 - 2300 / 3800, abs=1e-4)
    assert result["ttft_reduction_p50"] == pytest.approx(1 - 1000 / 3500, abs=1e-4)
    assert "token_cache_vs_baseline" not in result


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


def test_repeat_split_tells_first_sightings_from_repeats():
    samples = [Sample("a", "full", True, ttft_ms=3000, topic="x"), Sample("a", "full", True, ttft_ms=400, topic="x"),
               Sample("a", "full", True, ttft_ms=500, topic="w"), Sample("a", "baseline", True, ttft_ms=9, topic="y")]
    split = repeat_split(samples, ["w"])
    assert split["first_seen"]["requests"] == 1 and split["first_seen"]["ttft_p50_ms"] == 3000
    assert split["repeat"]["requests"] == 2 and split["repeat"]["ttft_p50_ms"] == 450
