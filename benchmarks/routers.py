"""Side-by-side comparison of LLM-pool request routers on the same workload (issue: prefix-affinity routing).

For each router the real app is started (``serve run`` of serve_config.yaml with only the router changed),
the same seeded Zipf workload over the agents is sent with a few concurrent clients, and the prefix-cache
hit rate (vLLM cached tokens / prompt tokens) and latency percentiles are recorded. Runs are sequential,
so each router has the machine to itself; the workload, seed and warm-up are identical.

Usage: ``python -m benchmarks.routers [--requests 120] [--concurrency 4] [--max-tokens 8]``
(starts and stops the app once per router; ~6-8 minutes per router on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.stats import percentile
from benchmarks.workloads import AGENT_SPECS, covered_warmup, router_workload
from testbed.app_process import AppProcess, http_json

ROUTERS: dict[str, str | None] = {
    "prefix_affinity": "deployments.prefix_router:PrefixAffinityRouter",
    # The same router with KV-event routing on: each engine publishes its KV events (llm.kv_events).
    "prefix_affinity_kv": "deployments.prefix_router:PrefixAffinityRouter",
    "ray_default": None,  # Ray Serve's default (power of two choices by queue length)
    "ray_consistent_hash": "ray.serve.experimental.consistent_hash_router:ConsistentHashRouter",
}
KV_ROUTING = "prefix_affinity_kv"


def run_router(name: str, router_class: str | None, requests: list[tuple[str, dict]], warmup: int,
               concurrency: int, max_tokens: int, port: int, workdir: Path, data_dir: Path,
               router_kwargs: dict[str, Any] | None = None, llm: dict[str, Any] | None = None) -> dict[str, Any]:
    router: dict[str, Any] = {"request_router_class": router_class}
    if router_kwargs is not None:
        router["request_router_kwargs"] = router_kwargs
    overrides = {"llm": {**(llm or {}), "router": router}}
    app = AppProcess(env={"TCRAG_DATA_DIR": str(data_dir), "REDIS_URL": "none"},
                     log_path=workdir / f"serve-{name}.log", port=port, overrides=overrides)
    print(f"[routers] {name}: starting the app ...", file=sys.stderr, flush=True)
    start_s = app.start()
    try:
        def send(item: tuple[str, dict]) -> dict[str, Any]:
            path, body = item
            started = time.perf_counter()
            status, answer = http_json("POST", f"{app.base_url}{path}", {**body, "max_tokens": max_tokens})
            client_ms = (time.perf_counter() - started) * 1e3
            if status != 200:
                return {"ok": False, "status": status}
            return {"ok": True, "client_ms": client_ms, "ttft_ms": answer["latency_ms"]["ttft"],
                    "prompt": answer["usage"]["prompt_tokens"], "cached": answer["usage"]["prefix_cached_tokens"]}

        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(send, requests[:warmup]))  # the agents' token caches and some KV fill up
            print(f"[routers] {name}: measuring {len(requests) - warmup} requests", file=sys.stderr, flush=True)
            results = list(pool.map(send, requests[warmup:]))
    finally:
        app.stop()
    ok = [r for r in results if r["ok"]]
    return {
        "router_class": router_class,
        "router_kwargs": router_kwargs,
        "app_start_s": round(start_s, 1),
        "requests": len(results),
        "errors": len(results) - len(ok),
        "prefix_cache_hit_rate": round(sum(r["cached"] for r in ok) / max(1, sum(r["prompt"] for r in ok)), 4),
        "p50_ms": percentile([r["client_ms"] for r in ok], 50),
        "p95_ms": percentile([r["client_ms"] for r in ok], 95),
        "ttft_p50_ms": percentile([r["ttft_ms"] for r in ok], 50),
        "ttft_p95_ms": percentile([r["ttft_ms"] for r in ok], 95),
        # Share of requests that reused at least half their prompt: the median request of a router
        # below 0.5 pays a prefill, which is what separates the routers' p50.
        "requests_mostly_cached": round(sum(r["cached"] >= r["prompt"] / 2 for r in ok) / max(1, len(ok)), 4),
        "samples": results,
    }


def router_settings(name: str, prefix_router_kwargs: dict[str, Any] | None,
                    llm: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The router kwargs and LLM-pool overrides of one router: KV routing also turns on the engines' events."""
    if name == KV_ROUTING:
        base = dict(prefix_router_kwargs or {"load_factor": 2.0, "block_size": 16, "max_blocks": 64, "vnodes": 128})
        return {**base, "kv_routing": {"enabled": True}}, {**llm, "kv_events": {"enabled": True}}
    return (prefix_router_kwargs if name == "prefix_affinity" else None), llm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=120, help="measured requests per router")
    parser.add_argument("--warmup", type=int, default=24,
                        help="unmeasured Zipf requests sent first (after the covering pass, if any)")
    parser.add_argument("--warmup-all-topics", action=argparse.BooleanOptionalAction, default=True,
                        help="start the warm-up with every topic of every agent once (steady state)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=int, default=8300)
    parser.add_argument("--routers", default=",".join(ROUTERS))
    parser.add_argument("--agents", default=",".join(AGENT_SPECS))
    parser.add_argument("--prefix-router-kwargs", type=json.loads, default=None,
                        help="JSON request_router_kwargs for prefix_affinity (default: serve_config.yaml's)")
    parser.add_argument("--llm-replicas", type=int, default=2, help="vLLM replicas in the pool")
    parser.add_argument("--kv-cache-bytes", type=int, default=None,
                        help="each engine's KV cache (default: serve_config.yaml's); smaller evicts during the run")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other routers' results in --out when its workload is the same")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/routers.json"))
    args = parser.parse_args(argv)
    agents = args.agents.split(",")
    requests = router_workload(args.warmup + args.requests, args.seed, agents, cover=args.warmup_all_topics)
    warmup = covered_warmup(agents, args.warmup) if args.warmup_all_topics else args.warmup
    workdir = Path(tempfile.mkdtemp(prefix="tcrag-routers-"))
    workload = {"agents": agents, "requests": args.requests, "warmup": warmup,
                "warmup_all_topics": args.warmup_all_topics, "concurrency": args.concurrency,
                "max_tokens": args.max_tokens, "seed": args.seed, "zipf_s": 1.1, "llm_replicas": args.llm_replicas,
                "kv_cache_bytes": args.kv_cache_bytes}
    results: dict[str, Any] = {}
    if args.merge and args.out.exists():
        previous = json.loads(args.out.read_text())
        if previous.get("workload") == workload:
            results.update(previous.get("routers", {}))
        else:
            print("[routers] --merge: the saved workload differs; not merging", file=sys.stderr)
    llm: dict[str, Any] = {"num_replicas": args.llm_replicas}
    if args.kv_cache_bytes:
        llm["engine"] = {"kv_cache_memory_bytes": args.kv_cache_bytes}
    for name in args.routers.split(","):
        kwargs, pool = router_settings(name, args.prefix_router_kwargs, llm)
        results[name] = run_router(name, ROUTERS[name], requests, warmup, args.concurrency,
                                   args.max_tokens, args.port, workdir, workdir / "store", kwargs, pool)
        summary = {k: v for k, v in results[name].items() if k != "samples"}
        print(f"[routers] {name}: {json.dumps(summary)}", file=sys.stderr, flush=True)
    report = {"workload": workload, "routers": results}
    base = results.get("ray_default", {}).get("p50_ms")
    ours = results.get("prefix_affinity", {}).get("p50_ms")
    if base and ours:
        report["p50_speedup_vs_default"] = round(base / ours, 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"{'router':<22}{'hit rate':>10}{'p50 ms':>10}{'p95 ms':>10}{'ttft p50':>10}{'errors':>8}")
    for name, r in results.items():
        print(f"{name:<22}{r['prefix_cache_hit_rate']:>10.3f}{r['p50_ms'] or 0:>10.0f}{r['p95_ms'] or 0:>10.0f}"
              f"{r['ttft_p50_ms'] or 0:>10.0f}{r['errors']:>8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
