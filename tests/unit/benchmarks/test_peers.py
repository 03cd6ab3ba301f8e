"""The external peer run (benchmarks/peers.py) without vLLM or Ray: prompt rendering, SSE parsing of
OpenAI stream chunks (usage chunk included), aggregation per traffic class, the search fetch against a
stub HTTP server, and the refusal to run a peer while the app answers."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from benchmarks import peers
from benchmarks.peers import (
    PeerRequest,
    ReplayResult,
    StreamAccumulator,
    aggregate,
    build_default_requests,
    context_block,
    fetch_chunks,
    normalize_request,
    parse_sse_data,
    render_prompt,
    replay,
)

MODEL_DIR = peers.DEFAULT_MODEL_DIR


class ChatMLTokenizer:
    """SmolLM2's ChatML template, enough for rendering tests without transformers."""

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        assert tokenize is False
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def request(**kw) -> PeerRequest:
    base = dict(id=0, agent="support", route="/v1/agents/support/answer", collection="support_kb", cls="first",
                topic="t", body={"query": "q?"}, system_prompt="SYS", retrieval_query="q?",
                user_message="Customer question: q?")
    base.update(kw)
    return PeerRequest(**base)


CHUNKS = [
    {"chunk_id": "doc-b#0", "doc_id": "doc-b", "score": 0.9, "text": "  Beta text.\n"},
    {"chunk_id": "doc-a#3", "doc_id": "doc-a", "score": 0.7, "text": "Alpha text."},
]


# -- rendering -------------------------------------------------------------------------------------------

def test_context_block_matches_the_apps_plain_rag_segments():
    from rag.pipeline import chunk_segment_text
    from retrieval.models import Chunk

    assert context_block([]) == ""
    block = context_block(CHUNKS)
    # retrieval order kept, text stripped, the app's header
    assert block == "\n\nContext:\n[doc-b#0]\nBeta text.\n\n[doc-a#3]\nAlpha text.\n\n"
    chunk = Chunk(chunk_id="doc-b#0", doc_id="doc-b", collection="c", position=0, text="  Beta text.\n",
                  content_hash="h")
    assert block == "\n\nContext:\n" + chunk_segment_text(chunk) + "[doc-a#3]\nAlpha text.\n\n"


def test_render_prompt_single_turn_is_chatml_with_context_in_system():
    text = render_prompt(ChatMLTokenizer(), request(chunks=CHUNKS))
    assert text == ("<|im_start|>system\nSYS\n\nContext:\n[doc-b#0]\nBeta text.\n\n[doc-a#3]\nAlpha text.\n\n"
                    "<|im_end|>\n<|im_start|>user\nCustomer question: q?<|im_end|>\n<|im_start|>assistant\n")


def test_render_prompt_follow_up_carries_the_earlier_turn():
    history = [{"role": "user", "content": "first?"}, {"role": "assistant", "content": "answer."}]
    text = render_prompt(ChatMLTokenizer(), request(chunks=[]), history)
    assert text == ("<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nfirst?<|im_end|>\n"
                    "<|im_start|>assistant\nanswer.<|im_end|>\n<|im_start|>user\nCustomer question: q?<|im_end|>\n"
                    "<|im_start|>assistant\n")


@pytest.mark.skipif(not (MODEL_DIR / "tokenizer.json").is_file(), reason="prepared model not present")
def test_rendered_prompt_tokenizes_like_the_apps_plain_prompt_ids():
    from transformers import AutoTokenizer

    from llm.prompt import plain_prompt_ids

    tok = AutoTokenizer.from_pretrained(str(MODEL_DIR))
    req = request(chunks=CHUNKS)
    texts = [f"[{c['chunk_id']}]\n{c['text'].strip()}\n\n" for c in CHUNKS]
    expected = plain_prompt_ids(tok, req.system_prompt, texts, req.user_message)
    assert tok(render_prompt(tok, req), add_special_tokens=False)["input_ids"] == expected


# -- requests --------------------------------------------------------------------------------------------

