"""Locust full vs plain_rag: the command per mode, the CSV's Aggregated row, the ratios, the JSON written
(Locust itself replaced by a stub that writes its CSV)."""

import json
import subprocess

import pytest

import benchmarks.locust_compare as lc
from benchmarks.contract import mode_fields

HEADER = ("Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
          "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,"
          "99.9%,99.99%,100%\n")


def _csv(path, requests, failures, rps, p50, p95):
    path.write_text(HEADER
                    + f"POST,/v1/agents/support/answer,{requests},{failures},{p50},{p50},1,9,9,{rps},0,{p50},1,1,1,1,"
                      f"{p95},1,1,1,1,1\n"
                    + f",Aggregated,{requests},{failures},{p50},{p50 + 100},1,9,9,{rps},0,{p50},1,1,1,1,{p95},1,1,1,"
                      "1,1\n")
    return path


def test_read_aggregated_and_ratios(tmp_path):
    stats = lc.read_aggregated(_csv(tmp_path / "a_stats.csv", 120, 0, 2.5, 1500, 4000))
    assert stats == {"requests": 120, "failures": 0, "requests_per_s": 2.5, "p50_ms": 1500.0, "p95_ms": 4000.0,
                     "avg_ms": 1600.0, "routes": 1}
    runs = {"full": stats, "plain_rag": {"requests_per_s": 1.25, "p50_ms": 3000.0, "p95_ms": 8000.0}}
    assert lc.ratios(runs) == {"requests_per_s_ratio": 2.0, "p50_ratio": 0.5, "p95_ratio": 0.5}
    assert lc.ratios({"full": stats}) == {"requests_per_s_ratio": None, "p50_ratio": None, "p95_ratio": None}
    (tmp_path / "empty_stats.csv").write_text(HEADER)
    assert lc.read_aggregated(tmp_path / "empty_stats.csv")["requests"] == 0


def test_locust_command_is_headless_fails_on_errors_and_names_the_mode(tmp_path):
    cmd = lc.locust_command("http://h:8000", "plain_rag", 10, 5, "60s", tmp_path / "x", python="py")
    assert cmd[:3] == ["py", "-m", "locust"] and str(lc.LOCUSTFILE) in cmd
    joined = " ".join(cmd)
    for part in ("--headless", "-u 10", "-r 5", "-t 60s", "--host http://h:8000", "--exit-code-on-error 1",
                 "--tcrag-mode plain_rag", f"--csv {tmp_path / 'x'}"):
        assert part in joined


def test_main_runs_both_modes_in_order_and_writes_the_comparison(tmp_path):
    calls = []
    numbers = {"plain_rag": (60, 0, 1.0, 4000, 9000), "full": (150, 2, 2.5, 1200, 3000)}

    def fake_run(cmd, cwd, env, capture_output, text):
        mode = cmd[cmd.index("--tcrag-mode") + 1]
        calls.append((mode, env["TCRAG_LOAD_RUN_ID"], env["TCRAG_LOAD_MIX"], env["TCRAG_LOAD_MAX_TOKENS"]))
        _csv(tmp_path / f"{cmd[cmd.index('--csv') + 1].split('/')[-1]}_stats.csv", *numbers[mode])
        return subprocess.CompletedProcess(cmd, 1 if numbers[mode][1] else 0, "", "")

    out = tmp_path / "locust_compare.json"
    code = lc.main(["--url", "http://h", "--run-id", "r9", "--pause-s", "0", "--max-tokens", "8", "--out", str(out)],
                   runner=fake_run)
    assert code == 1  # the full run failed requests
    assert [c[0] for c in calls] == ["plain_rag", "full"] and {c[1] for c in calls} == {"r9"}
    assert calls[0][2] == "first=0.2,rephrased=0.4,repeat=0.2,followup=0.2" and calls[0][3] == "8"
    result = json.loads(out.read_text())
    assert result["modes"]["plain_rag"]["requests_per_s"] == 1.0 and result["modes"]["full"]["failures"] == 2
    assert result["modes"]["full"]["fields"] == mode_fields("full", "r9", "locust")
    assert result["full_vs_plain_rag"] == {"requests_per_s_ratio": 2.5, "p50_ratio": 0.3,
                                           "p95_ratio": pytest.approx(0.3333, abs=1e-4)}
    assert result["users"] == 10 and "machine" in result
    with pytest.raises(SystemExit):
        lc.main(["--modes", "full,baseline"])
