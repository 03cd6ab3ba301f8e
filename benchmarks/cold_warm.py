"""Cold vs warm latency of one repeated request per agent, and the plain-RAG baseline beside it.

Usage: ``python -m benchmarks.cold_warm [--url http://127.0.0.1:8000] [--max-tokens 32]``. Send it to a
freshly started app: the first request of each agent is then cold (nothing in the token cache's tiers
beyond warm-up, nothing in vLLM's prefix cache), the second is the same request warm, the third is the
same request as plain RAG (``use_cache=false``).
"""

from __future__ import annotations

import argparse
import json
import time

from benchmarks.workloads import AGENT_SPECS, build_topics
from testbed.app_process import http_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    rows = []
    for agent, spec in AGENT_SPECS.items():
        body = {**build_topics(agent)[0].body, "max_tokens": args.max_tokens}
        for label, extra in (("cold", {}), ("warm", {}), ("baseline", {"use_cache": False})):
            started = time.perf_counter()
            status, answer = http_json("POST", f"{args.url}{spec.path}", {**body, **extra})
            wall_ms = (time.perf_counter() - started) * 1e3
            if status != 200:
                rows.append({"agent": agent, "run": label, "status": status, "error": answer})
                continue
            rows.append({"agent": agent, "run": label, "wall_ms": round(wall_ms), **{
                f"{k}_ms": round(v) for k, v in answer["latency_ms"].items()},
                "prompt_tokens": answer["usage"]["prompt_tokens"],
                "prefix_cached_tokens": answer["usage"]["prefix_cached_tokens"],
                "cache_hits": answer["cache"]["hits"], "cache_misses": answer["cache"]["misses"]})
    print(f"{'agent':<15}{'run':<10}{'ttft ms':>9}{'total ms':>10}{'prompt':>8}{'kv cached':>10}{'hits':>6}{'misses':>7}")
    for r in rows:
        if "error" in r:
            print(f"{r['agent']:<15}{r['run']:<10} HTTP {r['status']}: {json.dumps(r['error'])[:80]}")
            continue
        print(f"{r['agent']:<15}{r['run']:<10}{r['ttft_ms']:>9}{r['total_ms']:>10}{r['prompt_tokens']:>8}"
              f"{r['prefix_cached_tokens']:>10}{r['cache_hits']:>6}{r['cache_misses']:>7}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