def test_normalize_request_uses_the_agents_prompts():
    from agents.registry import agent_by_name

    r = normalize_request({"agent": "business", "brief": "coffee box", "class": "rephrased", "topic": "x"}, 3)
    cls = agent_by_name("business")
    assert (r.id, r.cls, r.topic, r.collection) == (3, "rephrased", "x", cls.collection)
    assert r.body == {"brief": "coffee box"} and r.system_prompt == cls.system_prompt
    assert r.user_message == "Brief: coffee box" and "coffee box" in r.retrieval_query
    q = normalize_request({"agent": "support", "query": "hi?", "system_prompt": "S", "user_message": "U"}, 0)
    assert (q.body, q.system_prompt, q.user_message, q.cls) == ({"query": "hi?"}, "S", "U", "first")
    with pytest.raises(ValueError):
        normalize_request({"agent": "support"}, 0)


def test_default_requests_have_every_class_and_follow_ups_point_back(tmp_path: Path):
    traffic = tmp_path / "traffic"
    traffic.mkdir()
    rows = [{"topic": f"t{i}", "first": {"query": f"first {i}?"},
             "rephrased": [{"query": f"other {i}?"}, {"query": f"again {i}?"}], "followups": [f"and {i}?"]}
            for i in range(2)]
    (traffic / "support.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    reqs = build_default_requests(("support",), topics=2, rephrasings=2, followups=1, data_dir=tmp_path)
    assert [r.cls for r in reqs] == ["first"] * 2 + ["rephrased"] * 4 + ["repeat"] * 2 + ["followup"] * 2
    assert [r.id for r in reqs] == list(range(10))
    repeat = reqs[6]
    assert repeat.body == reqs[0].body and repeat.user_message == reqs[0].user_message
    fu = reqs[8]
    assert fu.parent == 0 and fu.conversation == reqs[0].conversation
    assert fu.retrieval_query == "first 0? and 0?" and fu.user_message.endswith("and 0?")
    # the file round-trips
    back = PeerRequest.from_dict(json.loads(json.dumps(fu.to_dict())))
    assert back == fu


def test_requests_from_traffic_plan_link_follow_ups_to_the_previous_turn():
    from benchmarks.peers import requests_from_traffic
    from benchmarks.workloads import TrafficMix, traffic_plan

    mix = TrafficMix(first=0.3, rephrased=0.2, repeat=0.1, followup=0.4)
    plan = traffic_plan(["support", "business"], 12, seed=3, warmup_per_agent=4, mix=mix)
    reqs = requests_from_traffic(plan.warmup, plan.measured)
    assert len(reqs) == len(plan.warmup) + len(plan.measured)
    assert [r.phase for r in reqs] == ["warmup"] * len(plan.warmup) + ["measure"] * len(plan.measured)
    assert [r.cls for r in reqs] == [i.traffic_class for i in [*plan.warmup, *plan.measured]]
    followups = [(r, i) for r, i in zip(reqs, [*plan.warmup, *plan.measured]) if r.cls == "followup"]
    assert followups, "the mix should yield follow-ups for support"
    for r, item in followups:
        parent = reqs[r.parent]
        assert parent.id < r.id and parent.conversation == r.conversation == item.session_id
        assert r.retrieval_query == " ".join([*item.history, item.body["query"]])
    turn_only = requests_from_traffic(plan.warmup, plan.measured, followup_query="turn")
    assert all(r.retrieval_query == r.body["query"] for r in turn_only if r.cls == "followup")
    assert turn_only[0].system_prompt and turn_only[0].user_message


# -- SSE -------------------------------------------------------------------------------------------------

def test_parse_sse_data_lines():
    assert parse_sse_data("") is None
    assert parse_sse_data(": keep-alive") is None
    assert parse_sse_data("event: message") is None
    assert parse_sse_data("data: [DONE]") == "[DONE]"
    assert parse_sse_data('data: {"a": 1}\r\n') == {"a": 1}


def test_stream_accumulator_completion_chunks_and_usage_chunk():
    clock = iter([1.25, 9.0])
    acc = StreamAccumulator(started=1.0, clock=lambda: next(clock))
    lines = [
        'data: {"id":"c","object":"text_completion","choices":[{"index":0,"text":"","finish_reason":null}],"usage":null}',
        "",
        'data: {"id":"c","object":"text_completion","choices":[{"index":0,"text":"Hel","finish_reason":null}],"usage":null}',
        'data: {"id":"c","object":"text_completion","choices":[{"index":0,"text":"lo","finish_reason":"length"}],"usage":null}',
        'data: {"id":"c","object":"text_completion","choices":[],"usage":{"prompt_tokens":1700,"total_tokens":1716,'
        '"completion_tokens":16,"prompt_tokens_details":{"cached_tokens":1664}}}',
        "data: [DONE]",
    ]
    for line in lines:
        acc.feed_line(line)
    assert acc.text == "Hello" and acc.first_text_at == 1.25  # the empty first chunk does not count
    assert (acc.prompt_tokens, acc.completion_tokens, acc.cached_tokens) == (1700, 16, 1664)
    assert acc.done and not acc.error


def test_stream_accumulator_chat_deltas_missing_details_and_errors():
    acc = StreamAccumulator(started=0.0, clock=lambda: 0.5)
    acc.feed({"choices": [{"delta": {"role": "assistant"}}]})
    acc.feed({"choices": [{"delta": {"content": "Hi"}}]})
    acc.feed({"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": None}})
    assert acc.text == "Hi" and acc.first_text_at == 0.5
    assert acc.cached_tokens is None  # server did not report it: not the same as 0
    acc.feed({"error": {"message": "boom", "code": 500}})
    assert acc.error == "boom"


