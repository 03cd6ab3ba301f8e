"""A short Locust run of loadtests/locustfile.py against the real app: 10 users over all six agents."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
AGENT_PATHS = (
    "/v1/agents/support/answer", "/v1/agents/documentation/lookup", "/v1/agents/business/generate",
    "/v1/agents/qa/generate-tests", "/v1/agents/code-review/review", "/v1/agents/se-darwin/evolve",
)


def run_locust_smoke(base_url: str, workdir: Path, users: int = 10, run_time_s: int = 40,
                     stop_timeout_s: int = 20) -> dict:
    """Headless Locust in a subprocess (gevent's monkey patching stays out of pytest), then its CSV stats:
    ``{"exit_code", "rows": {name: row}, "failures": [rows], "output"}``. ``run_time_s`` plus
    ``stop_timeout_s`` (in-flight requests finish, none is cut off) bounds the run at 60 s."""
    prefix = workdir / "smoke"
    command = [
        str(Path(sys.executable).with_name("locust")), "-f", str(REPO / "loadtests" / "locustfile.py"), "--headless",
        "-u", str(users), "-r", str(users), "-t", f"{run_time_s}s", "--stop-timeout", str(stop_timeout_s),
        "--host", base_url, "--csv", str(prefix), "--exit-code-on-error", "1", "--only-summary",
    ]
    env = {**os.environ, "TCRAG_LOAD_MAX_TOKENS": "8"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=run_time_s + stop_timeout_s + 60)
    with open(f"{prefix}_stats.csv", newline="") as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    with open(f"{prefix}_failures.csv", newline="") as handle:
        failures = list(csv.DictReader(handle))
    return {"exit_code": done.returncode, "rows": rows, "failures": failures,
            "output": (done.stdout + done.stderr)[-4000:]}


def test_locust_smoke_ten_users_all_agents_no_failures(base_url, tmp_path):
    result = run_locust_smoke(base_url, tmp_path)
    rows, total = result["rows"], result["rows"].get("Aggregated", {})
    print(f"\n[loadtest] {total.get('Request Count')} requests, p50 {total.get('50%')} ms, "
          f"p95 {total.get('95%')} ms, {float(total.get('Requests/s') or 0):.2f} req/s", file=sys.stderr)
    assert not result["failures"], f"failed requests: {result['failures']}\n{result['output']}"
    assert int(total.get("Failure Count", -1)) == 0, result["output"]
    for path in AGENT_PATHS:
        assert path in rows and int(rows[path]["Request Count"]) > 0, f"no requests to {path}\n{result['output']}"
    assert result["exit_code"] == 0, result["output"]
