"""The small memory profile (`serve_config.small.yaml`, `make run-small`) as a user runs it: it comes up
healthy and every agent answers. Runs in a pytest session of its own (`make test` runs it after the main
suite), so no other app shares the machine's memory while it is measured.

The peak RSS of the app's whole process tree (`serve run` and everything under it) is sampled from the
start to the last answer and written to `benchmarks/results/memory_small.json`; it is reported, not
asserted: memory on a shared machine is a measurement, the test's verdict is that the profile serves.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import psutil
import pytest

from testbed.app_process import REPO, AppProcess, http_json
from testbed.memory import TreeMemory, TreeMemorySampler
from testbed.redis_server import RedisServer, free_port
from tests.e2e.test_agents import AGENT_CALLS, assert_contract

pytestmark = pytest.mark.e2e

CONFIG = REPO / "serve_config.small.yaml"
RESULT = REPO / "benchmarks" / "results" / "memory_small.json"
GIB = 1 << 30


def _gib(n: int) -> float:
    return round(n / GIB, 2)


def _as_json(sample: TreeMemory | None) -> dict | None:
    if sample is None:
        return None
    return {"processes": sample.processes, "rss_sum_gib": _gib(sample.rss_bytes), "pss_sum_gib": _gib(sample.pss_bytes),
            "system_used_gib": _gib(sample.system_used_bytes),
            "largest": [{"process": name, "rss_gib": _gib(rss)} for name, rss in sample.top]}


@pytest.fixture(scope="module")
def redis_server() -> RedisServer:
    server = RedisServer(free_port())
    server.start()
    yield server
    server.stop()


def test_small_profile_serves_every_agent_and_records_its_memory(tmp_path_factory, redis_server):
    workdir = tmp_path_factory.mktemp("small")
    env = {"TCRAG_DATA_DIR": str(workdir / "data"), "REDIS_URL": redis_server.url, "RAY_DEDUP_LOGS": "0"}
    port = int(os.environ.get("TCRAG_SMALL_PORT", free_port()))
    app = AppProcess(env=env, log_path=workdir / "serve.log", port=port, config=CONFIG)
    system_used_before = psutil.virtual_memory().used
    answers: dict[str, dict] = {}
    print(f"\n[small] starting {CONFIG.name} (log: {app.log_path})", file=sys.stderr, flush=True)
    with TreeMemorySampler(lambda: app.pid, interval_s=1.0) as memory:
        try:
            start_s = app.start()
            print(f"[small] healthy after {start_s:.0f} s", file=sys.stderr, flush=True)
            idle = memory.take(app.pid)
            for agent, (path, body) in AGENT_CALLS.items():
                started = time.monotonic()
                status, answer = http_json("POST", f"{app.base_url}{path}", {**body, "max_tokens": 12})
                answers[agent] = {"status": status, "seconds": round(time.monotonic() - started, 2), "body": answer}
            after = memory.take(app.pid)
        finally:
            memory.stop()
            app.stop()

    peak = memory.peak
    result = {
        "command": "make test (second session: python -m pytest tests/small_profile)",
        "config": CONFIG.name,
        "measured_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cores": os.cpu_count(), "memory_gib": _gib(psutil.virtual_memory().total),
                    "python": platform.python_version()},
        "start_s": round(start_s, 1),
        "samples": memory.samples,
        "peak_rss_sum_gib": _gib(peak.rss_bytes) if peak else None,
        "peak": _as_json(peak),
        "idle_after_start": _as_json(idle),
        "after_one_request_per_agent": _as_json(after),
        "system_used_before_start_gib": _gib(system_used_before),
        "note": "rss_sum counts pages shared between processes once per process (an upper bound); pss_sum "
                "splits them; system_used includes whatever else ran on the machine",
        "agents": {agent: {"status": a["status"], "seconds": a["seconds"]} for agent, a in answers.items()},
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"[small] peak RSS of the process tree {result['peak_rss_sum_gib']} GiB "
          f"(PSS {result['peak']['pss_sum_gib'] if peak else '?'} GiB); idle after start "
          f"{result['idle_after_start']['rss_sum_gib']} GiB; written to {RESULT}", file=sys.stderr, flush=True)

    for agent, a in answers.items():
        assert a["status"] == 200, (agent, a["body"])
        assert_contract(a["body"], agent)
