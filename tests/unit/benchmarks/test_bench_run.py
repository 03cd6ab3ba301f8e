"""The benchmark harness: mode fields and salts, the schedule, and a whole run against a fake app (httpx
MockTransport): DESIGN.md's output shape, what each mode sent, the warm-up identical in every mode, the
order of a conversation's turns."""

import json
import threading
import time
from collections import Counter, defaultdict

import httpx
import pytest

from benchmarks.contract import (BASELINES, MODES, SALT_PATTERN, mode_fields, mode_salt, new_run_id,
                                 session_prefix)
from benchmarks.run import main, request_body, schedule
from benchmarks.workloads import AGENT_SPECS, TRAFFIC_CLASSES, traffic_plan, warmup_sequence

ROUTE_AGENT = {spec.path: name for name, spec in AGENT_SPECS.items()}
MODE_KNOBS = ("use_cache", "prefix_cache", "cache_salt", "session_id", "max_tokens", "temperature")


# -- mode fields, salts, session prefixes ----------------------------------------------------------------

def test_salts_are_constant_per_mode_and_distinct_between_modes_and_runs():
    run = "20260101T000000000Z"
    for mode in MODES:
        assert mode_fields(mode, run) == mode_fields(mode, run)  # constant within a run
    salts = {m: mode_fields(m, run).get("cache_salt") for m in MODES}
    assert salts == {"plain_rag": f"bench-plain_rag-{run}", "no_reuse": None, "token_cache": None,
                     "full": f"bench-full-{run}"}
    assert salts["plain_rag"] != salts["full"]
    assert all(SALT_PATTERN.match(s) for s in salts.values() if s)
    # The modes without a salt never reuse KV: the server salts each of their requests afresh.
    assert mode_fields("no_reuse", run)["prefix_cache"] is False
    assert mode_fields("token_cache", run)["prefix_cache"] is False
    assert [mode_fields(m, run)["use_cache"] for m in MODES] == [False, False, True, True]
    # Another run, other salts; another tag (Locust), other salts.
    assert mode_salt("full", "other") != mode_salt("full", run) != mode_salt("full", run, "locust")
    prefixes = {session_prefix(m, run) for m in MODES}
    assert len(prefixes) == len(MODES) and all(SALT_PATTERN.match(p) for p in prefixes)
    with pytest.raises(ValueError):
        mode_salt("full", "bad run id!")
    assert SALT_PATTERN.match(new_run_id()) and new_run_id(0) == "19700101T000000000Z"
    assert set(BASELINES) == set(MODES)


def test_request_body_per_mode_only_differs_in_mode_fields_and_session_prefix():
    items = traffic_plan(["support"], 30, seed=2).measured
    followup = next(i for i in items if i.traffic_class == "followup")
    bodies = {m: request_body(followup, m, "r1", 8) for m in MODES}
    for mode, body in bodies.items():
        assert body["session_id"] == f"bench-{mode}-r1.{followup.session_id}"
        assert body["max_tokens"] == 8 and body["temperature"] == 0.0
        assert {k: v for k, v in body.items() if k not in MODE_KNOBS} == followup.body
    assert bodies["plain_rag"]["use_cache"] is False and bodies["plain_rag"]["cache_salt"] == "bench-plain_rag-r1"
    assert "cache_salt" not in bodies["no_reuse"] and bodies["no_reuse"]["prefix_cache"] is False


def test_schedule_sends_each_item_once_per_mode_rotating_per_agent():
    agents = ["support", "documentation", "business", "qa", "code-review", "se-darwin"]
    items = traffic_plan(agents, 8, seed=0).measured
    jobs = schedule(items, MODES)
    assert [item for item, _ in jobs] == items
    assert all(sorted(order) == sorted(MODES) for _, order in jobs)
    for agent in agents:  # 8 items per agent, 4 modes: each mode first twice within every agent
        firsts = Counter(order[0] for item, order in jobs if item.agent == agent)
        assert firsts == {m: 2 for m in MODES}


def test_warmup_is_the_same_sequence_in_every_mode():
    agents = ["support", "qa"]
    warm = warmup_sequence(agents, 6, seed=3)
    assert [i.to_dict() for i in warm] == [i.to_dict() for i in traffic_plan(agents, 5, 3, 6).warmup]
    per_mode = defaultdict(list)
    for item, order in schedule(warm, MODES):
        for mode in order:
            body = request_body(item, mode, "r", 16)
            sid = body.pop("session_id", None)
            if sid is not None:
                assert sid.startswith(session_prefix(mode, "r"))
                body["session_id"] = sid[len(session_prefix(mode, "r")):]
            per_mode[mode].append({k: v for k, v in body.items() if k not in mode_fields(mode, "r")})
    assert len(per_mode) == len(MODES)
    assert all(per_mode[m] == per_mode["plain_rag"] for m in MODES)
    assert len(per_mode["full"]) == len(warm)


# -- a whole run against a fake app ---------------------------------------------------------------------------

def _mode_of(body):
    if body.get("prefix_cache") is False:
        return "token_cache" if body.get("use_cache") else "no_reuse"
    return "full" if body.get("use_cache", True) else "plain_rag"