# -- aggregation -----------------------------------------------------------------------------------------

def result(i, cls, ttft, total, prompt=100, cached=0, ok=True, phase="measure", start=0.0, agent="support"):
    return ReplayResult(id=i, agent=agent, cls=cls, topic="t", phase=phase, ok=ok, ttft_ms=ttft if ok else None,
                        total_ms=total, started_s=start, prompt_tokens=prompt if ok else 0,
                        cached_tokens=cached if ok else None, completion_tokens=16 if ok else 0,
                        error="" if ok else "HTTP 500")


def test_aggregate_per_class_excludes_warmup_and_counts_errors():
    results = [
        result(0, "first", 900.0, 1000.0, prompt=1000, cached=0, phase="warmup", start=0.0),
        result(1, "first", 1000.0, 2000.0, prompt=1000, cached=0, start=1.0),
        result(2, "first", 3000.0, 4000.0, prompt=1000, cached=128, start=1.0),
        result(3, "repeat", 100.0, 200.0, prompt=1000, cached=896, start=5.0, agent="documentation"),
        result(4, "repeat", 0, 300.0, ok=False, start=5.0),
        result(5, "rephrased", 500.0, 700.0, prompt=500, cached=None, start=6.0),  # no cached count reported
    ]
    agg = aggregate(results)
    assert agg["requests"] == 5 and agg["errors"] == 1
    assert list(agg["classes"]) == ["first", "rephrased", "repeat"]
    first = agg["classes"]["first"]
    assert (first["requests"], first["errors"]) == (2, 0)
    assert first["ttft_p50_ms"] == 2000.0 and first["ttft_p95_ms"] == 2900.0
    assert first["p50_ms"] == 3000.0 and first["p95_ms"] == 3900.0
    assert first["cached_share"] == 0.064  # 128 / 2000
    assert first["requests_per_s"] == 0.5  # 2 requests over 1.0 s .. 5.0 s
    repeat = agg["classes"]["repeat"]
    assert (repeat["requests"], repeat["errors"], repeat["ttft_p50_ms"], repeat["cached_share"]) == (2, 1, 100.0, 0.896)
    assert agg["classes"]["rephrased"]["cached_share"] is None
    assert agg["cached_share"] == round(1024 / 3000, 4)  # the unreported request is left out of the share
    assert set(agg["agents"]) == {"support", "documentation"}


# -- HTTP: fetch from a stub search route, replay against a stub OpenAI server ---------------------------

