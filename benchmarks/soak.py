"""Soak: mixed agent load for N minutes while cache bytes and replica memory are sampled; are they flat?

    python -m benchmarks.soak --url http://127.0.0.1:8000 --minutes 10 [--workers 4] [--interval-s 15]
        [--root-pid PID] [--redis-url redis://...] [--out benchmarks/results/soak.json]

Every ``interval_s`` it records the token-cache bytes the app reports (``GET /v1/cache/stats``: the
agents' L0 bytes), optionally Redis ``used_memory``, and the resident memory (RSS) of every Ray Serve
replica process (``ServeReplica:*``, with its children, so a vLLM replica includes its engine processes),
plus requests sent and failed so far. It writes the samples as JSON and CSV and prints a verdict per
series: after ``--warmup-s``, the mean of the last quarter of the samples must be within ``--tolerance``
(10%) of the mean of the first quarter. Exit status 0 when every series is flat and no request failed.

On a machine running two apps (two Ray clusters), ``--root-pid`` (the PID of that app's ``serve run``)
limits the memory sampling to that app's processes.

``MixedLoad`` (worker threads sending the six agents' requests round robin, small ``max_tokens``) is also
the load the end-to-end fault tests run while they break things.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import statistics
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.app_process import http_json

__all__ = ["AGENT_REQUESTS", "MixedLoad", "LoadReport", "sample_replica_rss", "cache_bytes", "flat", "main"]

# (route, body) per agent; short texts and max_tokens keep a request around a second on a CPU engine.
AGENT_REQUESTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("/v1/agents/support/answer", {"query": "How do I reset my password?"}),
    ("/v1/agents/documentation/lookup", {"query": "How do I configure the request timeout?"}),
    ("/v1/agents/business/generate", {"brief": "A subscription service for refurbished laptops for students."}),
    ("/v1/agents/qa/generate-tests", {"code": "def add(a, b):\n    return a + b\n", "test_type": "unit"}),
    ("/v1/agents/code-review/review", {"code": "def f(x=[]):\n    x.append(1)\n    return x\n", "language": "python"}),
    ("/v1/agents/se-darwin/evolve", {"task": "Make it faster.", "candidate": "def fib(n):\n    return n if n < 2 else fib(n-1) + fib(n-2)\n"}),
)


@dataclass
class LoadReport:
    """What a load run did: counts, the failures seen (status and a short reason) and latencies."""

    sent: int = 0
    ok: int = 0
    failures: list[tuple[float, str, str]] = field(default_factory=list)  # (time, route, reason)
    latencies_s: list[float] = field(default_factory=list)
    last_ok_at: float = 0.0

    @property
    def failed(self) -> int:
        return len(self.failures)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_s)
        return {
            "sent": self.sent,
            "ok": self.ok,
            "failed": self.failed,
            "p50_s": round(lat[len(lat) // 2], 3) if lat else None,
            "max_s": round(lat[-1], 3) if lat else None,
            "failures": [f"{route}: {reason}" for _, route, reason in self.failures[:10]],
        }


class MixedLoad:
    """``workers`` threads sending agent requests round robin until ``stop()``; every non-200 is a failure.

    ``extra`` is merged into every body (e.g. ``{"max_tokens": 8}``); ``bodies`` overrides the mix.
    Timeouts and connection errors count as failures too: a lost request is a failure whatever the cause.
    """

    def __init__(self, base_url: str, workers: int = 4, extra: dict[str, Any] | None = None,
                 timeout_s: float = 180.0, bodies: tuple[tuple[str, dict[str, Any]], ...] = AGENT_REQUESTS,
                 pause_s: float = 0.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.workers = workers
        self.extra = {"max_tokens": 8, **(extra or {})}
        self.timeout_s = timeout_s
        self.pause_s = pause_s
        self.report = LoadReport()
        self._bodies = bodies
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> MixedLoad:
        for i in range(self.workers):
            thread = threading.Thread(target=self._run, name=f"load-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            n = next(self._counter)
            route, body = self._bodies[n % len(self._bodies)]
            body = {**body, **self.extra}
            if "query" in body:  # vary the question a little so the answers are not all identical
                body["query"] = f"{body['query']} (#{n % 7})"
            started = time.monotonic()
            try:
                status, reply = http_json("POST", self.base_url + route, body, timeout_s=self.timeout_s)
                reason = "" if status == 200 else f"{status} {json.dumps(reply)[:200]}"
            except Exception as err:  # noqa: BLE001 - a transport failure is a lost request
                reason = f"{type(err).__name__}: {err}"
            elapsed = time.monotonic() - started
            with self._lock:
                self.report.sent += 1
                if reason:
                    self.report.failures.append((time.monotonic(), route, reason))
                else:
                    self.report.ok += 1
                    self.report.latencies_s.append(elapsed)
                    self.report.last_ok_at = time.monotonic()
            if self.pause_s:
                self._stop.wait(self.pause_s)

    def wait_for_ok(self, more: int, timeout_s: float = 300.0) -> bool:
        """Let the load run until ``more`` further requests have been answered (True) or ``timeout_s`` passed."""
        target = self.report.ok + more
        deadline = time.monotonic() + timeout_s
        while self.report.ok < target and time.monotonic() < deadline:
            time.sleep(0.5)
        return self.report.ok >= target

    def stop(self, timeout_s: float | None = None) -> LoadReport:
        """Stop sending and wait for the requests in flight (they count) to finish."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=timeout_s if timeout_s is not None else self.timeout_s + 10)
        return self.report

    def __enter__(self) -> MixedLoad:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ----------------------------------------------------------------------------- sampling