class FakeApp:
    """Answers the routes the harness uses. KV reuse is simulated per salt: a prompt (the body's text
    fields) seen before under the same salt is cached; a session's later turns find the earlier turns
    cached. Records every request; ``reject`` maps a body field to the HTTP status it gets."""

    def __init__(self, reject=None, delay_s=0.0):
        self.lock = threading.Lock()
        self.requests = []  # (method, path, body)
        self.kv = set()
        self.sessions = defaultdict(list)  # session id -> turns answered (times)
        self.in_flight = set()
        self.order_violations = []
        self.reject = reject or {}
        self.delay_s = delay_s

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        with self.lock:
            self.requests.append((request.method, request.url.path, body))
        path = request.url.path
        if path == "/healthz":
            return httpx.Response(200, json={"status": "ok", "model": "fake-model", "deployments": {}})
        if path == "/v1/cache/stats":
            return httpx.Response(200, json={"agents": {"support": {"bytes": 1000, "entries": 3, "tiers": []}}})
        if path in ("/v1/cache/invalidate", "/v1/cache/warmup"):
            return httpx.Response(200, json={"replicas": [{"state": "done"}]})
        if request.method == "DELETE":
            return httpx.Response(200, json={})
        agent = ROUTE_AGENT[path]
        for field, status in self.reject.items():
            if field in body:
                return httpx.Response(status, json={"detail": f"{field} not allowed"})
        sid = body.get("session_id")
        with self.lock:
            if sid and sid in self.in_flight:
                self.order_violations.append(sid)
            if sid:
                self.in_flight.add(sid)
        time.sleep(self.delay_s)
        mode = _mode_of(body)
        text = json.dumps({k: v for k, v in body.items() if k not in MODE_KNOBS}, sort_keys=True)
        salt = body.get("cache_salt", "") if body.get("prefix_cache", True) else object()
        with self.lock:
            history = len(self.sessions[sid]) if sid else 0
            cached = 900 if (salt, text) in self.kv else 0
            if history and body.get("prefix_cache", True):
                cached = max(cached, 1000)
            self.kv.add((salt, text))
            if sid:
                self.sessions[sid].append(time.monotonic())
                self.in_flight.discard(sid)
        prompt = 1000 + 500 * history
        ttft = {"plain_rag": 2000.0, "no_reuse": 3000.0, "token_cache": 2900.0, "full": 1900.0}[mode] - cached
        hits = 5 if body.get("use_cache", True) else 0
        return httpx.Response(200, json={
            "agent": agent, "output": "ok", "sources": ["doc#0"],
            "usage": {"prompt_tokens": prompt, "prefix_cached_tokens": cached, "completion_tokens": 4},
            "cache": {"hits": hits, "misses": 0, "hit_rate": 1.0 if hits else 0.0},
            "latency_ms": {"retrieve": 5.0, "tokens": 1.0, "ttft": ttft, "generate": 50.0, "total": ttft + 50.0}})

    def agent_bodies(self):
        return [b for m, p, b in self.requests if p in ROUTE_AGENT]


def _run(tmp_path, app, *extra):
    argv = ["--url", "http://fake", "--agents", "support,qa", "--requests-per-agent", "8", "--warmup-per-agent", "4",
            "--max-tokens", "4", "--run-id", "r1", "--out", str(tmp_path / "latest.json"), "--no-plots", *extra]
    return main(argv, log=lambda _: None, transport=httpx.MockTransport(app))


def test_run_writes_the_design_shape_per_mode_agent_and_class(tmp_path):
    app = FakeApp()
    result = _run(tmp_path, app, "--cold-start-requests", "2")
    assert json.loads((tmp_path / "latest.json").read_text())["modes"].keys() == result["modes"].keys()
    for key in ("modes", "ttft_reduction_p50", "latency_reduction_p50", "ttft_reduction_p50_vs_no_reuse", "agents",
                "machine", "workload", "command", "baselines", "class_reductions", "cold_start", "memory"):
        assert key in result, key
    assert list(result["modes"]) == list(MODES)
    for mode, entry in result["modes"].items():
        for key in ("ttft_p50_ms", "ttft_p95_ms", "p50_ms", "p95_ms", "requests", "errors", "token_cache_hit_rate",
                    "prefix_cache_hit_rate"):
            assert key in entry and all(key in entry["classes"][c] for c in TRAFFIC_CLASSES)
        assert entry["requests"] == 16 and entry["errors"] == 0
        assert sum(entry["classes"][c]["requests"] for c in TRAFFIC_CLASSES) == 16
    assert set(result["agents"]) == {"support", "qa"}
    assert set(result["agents"]["qa"]["modes"]) == set(MODES)
    # The fake caches nothing for no_reuse/token_cache and repeats for the salted modes.
    assert result["modes"]["no_reuse"]["prefix_cache_hit_rate"] == 0.0
    assert result["modes"]["full"]["classes"]["repeat"]["prefix_cache_hit_rate"] > 0.5
    assert result["ttft_reduction_p50"] is not None and result["ttft_reduction_p50_vs_no_reuse"] is not None
    assert result["baselines"] == BASELINES
    workload = result["workload"]
    assert workload["mix"]["configured"] == {"first": 0.2, "rephrased": 0.4, "repeat": 0.2, "followup": 0.2}
    assert sum(workload["mix"]["measured"].values()) == pytest.approx(1.0)
    assert workload["salts"] == {"plain_rag": "bench-plain_rag-r1", "no_reuse": None, "token_cache": None,
                                 "full": "bench-full-r1"}
    assert result["command"].startswith("python -m benchmarks.run --url http://fake")
    assert result["warmup"] == {"requests": 8 * 4, "errors": 0, "per_mode": {m: 8 for m in MODES}}
    assert result["cold_start"]["salt"] == "bench-cold-r1" and result["cold_start"]["agents"]["qa"]["requests"] == 2
    assert len(result["samples"]) == 64 and len(result["warmup_samples"]) == 32


