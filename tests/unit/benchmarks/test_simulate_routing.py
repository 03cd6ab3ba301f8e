"""The routing simulator, small and fast: traces, the oracle, every router and scenario end to end."""

from __future__ import annotations

from benchmarks.simulate_routing import (
    ROUTERS,
    SimConfig,
    build_trace,
    main,
    oracle_cached,
    oracle_cached_share,
    run_scenario,
)


def test_trace_is_seeded_and_shaped_like_the_traffic() -> None:
    a = build_trace(120, tenants=2, seed=3, block_size=32)
    b = build_trace(120, tenants=2, seed=3, block_size=32)
    assert [r.tokens for r in a] == [r.tokens for r in b]
    classes = {r.traffic_class for r in a}
    assert {"first", "rephrased", "repeat"} <= classes
    for r in a:
        assert 0 < r.context_len < len(r.tokens) or r.traffic_class == "repeat"
        assert len(r.keys) == len(r.tokens) // 32
    # A follow-up extends an earlier prompt of its stream (its previous turn plus the answer).
    followups = [r for r in a if r.traffic_class == "followup"]
    assert followups
    earlier = {tuple(r.tokens[:200]) for r in a}
    assert all(tuple(f.tokens[:200]) in earlier for f in followups)


def test_oracle_counts_whole_blocks_seen_before_and_never_the_last_token() -> None:
    trace = build_trace(60, tenants=1, seed=0, block_size=32)
    cached = oracle_cached(trace, 32)
    assert cached[trace[0].rid] == 0
    for r in trace:
        assert cached[r.rid] % 32 == 0 and cached[r.rid] < len(r.tokens)
    assert 0 < oracle_cached_share(trace, 32) < 1


def test_every_router_and_scenario_runs_and_the_index_tracks_the_caches() -> None:
    base = SimConfig(requests_per_replica=15, kv_blocks=40, block_size=64, restart_s=1.0)
    for scenario in ("steady", "loss", "scaleout"):
        result = run_scenario(scenario, [4], ROUTERS, base)
        (run,) = result["runs"]
        assert run["requests"] == 15 * 4 * (2 if scenario == "scaleout" else 1)
        for name, r in run["routers"].items():
            assert r["requests"] == run["requests"], (scenario, name)
            assert 0 <= r["cached_share"] <= run["oracle_cached_share"] + 1e-9
            assert r["ttft_p50_s"] > 0 and r["load_max_over_mean_requests"] >= 1
            if scenario != "steady":
                assert "dip" in r
        # Fed through vLLM's wire format, the index ends exactly where each replica's LRU is.
        assert run["routers"]["kv"]["index_drift_blocks_max"] == 0
        assert any(reason.startswith("kv_") for reason in run["routers"]["kv"]["decisions"])


def test_command_line_writes_one_file_per_scenario(tmp_path) -> None:
    assert main(["--replicas", "2", "--scenarios", "steady", "--routers", "kv", "affinity",
                 "--requests-per-replica", "10", "--out-dir", str(tmp_path)]) == 0
    assert (tmp_path / "simulate_steady.json").is_file()
