"""Choose the Redis (L2) timeout by measurement: L2 hit ratio and call latency, request tail latency.

    python -m benchmarks.redis_timeout [--timeouts 0.01,0.05,0.2] [--users 10] [--run-time 90s]
        [--port 8011] [--redis-url redis://127.0.0.1:6379/0] [--out benchmarks/results/redis_timeout.json]

For each timeout the real app is started (``serve run``, ``cache.redis_timeout_s`` overridden), so its
agents begin with empty in-process and shard tiers and read their whole collection through Redis during
warm-up (the burst where a short timeout bites: many MGETs while the engines are starting), then serve
the Locust mix (``full`` mode) for ``--run-time``. A first start with the longest timeout, not measured,
fills Redis so every measured run finds the same entries there. Per timeout the JSON holds the Redis
tier's counters summed over the agents (hits, misses, errors, of which timeouts, skipped calls, the
breaker's openings, call latency p50/p99), the L2 hit ratio, and Locust's requests/s, p50, p95 and
failures. Absolute numbers vary with the machine's load; compare timeouts within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.contract import new_run_id
from benchmarks.locust_compare import locust_command, read_aggregated
from testbed.app_process import AppProcess, http_json, wait_for_warmup

__all__ = ["main", "redis_summary"]

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path("benchmarks/results/redis_timeout.json")
_COUNTERS = ("hits", "misses", "errors", "timeouts", "skipped_calls", "breaker_opened")


def redis_summary(cache_stats: dict[str, Any]) -> dict[str, Any]:
    """The agents' Redis tiers as one: counters summed, latency percentiles as the worst agent's."""
    out: dict[str, Any] = {key: 0 for key in _COUNTERS}
    p50s, p99s = [], []
    for agent in cache_stats.get("agents", {}).values():
        for tiers in agent.get("tiers", []):
            redis = tiers.get("redis") or {}
            for key in _COUNTERS:
                out[key] += int(redis.get(key, 0) or 0)
            if redis.get("latency_p50_ms") is not None:
                p50s.append(float(redis["latency_p50_ms"]))
            if redis.get("latency_p99_ms") is not None:
                p99s.append(float(redis["latency_p99_ms"]))
    lookups = out["hits"] + out["misses"]
    out["hit_ratio"] = round(out["hits"] / lookups, 4) if lookups else None
    out["latency_p50_ms_max"] = max(p50s) if p50s else None
    out["latency_p99_ms_max"] = max(p99s) if p99s else None
    return out


def run_one(timeout_s: float, args: argparse.Namespace, workdir: Path, measure: bool) -> dict[str, Any]:
    log = workdir / f"serve_{timeout_s}.log"
    app = AppProcess(env={"REDIS_URL": args.redis_url}, log_path=log, port=args.port,
                     overrides={"cache": {"redis_timeout_s": timeout_s}})
    print(f"[redis-timeout] {timeout_s * 1000:.0f} ms: starting the app (log {log})", file=sys.stderr, flush=True)
    try:
        start_s = app.start()
        warm = wait_for_warmup(app.base_url, timeout_s=600.0)
        entry: dict[str, Any] = {"timeout_s": timeout_s, "app_start_s": round(start_s, 1),
                                 "warmup": redis_summary(warm)}
        if not measure:
            return entry
        prefix = workdir / f"locust_{timeout_s}"
        command = locust_command(app.base_url, "full", args.users, args.spawn_rate, args.run_time, prefix)
        env = {**os.environ, "TCRAG_LOAD_MAX_TOKENS": str(args.max_tokens), "TCRAG_LOAD_SEED": "0",
               "TCRAG_LOAD_RUN_ID": args.run_id}
        import subprocess

        print(f"[redis-timeout] {timeout_s * 1000:.0f} ms: Locust {args.users} users for {args.run_time}",
              file=sys.stderr, flush=True)
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        stats_csv = Path(f"{prefix}_stats.csv")
        entry["locust"] = {**(read_aggregated(stats_csv) if stats_csv.exists() else {}), "exit_code": done.returncode}
        _, after = http_json("GET", f"{app.base_url}/v1/cache/stats", timeout_s=30)
        entry["whole_run"] = redis_summary(after)
        entry["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
        print(f"[redis-timeout] {timeout_s * 1000:.0f} ms: {json.dumps(entry)}", file=sys.stderr, flush=True)
        return entry
    finally:
        app.stop()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.redis_timeout", description=__doc__.split("\n\n")[0])
    p.add_argument("--timeouts", default="0.01,0.05,0.2", help="seconds, comma-separated")
    p.add_argument("--users", type=int, default=10)
    p.add_argument("--spawn-rate", type=float, default=5)
    p.add_argument("--run-time", default="90s")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--port", type=int, default=8011)
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--no-prime", action="store_true", help="skip the unmeasured start that fills Redis")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    timeouts = [float(t) for t in args.timeouts.split(",") if t.strip()]
    args.run_id = new_run_id()
    workdir = Path(tempfile.mkdtemp(prefix="tcrag-redis-timeout-"))
    runs = []
    if not args.no_prime:
        runs.append({"prime": run_one(max(timeouts), args, workdir, measure=False)})
    for timeout_s in timeouts:
        runs.append(run_one(timeout_s, args, workdir, measure=True))
    from benchmarks.run import machine_info

    result = {"schema": "token-cached-rag/redis-timeout/v1", "command": "python -m benchmarks.redis_timeout "
              + " ".join(argv if argv is not None else sys.argv[1:]), "run_id": args.run_id,
              "machine": machine_info(""), "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"[redis-timeout] wrote {args.out}", file=sys.stderr, flush=True)
    return 0 if all((r.get("locust") or {}).get("exit_code", 0) == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