def test_run_sends_each_mode_its_own_salt_and_sessions_and_the_same_warmup(tmp_path):
    app = FakeApp()
    _run(tmp_path, app, "--cold-start-requests", "2")
    bodies = app.agent_bodies()
    probes = [b for b in bodies if b["max_tokens"] == 1]
    assert len(probes) == len(MODES) and all(b["cache_salt"] == "bench-probe-r1" for b in probes if "cache_salt" in b)
    cold = [b for b in bodies if b.get("cache_salt") == "bench-cold-r1"]
    assert len(cold) == 4 and all(b["use_cache"] is True for b in cold)
    sent = [b for b in bodies if b["max_tokens"] == 4 and b.get("cache_salt") != "bench-cold-r1"]
    assert len(sent) == (8 + 4) * 2 * len(MODES)
    by_mode = defaultdict(list)
    for b in sent:
        by_mode[_mode_of(b)].append(b)
    salts = {m: {b.get("cache_salt") for b in bs} for m, bs in by_mode.items()}
    assert salts == {"plain_rag": {"bench-plain_rag-r1"}, "no_reuse": {None}, "token_cache": {None},
                     "full": {"bench-full-r1"}}
    for mode, bs in by_mode.items():
        sids = {b["session_id"] for b in bs if "session_id" in b}
        assert sids and all(s.startswith(f"bench-{mode}-r1.") for s in sids)
    # The warm-up: the first 8 items (4 per agent) in every mode, the same bodies but for the mode's fields.
    warm = warmup_sequence(["support", "qa"], 4, seed=0)

    def strip(b, mode):
        out = {k: v for k, v in b.items() if k not in MODE_KNOBS}
        if "session_id" in b:
            out["session_id"] = b["session_id"][len(session_prefix(mode, "r1")):]
        return out

    expected = [{**i.body, **({"session_id": i.session_id} if i.session_id else {})} for i in warm]
    for mode in MODES:
        assert [strip(b, mode) for b in by_mode[mode][:len(warm)]] == expected


def test_cold_start_zero_skips_it(tmp_path):
    app = FakeApp()
    result = _run(tmp_path, app, "--cold-start-requests", "0")
    assert result["cold_start"] == {"skipped": True} and result["cold_start_samples"] == []
    assert not [p for _, p, _ in app.requests if p in ("/v1/cache/invalidate", "/v1/cache/warmup")]


def test_optional_modes_rejected_are_unavailable_required_ones_abort(tmp_path):
    app = FakeApp(reject={"prefix_cache": 422})
    result = _run(tmp_path, app, "--cold-start-requests", "0")
    assert result["modes"]["no_reuse"]["available"] is False and "HTTP 422" in result["modes"]["no_reuse"]["reason"]
    assert result["modes"]["token_cache"]["available"] is False
    assert result["modes"]["full"]["requests"] == 16 and result["modes"]["full"]["errors"] == 0
    with pytest.raises(SystemExit, match="required modes"):
        _run(tmp_path, FakeApp(reject={"cache_salt": 422}), "--cold-start-requests", "0")


def test_concurrency_keeps_a_conversations_turns_in_order(tmp_path):
    app = FakeApp(delay_s=0.005)
    result = _run(tmp_path, app, "--cold-start-requests", "0", "--concurrency", "4")
    assert app.order_violations == []
    assert result["modes"]["full"]["errors"] == 0
    # Every follow-up found its earlier turns answered (the fake caches a session's history).
    followups = [s for s in result["samples"] if s["traffic_class"] == "followup" and s["mode"] == "full"]
    assert followups and all(s["prefix_cached_tokens"] >= 1000 for s in followups)
    assert result["modes"]["full"]["classes"]["followup"]["history_cached_share"] is not None


def test_bad_arguments_are_refused(tmp_path):
    for argv in (["--modes", "full,no_reuse"], ["--modes", "plain_rag,full,baseline"], ["--run-id", "a b"],
                 ["--mix", "first=x"], ["--requests-per-agent", "0"]):
        with pytest.raises(SystemExit):
            main(argv, log=lambda _: None, transport=httpx.MockTransport(FakeApp()))