def sample_replica_rss(root_pid: int | None = None) -> dict[str, int]:
    """RSS in bytes per Serve replica process (keyed ``name[pid]``), children included."""
    import psutil

    if root_pid is not None:
        try:
            candidates = psutil.Process(root_pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return {}
    else:
        candidates = list(psutil.process_iter())
    out: dict[str, int] = {}
    for proc in candidates:
        try:
            title = " ".join(proc.cmdline())
            if "ServeReplica:" not in title:
                continue
            name = title.split("ServeReplica:", 1)[1].split()[0]
            rss = proc.memory_info().rss
            for child in proc.children(recursive=True):
                try:
                    rss += child.memory_info().rss
                except psutil.Error:
                    pass
            out[f"{name}[{proc.pid}]"] = rss
        except psutil.Error:
            continue
    return out


def cache_bytes(base_url: str, timeout_s: float = 30.0) -> int:
    """Sum of the agents' token-cache bytes as ``/v1/cache/stats`` reports them."""
    with urllib.request.urlopen(base_url.rstrip("/") + "/v1/cache/stats", timeout=timeout_s) as response:
        stats = json.loads(response.read())
    return sum(int(a.get("bytes", 0)) for a in stats.get("agents", {}).values())


def redis_used_memory(url: str) -> int:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


def flat(values: list[float], tolerance: float = 0.10) -> tuple[bool, float, float]:
    """(flat?, first-quarter mean, last-quarter mean): flat when the last quarter's mean is at most
    ``tolerance`` above the first quarter's (shrinking is fine; only growth is a leak)."""
    if len(values) < 4:
        first = last = statistics.fmean(values) if values else 0.0
        return True, first, last
    q = len(values) // 4
    first, last = statistics.fmean(values[:q]), statistics.fmean(values[-q:])
    if first == 0:
        return last == 0, first, last
    return last <= first * (1 + tolerance), first, last


def run(args: argparse.Namespace) -> int:
    load = MixedLoad(args.url, workers=args.workers, extra={"max_tokens": args.max_tokens}, timeout_s=args.timeout_s)
    samples: list[dict[str, Any]] = []
    started = time.monotonic()
    end = started + args.minutes * 60
    print(f"[soak] {args.minutes:g} min of mixed load against {args.url}, {args.workers} workers, "
          f"sample every {args.interval_s:g} s", flush=True)
    load.start()
    try:
        while True:
            now = time.monotonic()
            sample: dict[str, Any] = {"t_s": round(now - started, 1), "sent": load.report.sent, "failed": load.report.failed}
            try:
                sample["cache_bytes"] = cache_bytes(args.url)
            except Exception as err:  # noqa: BLE001 - a missed sample is reported, not fatal
                sample["cache_bytes"] = None
                print(f"[soak] cache stats failed: {err}", file=sys.stderr)
            if args.redis_url:
                try:
                    sample["redis_bytes"] = redis_used_memory(args.redis_url)
                except Exception as err:  # noqa: BLE001
                    sample["redis_bytes"] = None
                    print(f"[soak] redis INFO failed: {err}", file=sys.stderr)
            rss = sample_replica_rss(args.root_pid)
            sample["replica_rss_bytes"] = sum(rss.values())
            sample["replicas"] = len(rss)
            sample["rss_by_replica"] = rss
            samples.append(sample)
            print(f"[soak] t={sample['t_s']:>6.0f}s sent={sample['sent']} failed={sample['failed']} "
                  f"cache={_mb(sample['cache_bytes'])} rss={_mb(sample['replica_rss_bytes'])} "
                  f"({sample['replicas']} replicas)", flush=True)
            if now >= end:
                break
            time.sleep(min(args.interval_s, max(0.0, end - time.monotonic())) or 0.01)
    finally:
        report = load.stop()

    steady = [s for s in samples if s["t_s"] >= args.warmup_s]
    verdicts: dict[str, Any] = {}
    for series in ("cache_bytes", "replica_rss_bytes", "redis_bytes"):
        values = [float(s[series]) for s in steady if s.get(series) is not None]
        if not values:
            continue
        ok, first, last = flat(values, args.tolerance)
        verdicts[series] = {"flat": ok, "first_quarter_mean": first, "last_quarter_mean": last,
                            "change": (last - first) / first if first else 0.0, "samples": len(values)}
    result = {
        "url": args.url, "minutes": args.minutes, "workers": args.workers, "interval_s": args.interval_s,
        "warmup_s": args.warmup_s, "tolerance": args.tolerance, "load": report.summary(),
        "verdicts": verdicts, "samples": samples,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    with out.with_suffix(".csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["t_s", "sent", "failed", "cache_bytes", "redis_bytes", "replica_rss_bytes", "replicas"])
        for s in samples:
            writer.writerow([s["t_s"], s["sent"], s["failed"], s["cache_bytes"], s.get("redis_bytes"),
                             s["replica_rss_bytes"], s["replicas"]])
    print(f"[soak] requests: {report.sent} sent, {report.ok} ok, {report.failed} failed")
    for name, v in verdicts.items():
        print(f"[soak] {name}: {'FLAT' if v['flat'] else 'GROWING'} (first quarter {_mb(v['first_quarter_mean'])}, "
              f"last quarter {_mb(v['last_quarter_mean'])}, {v['change']:+.1%}, {v['samples']} samples after warm-up)")
    print(f"[soak] wrote {out} and {out.with_suffix('.csv')}")
    return 0 if report.failed == 0 and all(v["flat"] for v in verdicts.values()) else 1


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value / (1 << 20):.1f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="app base URL")
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to run the load")
    parser.add_argument("--workers", type=int, default=4, help="concurrent request threads")
    parser.add_argument("--max-tokens", type=int, default=16, help="max_tokens of every request")
    parser.add_argument("--interval-s", type=float, default=15.0, help="seconds between samples")
    parser.add_argument("--warmup-s", type=float, default=60.0, help="samples before this are not judged")
    parser.add_argument("--tolerance", type=float, default=0.10, help="allowed growth, last vs first quarter")
    parser.add_argument("--timeout-s", type=float, default=180.0, help="per-request timeout")
    parser.add_argument("--root-pid", type=int, default=None, help="only replicas below this process (serve run)")
    parser.add_argument("--redis-url", default=None, help="also sample this Redis's used_memory")
    parser.add_argument("--out", default="benchmarks/results/soak.json", help="JSON output (CSV written beside it)")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
