"""The audit report: every actual comes from the results, failed checks become findings, the verdict follows."""

import datetime as dt

import pytest

from benchmarks.audit import junit_counts, loadtest_checks, render, validate
from benchmarks.stats import MB, Sample, aggregate, memory_report

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
AGENTS = ("support", "documentation", "business", "qa", "code-review", "se-darwin")


def _results(full_ttft=400.0, agent_bytes=1 * MB, errors=0):
    samples = []
    for agent in AGENTS:
        for i in range(4):
            samples.append(Sample(agent, "baseline", True, ttft_ms=4000 + i, total_ms=4800 + i, prompt_tokens=1300))
            samples.append(Sample(agent, "full", True, ttft_ms=full_ttft + i, total_ms=full_ttft + 800 + i,
                                  prompt_tokens=1300, prefix_cached_tokens=1280, cache_hits=5))
    samples += [Sample("support", "full", False, error="HTTP 500")] * errors
    stats = {"agents": {a: {"bytes": agent_bytes, "entries": 10, "tiers": []} for a in AGENTS}}
    return {"max_tokens": 16, "command": "python -m benchmarks.run", "machine": {"cpu": "TestCPU", "cores": 2},
            "workload": {"requests_per_agent_per_mode": 4, "description": "test"},
            "cold_start": {"requests_per_agent": 3, "hit_rate_first_n": 0.42,
                           "agents": {"support": {"warmup_s": 1.5}}},
            **aggregate(samples, unavailable={"token_cache": "needs prefix_cache"}), "memory": memory_report(stats)}


def test_passing_run_is_approved_and_actuals_come_from_results():
    results = _results()
    checks = validate(results)
    report = render(results, checks, None, results_path="r.json", now=NOW)
    assert "| Metric | Target | Actual | Pass? |" in report
    assert "| TTFT reduction p50, support | >= 75.0% | 90.0% | ✅ |" in report
    assert "| Memory overhead, qa | < 150 MB | 1.00 MB | ✅ |" in report
    assert "| Token-cache hit rate after warm-up, all agents | >= 90.0% | 100.0% | ✅ |" in report
    assert "42.0%" in report and "TestCPU" in report
    # Only P2/P3 findings (no junit, unavailable mode, small sample): approved.
    assert "- [x] APPROVED (All P0/P1" in report
    assert "needs prefix_cache" in report


def test_slow_full_mode_is_a_p1_and_over_budget_memory_a_p0():
    slow = render(_results(full_ttft=2000.0), validate(_results(full_ttft=2000.0)), None, results_path="r", now=NOW)
    assert "- [x] APPROVED WITH CONDITIONS" in slow and "TTFT reduction p50, support: 50.0%" in slow
    heavy = _results(agent_bytes=120 * MB)
    report = render(heavy, validate(heavy), None, results_path="r", now=NOW)
    assert "- [x] REJECTED" in report and "Memory overhead, support: 120.00 MB" in report


def test_failed_requests_reject():
    results = _results(errors=2)
    assert "- [x] REJECTED" in render(results, validate(results), None, results_path="r", now=NOW)


def test_junit_counts_by_kind(tmp_path):
    xml = tmp_path / "junit.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.unit.cache.test_cache_lru" name="a"/>'
        '<testcase classname="tests.unit.cache.test_cache_lru" name="b"><failure message="x"/></testcase>'
        '<testcase classname="tests.integration.test_x" name="c"/>'
        '<testcase classname="tests.integration.test_x" name="e"><error message="y"/></testcase>'
        '<testcase classname="tests.e2e.test_y" name="d"><skipped/></testcase>'
        '</testsuite></testsuites>')
    counts = junit_counts(xml)
    assert counts.by_kind["unit"] == {"passed": 1, "failed": 1, "skipped": 0}
    assert counts.failures == {"unit": ["tests.unit.cache.test_cache_lru::b"], "integration": ["tests.integration.test_x::e"]}
    assert counts.by_kind["integration"]["passed"] == 1 and counts.by_kind["e2e"]["skipped"] == 1
    results = _results()
    report = render(results, validate(results), counts, results_path="r", junit_path=str(xml), now=NOW)
    assert "- Unit Tests: 1/2 passing" in report and "- [x] REJECTED" in report


def test_plots_write_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    from benchmarks.plots import plot_cold_start, plot_latency

    samples = [Sample(a, m, True, ttft_ms=100 + i, total_ms=900 + i) for a in AGENTS[:2]
               for m in ("baseline", "full") for i in range(3)]
    assert plot_latency(samples, AGENTS[:2], tmp_path / "l.png", 16).stat().st_size > 0
    assert plot_cold_start({"support": [0.0, 0.5, 0.7]}, tmp_path / "c.png").stat().st_size > 0


_LOCUST_HEADER = ("Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
                  "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,"
                  "99.9%,99.99%,100%\n")


def _locust_csv(tmp_path, failures: int):
    path = tmp_path / "loadtest_stats.csv"
    path.write_text(_LOCUST_HEADER
                    + f"POST,/v1/agents/support/answer,40,{failures},2000,2100,500,7000,900,0.7,0,2000,2300,2600,2800,"
                      "3500,4100,5000,6000,7000,7000,7000\n"
                    + f",Aggregated,40,{failures},2000,2100,500,7000,900,0.7,0,2000,2300,2600,2800,3500,4100,5000,"
                      "6000,7000,7000,7000\n")
    return path


def test_loadtest_rows_judge_failures_and_report_latency_and_throughput(tmp_path):
    clean = loadtest_checks(_locust_csv(tmp_path, 0), users=10)
    assert clean[0].passed is True and clean[0].actual == "0 of 40"
    assert "10 concurrent users" in clean[0].metric
    assert clean[1].actual == "2000 ms / 4100 ms" and clean[1].passed is None
    assert clean[2].actual == "0.70 requests/s"
    failed = loadtest_checks(_locust_csv(tmp_path, 3), users=10)
    assert failed[0].passed is False and failed[0].priority == "P0"
    report = render(_results(), validate(_results()) + failed, None, results_path="r.json", now=NOW)
    assert "REJECTED" in report.split("## Final Verdict")[1].split("[x]")[1]