class _Stub(BaseHTTPRequestHandler):
    calls: list = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Stub.calls.append((self.path, body))
        if self.path.startswith("/v1/collections/") and self.path.endswith("/search"):
            if "missing" in self.path:
                self.send_response(404)
                self.end_headers()
                self.wfile.write(b'{"error": "collection"}')
                return
            payload = {"results": [{"chunk_id": f"d#{i}", "doc_id": "d", "score": 1.0 - i / 10,
                                    "text": f"{body['query']} {i}", "extra": 1} for i in range(body["top_k"])]}
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif self.path == "/v1/completions":
            assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            prompt_tokens = len(body["prompt"].split())
            for piece in ("A", "B"):
                self.wfile.write(f'data: {json.dumps({"choices": [{"text": piece}]})}\n\n'.encode())
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": 2,
                     "prompt_tokens_details": {"cached_tokens": 1}}
            self.wfile.write(f'data: {json.dumps({"choices": [], "usage": usage})}\n\n'.encode())
            self.wfile.write(b"data: [DONE]\n\n")
        else:
            self.send_response(404)
            self.end_headers()


@pytest.fixture
def stub_url():
    _Stub.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_fetch_chunks_fills_requests_from_the_search_route(stub_url):
    reqs = [request(id=0, retrieval_query="alpha"), request(id=1, collection="documentation", retrieval_query="beta")]
    asyncio.run(fetch_chunks(stub_url, reqs, top_k=3))
    assert ("/v1/collections/support_kb/search", {"query": "alpha", "top_k": 3}) in _Stub.calls
    assert [c["chunk_id"] for c in reqs[1].chunks] == ["d#0", "d#1", "d#2"]
    assert reqs[1].chunks[0] == {"chunk_id": "d#0", "doc_id": "d", "score": 1.0, "text": "beta 0"}
    with pytest.raises(RuntimeError, match="404"):
        asyncio.run(fetch_chunks(stub_url, [request(collection="missing")], top_k=1))


def test_replay_streams_and_follow_ups_carry_the_parents_answer(stub_url):
    reqs = [request(id=0, chunks=CHUNKS), request(id=1, cls="followup", parent=0, user_message="more?")]
    results = asyncio.run(replay(stub_url, "m", reqs, ChatMLTokenizer(), concurrency=2, max_tokens=4))
    assert [r.ok for r in results] == [True, True]
    assert results[0].text == "AB" and results[0].cached_tokens == 1 and results[0].completion_tokens == 2
    assert results[0].ttft_ms is not None and results[0].ttft_ms <= results[0].total_ms
    prompts = [b["prompt"] for p, b in _Stub.calls if p == "/v1/completions"]
    follow = next(p for p in prompts if "more?" in p)
    assert "<|im_start|>assistant\nAB<|im_end|>" in follow  # the parent's streamed answer
    assert all(b["max_tokens"] == 4 and b["temperature"] == 0.0 and b["model"] == "m"
               for p, b in _Stub.calls if p == "/v1/completions")


def test_peer_refuses_while_the_app_answers(stub_url, tmp_path: Path):
    args = peers.parse_args(["--peer", "vllm", "--url", stub_url, "--requests", str(tmp_path / "none.json")])
    with pytest.raises(SystemExit, match="Stop it first"):
        peers.do_peer(args)


def test_module_imports_without_ray_or_vllm():
    import subprocess
    import sys

    code = ("import sys, benchmarks.peers; "
            "print(sorted(m for m in ('ray', 'vllm', 'transformers', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(peers.__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_binding_lines_read_from_ray_session_logs(tmp_path: Path):
    logs = tmp_path / "session_2026" / "logs"
    logs.mkdir(parents=True)
    (logs / "worker-1.out").write_text("noise\nPinnedLLMServer: replica rank 1 -> OpenMP on core 1\n")
    (logs / "worker-1.err").write_text("(EngineCore pid=7) INFO ... \tlocal_rank=0, core ids=[1]\n"
                                       "(EngineCore pid=7) INFO ... \tlocal_rank=0, core ids=[1]\n")
    (logs / "raylet.bin").write_text("core ids=[9]\n")  # not a log file
    assert peers._binding_lines(tmp_path) == ["(EngineCore pid=7) INFO ... \tlocal_rank=0, core ids=[1]",
                                             "PinnedLLMServer: replica rank 1 -> OpenMP on core 1"]
