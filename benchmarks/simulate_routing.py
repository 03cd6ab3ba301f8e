"""Trace-driven simulation of LLM-pool routing at 8, 16 and 64 replicas, with the real policy classes.

What is real: the routing policies (``routing.kv_policy.KVAwarePolicy`` over ``routing.kv_index.
KVBlockIndex``, ``routing.prefix_affinity.PrefixAffinityPolicy``), the prefix keys and block keys, and
the KV events: every replica's cache changes are encoded as vLLM's msgpack ``KVEventBatch`` and decoded
by ``routing.kv_events`` before the index sees them, with the replicas' own (different) block hashes.

What is modelled (placeholders, say so next to any number):
- A replica is one CPU engine: prefills run one at a time (FIFO) at ``prefill_tokens_per_s``; a
  request's prefill covers its prompt minus the leading blocks found in the replica's cache at the
  start of its prefill, plus ``overhead_s``; decoding (``output_tokens`` at ``decode_s_per_token``)
  overlaps with later prefills, i.e. decode batching is free and does not slow prefill. TTFT = queueing
  for the prefill server + own prefill. Defaults are fitted roughly to ``benchmarks/results/latest.json``
  (288 sequential requests on this machine: TTFT ~ 281 ms + 2.16 ms per uncached token, 54 ms per
  decoded token; the 281 ms intercept includes retrieval and token assembly, so the engine overhead here
  is a guess of 30 ms). Not yet checked against 2- and 3-replica real runs.
- Each replica's prefix cache is an LRU of ``kv_blocks`` blocks of ``block_size`` tokens (vLLM evicts
  free blocks in LRU order); blocks become visible, and their events are published, when the prefill
  that computed them finishes, and reach the index ``event_delay_s`` later.
- The traffic: per tenant and agent, the seeded stream of ``benchmarks.workloads.TrafficGenerator``
  over ``data/eval/traffic`` (Zipf topics; first / rephrased / repeat / follow-up classes), turned
  into token IDs synthetically: a system prompt per (tenant, agent), five ~380-token retrieved chunks
  per topic, a rephrasing that sends the same context with probability ``same_context`` (the reuse
  planner sends a recent context whole) or keeps only its first 2-4 chunks, follow-ups that extend the
  previous turn's prompt and answer. Tenants: ``replicas // 2`` by default, so the working set grows
  with the pool. Arrivals are Poisson at ``load`` times the pool's prefill capacity at the oracle's hit
  rate.
- The oracle: one infinite cache shared by all replicas, in arrival order: the most prefix reuse any
  routing could get (it ignores that a block is only reusable once computed).
- Routers: ``kv`` (ours, events), ``affinity`` (today's: consistent hashing with bounded loads, c=2, on
  the 16-token x 64-block prefix key), ``consistent_hash`` (the same key, no load bound: Ray's
  ``ConsistentHashRouter``), ``p2c`` (Ray's default: the less loaded of two random replicas).

Scenarios: ``steady``; ``loss`` (at 40% of the trace the busiest replica dies, its queued requests are
re-routed, and a replacement with a new id and an empty cache joins ``restart_s`` later); ``scaleout``
(at 50% the arrival rate doubles and as many replicas again join, empty).

Usage: ``python -m benchmarks.simulate_routing [--replicas 8 16 64] [--scenarios steady loss scaleout]``
writes ``benchmarks/results/simulate_<scenario>.json`` (one file per scenario, all pool sizes and routers) and a
``.png`` beside it; ``--plot FILE...`` redraws the plots of existing results.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import itertools
import json
import random
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks.stats import percentile
from benchmarks.workloads import AGENT_SPECS, TrafficGenerator, TrafficMix
from routing.kv_events import BlockRemoved, BlockStored, KVEventBatch, decode_batch, encode_batch
from routing.kv_index import KVBlockIndex, block_keys
from routing.kv_policy import KVAwarePolicy, KVPolicyConfig, LoadTracker
from routing.prefix_affinity import PrefixAffinityPolicy, PrefixKeyConfig, PromptTokens

__all__ = ["ServiceModel", "SimConfig", "SimRequest", "build_trace", "main", "oracle_cached", "oracle_cached_share",
           "run_scenario", "simulate"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ROUTERS = ("kv", "affinity", "consistent_hash", "p2c")
SCENARIOS = ("steady", "loss", "scaleout")
VOCAB = (100, 49_000)


@dataclass(frozen=True, slots=True)
class ServiceModel:
    """Per-replica service times; placeholders fitted roughly on this machine (module docstring)."""

    prefill_tokens_per_s: float = 460.0
    decode_s_per_token: float = 0.054
    overhead_s: float = 0.03

    def prefill_s(self, uncached_tokens: int) -> float:
        return self.overhead_s + uncached_tokens / self.prefill_tokens_per_s


@dataclass(frozen=True, slots=True)
class SimConfig:
    replicas: int = 8
    scenario: str = "steady"
    requests_per_replica: int = 150
    tenants: int | None = None  # None: replicas // 2 (at least 1)
    block_size: int = 128
    kv_blocks: int = 727  # per replica: serve_config.yaml's 2 GiB of SmolLM2 KV (23 KB/token) in 128-token blocks
    load: float = 0.5  # arrival rate as a share of the pool's prefill capacity at the oracle's hit rate
    output_tokens: int = 16
    same_context: float = 0.6
    event_delay_s: float = 0.005
    restart_s: float = 20.0
    work_weight: float = 2.0  # KVPolicyConfig.work_weight for the kv router
    seed: int = 0
    service: ServiceModel = field(default_factory=ServiceModel)


@dataclass(slots=True)
class SimRequest:
    rid: int
    stream: str  # tenant/agent
    traffic_class: str
    tokens: list[int]
    context_len: int
    output_tokens: int
    keys: list[int] = field(default_factory=list)  # block keys of the full blocks
    arrival_s: float = 0.0


def _tokens(label: str, n: int) -> list[int]:
    rng = random.Random(hashlib.blake2b(label.encode(), digest_size=8).digest())
    return [rng.randrange(*VOCAB) for _ in range(n)]


def _length(label: str, lo: int, hi: int) -> int:
    return lo + int.from_bytes(hashlib.blake2b(label.encode(), digest_size=4).digest(), "big") % (hi - lo + 1)


def build_trace(num_requests: int, tenants: int, seed: int = 0, same_context: float = 0.6,
                output_tokens: int = 16, block_size: int = 128, mix: TrafficMix | None = None) -> list[SimRequest]:
    """Token-level requests from the hand-written traffic streams, one stream per (tenant, agent)."""
    rng = random.Random(f"trace-{seed}")
    agents = list(AGENT_SPECS)
    streams = [(t, a) for t in range(tenants) for a in agents]
    gens = {(t, a): TrafficGenerator(a, mix, seed=seed * 1000 + t, stream=f"sim{t}") for t, a in streams}
    prompts: dict[int, tuple[list[int], int]] = {}  # (stream item index) -> (tokens, context_len) for repeats
    sessions: dict[str, list[int]] = {}  # session id -> tokens of the last prompt + answer
    by_item: dict[tuple[int, str, int], tuple[list[int], int]] = {}
    trace: list[SimRequest] = []
    for rid in range(num_requests):
        t, agent = streams[rng.randrange(len(streams))]
        item = gens[(t, agent)].next()
        base = f"{seed}/{t}/{agent}"
        system = _tokens(f"{base}/system", _length(f"{agent}/system", 120, 320))
        if item.traffic_class == "repeat" and item.repeat_of is not None:
            tokens, context_len = by_item[(t, agent, item.repeat_of)]
        elif item.traffic_class == "followup" and item.session_id in sessions:
            context = sessions[item.session_id]
            query = _tokens(f"{base}/{item.session_id}/{item.turn}", _length(f"{item.variant}{rid}", 15, 50))
            tokens, context_len = context + query, len(context)
        else:
            chunks = [f"{base}/{item.topic}/chunk{i}" for i in range(5)]
            if item.traffic_class == "rephrased" and rng.random() >= same_context:
                keep = rng.randint(2, 4)
                chunks = chunks[:keep] + [f"{base}/{item.topic}/{item.variant}/alt{i}" for i in range(5 - keep)]
            context = list(system)
            for c in chunks:
                context += _tokens(c, _length(c, 300, 460))
            query = _tokens(f"{base}/{item.topic}/{item.variant}/q", _length(f"{item.variant}{item.topic}", 15, 60))
            tokens, context_len = context + query, len(context)
        by_item[(t, agent, item.index)] = (tokens, context_len)
        if item.session_id is not None:
            answer = _tokens(f"{base}/{item.session_id}/{item.turn}/answer", output_tokens)
            sessions[item.session_id] = tokens + answer
        trace.append(SimRequest(rid, f"{t}/{agent}", item.traffic_class, tokens, context_len, output_tokens,
                                block_keys(tokens, block_size)))
    return trace


def _cacheable(req: SimRequest, block_size: int) -> int:
    """vLLM computes at least the last prompt token, so at most (len - 1) // block_size blocks hit."""
    return min(len(req.keys), (len(req.tokens) - 1) // block_size)


def oracle_cached(trace: Sequence[SimRequest], block_size: int) -> dict[int, int]:
    """Per request, the prompt tokens one infinite cache shared by every replica would hold, in arrival order."""
    seen: set[int] = set()
    out: dict[int, int] = {}
    for req in trace:
        n = 0
        for key in req.keys[: _cacheable(req, block_size)]:
            if key not in seen:
                break
            n += 1
        out[req.rid] = n * block_size
        seen.update(req.keys)
    return out


def oracle_cached_share(trace: Sequence[SimRequest], block_size: int) -> float:
    """Cached prompt tokens / prompt tokens under the oracle (``oracle_cached``)."""
    cached = oracle_cached(trace, block_size)
    return sum(cached.values()) / max(1, sum(len(r.tokens) for r in trace))


class _Replica:
    def __init__(self, rid: str, capacity: int, clock_salt: int) -> None:
        self.rid = rid
        self.capacity = capacity
        self.lru: OrderedDict[int, int] = OrderedDict()  # key -> engine hash
        self.queue: deque[tuple[SimRequest, float]] = deque()
        self.busy_until: float | None = None
        self.alive = True
        self.salt = clock_salt.to_bytes(8, "big")
        self.seq = 0
        self.busy_s = 0.0
        self.served = 0
        self.in_flight = 0  # routed and not finished (Ray's queue length)

    def engine_hash(self, key: int) -> int:
        # A different hash than our key, per engine instance, like vLLM's SHA-256: the index must map.
        return int.from_bytes(hashlib.blake2b(self.salt + key.to_bytes(8, "big"), digest_size=8).digest(), "big")

    def lookup(self, req: SimRequest, block_size: int) -> int:
        n = 0
        for key in req.keys[: _cacheable(req, block_size)]:
            if key not in self.lru:
                break
            n += 1
        return n

    def store(self, req: SimRequest, block_size: int) -> KVEventBatch | None:
        """Insert the request's blocks (touching the ones present), evict LRU: the events vLLM would send."""
        events: list[Any] = []
        new_hashes: list[int] = []
        new_tokens: list[int] = []
        parent: int | None = None
        run_parent: int | None = None
        for i, key in enumerate(req.keys):
            if key in self.lru:
                if new_hashes:  # close the current run of new blocks
                    events.append(BlockStored(new_hashes, run_parent, new_tokens, block_size, medium="GPU"))
                    new_hashes, new_tokens = [], []
                self.lru.move_to_end(key)
            else:
                h = self.engine_hash(key)
                if not new_hashes:
                    run_parent = parent
                new_hashes.append(h)
                new_tokens.extend(req.tokens[i * block_size : (i + 1) * block_size])
                self.lru[key] = h
            parent = self.lru[key]
        if new_hashes:
            events.append(BlockStored(new_hashes, run_parent, new_tokens, block_size, medium="GPU"))
        evicted: list[int] = []
        while len(self.lru) > self.capacity:
            _, h = self.lru.popitem(last=False)
            evicted.append(h)
        if evicted:
            events.append(BlockRemoved(evicted, medium="GPU"))
        return KVEventBatch(0.0, events) if events else None


def simulate(config: SimConfig, router: str, trace: list[SimRequest], oracle: dict[int, int]) -> dict[str, Any]:
    """Run one router over ``trace`` (arrival times set; ``oracle``: per request the oracle's cached
    tokens); returns the run's metrics."""
    oracle_share = sum(oracle.values()) / max(1, sum(len(r.tokens) for r in trace))
    service, bs = config.service, config.block_size
    rng = random.Random(f"sim-{config.seed}-{router}")
    salt_counter = itertools.count(1)
    replicas: dict[str, _Replica] = {}
    index = KVBlockIndex(clock=lambda: now)
    tracker = LoadTracker()
    kv_policy = KVAwarePolicy(index, PrefixAffinityPolicy(), KVPolicyConfig(
        block_size=bs, prefill_tokens_per_s=service.prefill_tokens_per_s,
        # Decode does not delay prefill in this model; a huge rate keeps the policy's decode term inert.
        decode_tokens_per_s=1e9, work_weight=config.work_weight), clock=lambda: now)
    affinity = PrefixAffinityPolicy(load_factor=2.0)
    consistent = PrefixAffinityPolicy(load_factor=1e9)
    key_config = PrefixKeyConfig()
    now = 0.0
    heap: list[tuple[float, int, str, Any]] = []
    order = itertools.count()

    def push(t: float, kind: str, payload: Any) -> None:
        heapq.heappush(heap, (t, next(order), kind, payload))

    def add_replica() -> None:
        rid = f"replica-{next(salt_counter):03d}"
        replicas[rid] = _Replica(rid, config.kv_blocks, rng.getrandbits(63))
        # The subscriber asks a new replica's replay endpoint from seq 0 and gets nothing: known, empty.
        index.clear(rid)

    for _ in range(config.replicas):
        add_replica()

    decisions: dict[str, int] = {}
    results: dict[int, dict[str, Any]] = {}

    def route(req: SimRequest) -> None:
        candidates = sorted(r for r, rep in replicas.items() if rep.alive)
        lengths = {r: replicas[r].in_flight for r in candidates}
        if router == "kv":
            decision = kv_policy.choose(candidates, PromptTokens(req.tokens, req.context_len), tracker.loads(), lengths)
            chosen, reason = decision.replica_id, decision.reason
            believed = decision.matched_tokens
        elif router in ("affinity", "consistent_hash"):
            policy = affinity if router == "affinity" else consistent
            d = policy.choose(candidates, key_config.key(req.tokens, req.context_len), lengths)
            chosen, reason, believed = d.replica_id, d.reason, 0
        else:
            a, b = rng.sample(candidates, 2) if len(candidates) > 1 else (candidates[0], candidates[0])
            chosen = min((a, b), key=lambda r: (lengths[r], r))
            reason, believed = "p2c", 0
        decisions[reason] = decisions.get(reason, 0) + 1
        rep = replicas[chosen]
        rep.in_flight += 1
        tracker.routed(str(req.rid), chosen, max(1, len(req.tokens) - believed), req.output_tokens)
        rep.queue.append((req, now))
        if rep.busy_until is None:
            start_next(rep)

    def start_next(rep: _Replica) -> None:
        if not rep.queue or not rep.alive:
            rep.busy_until = None
            return
        req, _ = rep.queue.popleft()
        hit = rep.lookup(req, bs)
        uncached = max(1, len(req.tokens) - hit * bs)
        duration = service.prefill_s(uncached)
        rep.busy_until = now + duration
        rep.busy_s += duration
        push(now + duration, "prefill_done", (rep.rid, req, hit * bs))

    # Arrival events, and the scenario's control events.
    for req in trace:
        push(req.arrival_s, "arrival", req)
    horizon = trace[-1].arrival_s if trace else 0.0
    if config.scenario == "loss":
        push(0.4 * horizon, "kill_busiest", None)
    elif config.scenario == "scaleout":
        push(0.5 * horizon, "scale_out", config.replicas)
    event_at: float | None = None

    while heap:
        now, _, kind, payload = heapq.heappop(heap)
        if kind == "arrival":
            route(payload)
        elif kind == "prefill_done":
            rid, req, cached = payload
            rep = replicas.get(rid)
            if rep is None or not rep.alive:
                continue  # died mid-prefill: the request was re-routed at the kill
            batch = rep.store(req, bs)
            if batch is not None:
                # Through the real wire format: encode as vLLM would, decode as the subscriber does.
                push(now + config.event_delay_s, "kv_events", (rid, rep.seq, encode_batch(batch)))
                rep.seq += 1
            rep.served += 1
            results[req.rid] = {"ttft_s": now - req.arrival_s, "cached": cached, "prompt": len(req.tokens),
                                "oracle": oracle[req.rid],
                                "replica": rid, "arrival_s": req.arrival_s, "class": req.traffic_class}
            tracker.first_token(str(req.rid))
            push(now + req.output_tokens * service.decode_s_per_token, "finish", (rid, req))
            start_next(rep)
        elif kind == "finish":
            rid, req = payload
            tracker.finished(str(req.rid))
            if rid in replicas:
                replicas[rid].in_flight -= 1
        elif kind == "kv_events":
            rid, seq, payload_bytes = payload
            if rid in replicas and replicas[rid].alive:
                index.ingest(rid, seq, decode_batch(payload_bytes))
        elif kind == "kill_busiest":
            event_at = now
            victim = max((r for r in replicas.values() if r.alive), key=lambda r: (r.served, r.rid))
            victim.alive = False
            index.remove_replica(victim.rid)
            tracker.remove_replica(victim.rid)
            orphans = list(victim.queue)
            victim.queue.clear()
            # The request in prefill dies with it too; Serve's caller retries it: re-route everything.
            in_prefill = [e for e in heap if e[2] == "prefill_done" and e[3][0] == victim.rid]
            for e in in_prefill:
                orphans.insert(0, (e[3][1], e[3][1].arrival_s))
            for req, _ in orphans:
                route(req)
            push(now + config.restart_s, "add", 1)
        elif kind == "scale_out":
            event_at = now
            for _ in range(payload):
                add_replica()
        elif kind == "add":
            for _ in range(payload):
                add_replica()

    done = [results[r.rid] for r in trace if r.rid in results]
    cached_share = sum(d["cached"] for d in done) / max(1, sum(d["prompt"] for d in done))
    ttfts = [d["ttft_s"] for d in done]
    served = [r.served for r in replicas.values()]
    busy = [r.busy_s for r in replicas.values()]
    # Load balance over the replicas that were up the whole run (joiners and the dead one skew it).
    full_run = [r for r in replicas.values() if r.alive and r.rid <= f"replica-{config.replicas:03d}"]
    served_full = [r.served for r in full_run] or served
    busy_full = [r.busy_s for r in full_run] or busy
    windows = _windows(done, horizon, 20)
    drift = [abs(index.num_blocks(r.rid) - len(r.lru)) for r in replicas.values() if r.alive]
    out: dict[str, Any] = {
        "router": router,
        "requests": len(done),
        "cached_share": round(cached_share, 4),
        "cached_share_vs_oracle": round(cached_share / oracle_share, 4) if oracle_share else None,
        "ttft_p50_s": _r(percentile(ttfts, 50)),
        "ttft_p95_s": _r(percentile(ttfts, 95)),
        "ttft_p99_s": _r(percentile(ttfts, 99)),
        "load_max_over_mean_requests": _r(max(served_full) / (sum(served_full) / len(served_full))),
        "load_max_over_mean_busy_s": _r(max(busy_full) / (sum(busy_full) / len(busy_full))),
        "decisions": dict(sorted(decisions.items())),
        "windows": windows,
        "index_drift_blocks_max": max(drift) if drift else 0,
    }
    if event_at is not None:
        out["event_at_s"] = round(event_at, 1)
        out["dip"] = _dip(windows, event_at, horizon)
    return out


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


def _windows(done: list[dict[str, Any]], horizon: float, n: int) -> list[dict[str, Any]]:
    """Cached share and TTFT p95 per slice of arrival time."""
    width = max(horizon, 1e-9) / n
    out = []
    for i in range(n):
        lo, hi = i * width, (i + 1) * width
        part = [d for d in done if lo <= d["arrival_s"] < hi or (i == n - 1 and d["arrival_s"] >= hi)]
        prompt = sum(d["prompt"] for d in part)
        cached, best = sum(d["cached"] for d in part), sum(d["oracle"] for d in part)
        out.append({"start_s": round(lo, 1), "requests": len(part),
                    "cached_share": round(cached / prompt, 4) if prompt else None,
                    # The same requests under the oracle: the window's workload noise cancels out.
                    "vs_oracle": round(cached / best, 4) if best else None,
                    "ttft_p95_s": _r(percentile([d["ttft_s"] for d in part], 95))})
    return out


def _dip(windows: list[dict[str, Any]], event_at: float, horizon: float) -> dict[str, Any]:
    """The cached share relative to the oracle on the same requests (``vs_oracle``) around the event: its
    level over the 4 windows before the one holding the event, its low from that window on, and how many
    windows from there stayed 0.05 below the level."""
    width = max(horizon, 1e-9) / len(windows)
    at = min(len(windows) - 1, int(event_at / width))
    before = [w["vs_oracle"] for w in windows[:at] if w["vs_oracle"] is not None][-4:]
    after = [w["vs_oracle"] for w in windows[at:] if w["vs_oracle"] is not None]
    if not before or not after:
        return {}
    level = sum(before) / len(before)
    return {"vs_oracle_before": round(level, 4), "vs_oracle_min_after": min(after),
            "windows_below": sum(v < level - 0.05 for v in after), "window_s": round(width, 1)}


def set_arrivals(trace: list[SimRequest], config: SimConfig, oracle_share: float) -> float:
    """Poisson arrivals at ``config.load`` of the pool's prefill capacity; returns the rate (req/s)."""
    mean_prompt = sum(len(r.tokens) for r in trace) / max(1, len(trace))
    mean_service = config.service.prefill_s(int(mean_prompt * (1 - oracle_share)))
    rate = config.load * config.replicas / mean_service
    rng = random.Random(f"arrivals-{config.seed}")
    t = 0.0
    half = len(trace) // 2
    for i, req in enumerate(trace):
        # Scale-out: the load doubles at the midpoint, when as many replicas again join.
        r = rate * (2 if config.scenario == "scaleout" and i >= half else 1)
        t += rng.expovariate(r)
        req.arrival_s = t
    return rate


def run_scenario(scenario: str, replica_counts: Sequence[int], routers: Sequence[str], base: SimConfig) -> dict[str, Any]:
    runs = []
    for n in replica_counts:
        config = replace(base, replicas=n, scenario=scenario)
        tenants = config.tenants or max(1, n // 2)
        num = config.requests_per_replica * n * (2 if scenario == "scaleout" else 1)
        started = time.perf_counter()
        trace = build_trace(num, tenants, config.seed, config.same_context, config.output_tokens, config.block_size)
        oracle_per_request = oracle_cached(trace, config.block_size)
        oracle = sum(oracle_per_request.values()) / max(1, sum(len(r.tokens) for r in trace))
        rate = set_arrivals(trace, config, oracle)
        distinct = len({k for r in trace for k in r.keys})
        run: dict[str, Any] = {
            "replicas": n, "tenants": tenants, "requests": len(trace), "arrival_rate_per_s": round(rate, 3),
            "oracle_cached_share": round(oracle, 4), "distinct_blocks": distinct,
            "pool_kv_blocks": n * config.kv_blocks, "routers": {},
        }
        for router in routers:
            print(f"[simulate] {scenario} n={n} {router} ...", file=sys.stderr, flush=True)
            run["routers"][router] = simulate(config, router, trace, oracle_per_request)
        run["elapsed_s"] = round(time.perf_counter() - started, 1)
        runs.append(run)
    return {"scenario": scenario, "config": {**asdict(base), "replicas": list(replica_counts)}, "runs": runs}


def summary_rows(result: dict[str, Any]) -> list[str]:
    rows = []
    for run in result["runs"]:
        for name, r in run["routers"].items():
            dip = r.get("dip", {})
            rows.append(f"{result['scenario']:>8} n={run['replicas']:<3} {name:<15} cached {r['cached_share']:.3f} "
                        f"(oracle {run['oracle_cached_share']:.3f}, x{r['cached_share_vs_oracle']:.3f}) "
                        f"ttft p50 {r['ttft_p50_s']:.2f}s p95 {r['ttft_p95_s']:.2f}s "
                        f"load max/mean req {r['load_max_over_mean_requests']:.2f} busy {r['load_max_over_mean_busy_s']:.2f}"
                        + (f" | vs oracle {dip.get('vs_oracle_before'):.3f} before, min {dip.get('vs_oracle_min_after'):.3f}"
                           f" after, {dip.get('windows_below')} windows of {dip.get('window_s')}s below" if dip else ""))
    return rows


def plot_scenario(result: dict[str, Any], path: Path) -> Path:
    """One panel per pool size: each router's cached share relative to the oracle on the same requests,
    per time window, with the scenario's event marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.6), sharey=True, squeeze=False)
    for ax, run in zip(axes[0], runs):
        for name, r in run["routers"].items():
            xs = [w["start_s"] for w in r["windows"] if w["vs_oracle"] is not None]
            ys = [w["vs_oracle"] for w in r["windows"] if w["vs_oracle"] is not None]
            ax.plot(xs, ys, marker=".", label=f"{name} (p95 {r['ttft_p95_s']:.1f}s)")
            if "event_at_s" in r:
                ax.axvline(r["event_at_s"], color="grey", linestyle=":")
        ax.set_title(f"{result['scenario']}, {run['replicas']} replicas")
        ax.set_xlabel("arrival time (s)")
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("cached share / oracle's")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


DEFAULTS = SimConfig()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[8, 16, 64])
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    parser.add_argument("--routers", nargs="+", default=list(ROUTERS), choices=ROUTERS)
    parser.add_argument("--requests-per-replica", type=int, default=getattr(DEFAULTS, 'requests_per_replica'))
    parser.add_argument("--kv-blocks", type=int, default=getattr(DEFAULTS, 'kv_blocks'))
    parser.add_argument("--block-size", type=int, default=getattr(DEFAULTS, 'block_size'))
    parser.add_argument("--load", type=float, default=getattr(DEFAULTS, 'load'))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--plot", type=Path, nargs="+", default=None,
                        help="only (re)draw the PNG of these simulate_*.json files")
    args = parser.parse_args(argv)
    if args.plot:
        for path in args.plot:
            print(plot_scenario(json.loads(path.read_text()), path.with_suffix(".png")))
        return 0
    base = SimConfig(requests_per_replica=args.requests_per_replica, kv_blocks=args.kv_blocks,
                     block_size=args.block_size, load=args.load, seed=args.seed)
    command = "python -m benchmarks.simulate_routing " + " ".join(argv if argv is not None else sys.argv[1:])
    for scenario in args.scenarios:
        result = run_scenario(scenario, args.replicas, args.routers, base)
        result["command"] = command.strip()
        for row in summary_rows(result):
            print(row, flush=True)
        if not args.no_write:
            args.out_dir.mkdir(parents=True, exist_ok=True)
            path = args.out_dir / f"simulate_{scenario}.json"
            path.write_text(json.dumps(result, indent=1) + "\n")
            plot_scenario(result, path.with_suffix(".png"))
            print(f"[simulate] wrote {path} and its .png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
