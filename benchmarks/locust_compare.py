"""Locust, full vs plain_rag: the same realistic traffic mix in both modes, one headless run after the other.

    python -m benchmarks.locust_compare --url http://127.0.0.1:8000 [--users 10] [--spawn-rate 5]
        [--run-time 120s] [--modes plain_rag,full] [--max-tokens 16] [--seed 0] [--mix first=0.2,...]
        [--pause-s 5] [--out benchmarks/results/locust_compare.json] [--note ...]

Each run is ``locust -f loadtests/locustfile.py --headless --tcrag-mode <mode> --exit-code-on-error 1``
against the running app with the same users, spawn rate, run time, seed and mix; both share one run id, and
the locustfile gives each mode its own ``cache_salt`` and session prefix, so the second run starts on none
of the first run's KV. Per mode the JSON holds requests, failures, requests/s, p50, p95 (Locust's
``Aggregated`` row of ``--csv``) and the exit code; ``full_vs_plain_rag`` holds the ratios issue 14
targets (requests/s >= 1.5x, p95 <= 0.5x). The command exits non-zero when a run failed requests.
``python -m benchmarks.audit --locust-compare <file>`` turns it into audit rows.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.contract import MODES, mode_fields, new_run_id
from benchmarks.workloads import TrafficMix

__all__ = ["locust_command", "read_aggregated", "ratios", "main"]

REPO = Path(__file__).resolve().parent.parent
LOCUSTFILE = REPO / "loadtests" / "locustfile.py"
DEFAULT_OUT = Path("benchmarks/results/locust_compare.json")


def locust_command(url: str, mode: str, users: int, spawn_rate: float, run_time: str, csv_prefix: Path,
                   stop_timeout_s: int = 30, python: str = sys.executable) -> list[str]:
    """The headless Locust run of one mode (failures make it exit non-zero)."""
    return [python, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", str(users), "-r", str(spawn_rate),
            "-t", run_time, "--stop-timeout", str(stop_timeout_s), "--host", url, "--csv", str(csv_prefix),
            "--exit-code-on-error", "1", "--only-summary", "--tcrag-mode", mode]


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "", "N/A") else None
    except ValueError:
        return None


def read_aggregated(stats_csv: Path) -> dict[str, Any]:
    """Requests, failures, requests/s, p50, p95 and mean from the ``Aggregated`` row of Locust's
    ``*_stats.csv`` (all zeros when the run sent nothing)."""
    with Path(stats_csv).open(newline="") as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    total = rows.get("Aggregated")
    if total is None:
        return {"requests": 0, "failures": 0, "requests_per_s": 0.0, "p50_ms": None, "p95_ms": None, "avg_ms": None,
                "routes": 0}
    return {"requests": int(total["Request Count"]), "failures": int(total["Failure Count"]),
            "requests_per_s": round(float(total["Requests/s"]), 4), "p50_ms": _number(total.get("50%")),
            "p95_ms": _number(total.get("95%")), "avg_ms": _number(total.get("Average Response Time")),
            "routes": len(rows) - 1}


def ratios(runs: Mapping[str, Mapping[str, Any]], mode: str = "full", against: str = "plain_rag") -> dict[str, Any]:
    """``mode`` over ``against``: requests/s (higher is better), p50 and p95 (lower is better); None when a
    side is missing or zero."""
    a, b = runs.get(mode) or {}, runs.get(against) or {}

    def ratio(key: str) -> float | None:
        x, y = a.get(key), b.get(key)
        return round(x / y, 4) if x is not None and y else None

    return {"requests_per_s_ratio": ratio("requests_per_s"), "p50_ratio": ratio("p50_ms"),
            "p95_ratio": ratio("p95_ms")}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.locust_compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the running app")
    p.add_argument("--users", type=int, default=10)
    p.add_argument("--spawn-rate", type=float, default=5)
    p.add_argument("--run-time", default="120s", help="per mode (Locust's -t)")
    p.add_argument("--stop-timeout", type=int, default=30, help="seconds for in-flight requests at the end")
    p.add_argument("--modes", default="plain_rag,full", help="in this order, one run each")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mix", default="", help="traffic class shares (default: the benchmark's)")
    p.add_argument("--pause-s", type=float, default=5.0, help="idle time between the runs")
    p.add_argument("--run-id", default="", help="names the salts (default: from the clock)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--note", default="", help="free text stored in machine.note")
    args = p.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or any(m not in MODES for m in args.modes):
        p.error(f"--modes: choose from {', '.join(MODES)}")
    try:
        args.mix = TrafficMix.parse(args.mix) if args.mix else TrafficMix()
    except ValueError as err:
        p.error(f"--mix: {err}")
    args.run_id = args.run_id or new_run_id()
    return args


def main(argv: Sequence[str] | None = None, runner: Callable[..., Any] = subprocess.run) -> int:
    """Both runs, then the JSON; ``runner`` runs a command like ``subprocess.run`` (tests pass a stub)."""
    args = parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    mix_text = ",".join(f"{c}={w}" for c, w in args.mix.weights().items())
    env = {**os.environ, "TCRAG_LOAD_MAX_TOKENS": str(args.max_tokens), "TCRAG_LOAD_SEED": str(args.seed),
           "TCRAG_LOAD_MIX": mix_text, "TCRAG_LOAD_RUN_ID": args.run_id}
    runs: dict[str, Any] = {}
    for i, mode in enumerate(args.modes):
        if i and args.pause_s > 0:
            time.sleep(args.pause_s)
        prefix = args.out.with_name(f"{args.out.stem}_{mode}")
        command = locust_command(args.url, mode, args.users, args.spawn_rate, args.run_time, prefix, args.stop_timeout)
        print(f"[locust-compare] {mode}: {' '.join(command)}", file=sys.stderr, flush=True)
        began = time.monotonic()
        done = runner(command, cwd=REPO, env=env, capture_output=True, text=True)
        stats_csv = Path(f"{prefix}_stats.csv")
        stats = read_aggregated(stats_csv) if stats_csv.exists() else {"requests": 0, "failures": 0,
                                                                       "requests_per_s": 0.0, "p50_ms": None,
                                                                       "p95_ms": None, "avg_ms": None, "routes": 0}
        runs[mode] = {**stats, "exit_code": done.returncode, "wall_s": round(time.monotonic() - began, 1),
                      "fields": mode_fields(mode, args.run_id, "locust"), "stats_csv": str(stats_csv)}
        if done.returncode != 0:
            runs[mode]["output_tail"] = (done.stdout + done.stderr)[-2000:]
        print(f"[locust-compare] {mode}: {stats['requests']} requests, {stats['failures']} failed, "
              f"{stats['requests_per_s']:.2f} req/s, p50 {stats['p50_ms']} ms, p95 {stats['p95_ms']} ms, "
              f"exit {done.returncode}", file=sys.stderr, flush=True)

    from benchmarks.run import machine_info

    result = {
        "schema": "token-cached-rag/locust-compare/v1",
        "command": "python -m benchmarks.locust_compare " + " ".join(sys.argv[1:] if argv is None else argv),
        "url": args.url, "users": args.users, "spawn_rate": args.spawn_rate, "run_time": args.run_time,
        "max_tokens": args.max_tokens, "seed": args.seed, "run_id": args.run_id,
        "mix": args.mix.shares(),
        "workload": "loadtests/locustfile.py: per simulated user one seeded benchmarks.workloads.TrafficGenerator "
                    "stream of its agent (first, rephrased, repeat, followup with session ids), user classes "
                    "weighted support 4, documentation 4, business 2, qa 2, code-review 2, se-darwin 1",
        "modes": runs,
        "full_vs_plain_rag": ratios(runs),
        "machine": machine_info(args.note),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"[locust-compare] wrote {args.out}", file=sys.stderr, flush=True)
    return 0 if all(r["exit_code"] == 0 for r in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
