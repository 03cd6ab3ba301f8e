"""The six agents through HTTP against the real app: contract shape, caching, baseline, errors, freshness."""

from __future__ import annotations

import json
import urllib.request
import uuid

import pytest

from testbed.app_process import http_json

pytestmark = pytest.mark.e2e

AGENT_CALLS = {
    "support": ("/v1/agents/support/answer", {"query": "How do I reset two-factor authentication?"}),
    "documentation": ("/v1/agents/documentation/lookup", {"query": "How do I schedule a pipeline with cron syntax?"}),
    "business": ("/v1/agents/business/generate", {"brief": "A subscription box for indoor plant lovers"}),
    "qa": ("/v1/agents/qa/generate-tests", {"code": "def add(a, b):\n    return a + b\n", "test_type": "unit"}),
    "code-review": ("/v1/agents/code-review/review",
                    {"code": "def f(x=[]):\n    try:\n        return eval(x)\n    except:\n        pass\n",
                     "language": "python"}),
    "se-darwin": ("/v1/agents/se-darwin/evolve",
                  {"task": "make fibonacci faster", "candidate": "def fib(n):\n    return n if n < 2 else fib(n-1) + fib(n-2)\n"}),
}


def call(base_url: str, agent: str, **extra) -> tuple[int, dict]:
    path, body = AGENT_CALLS[agent]
    return http_json("POST", f"{base_url}{path}", {**body, "max_tokens": 12, **extra})


def assert_contract(body: dict, agent: str) -> None:
    assert body["agent"] == agent
    assert body["output"]
    assert body["sources"] and all(isinstance(s, str) and "#" in s for s in body["sources"])
    assert set(body["usage"]) == {"prompt_tokens", "prefix_cached_tokens", "completion_tokens"}
    assert body["usage"]["prompt_tokens"] > 0 and body["usage"]["completion_tokens"] > 0
    assert set(body["cache"]) == {"hits", "misses", "hit_rate"}
    assert set(body["latency_ms"]) == {"retrieve", "tokens", "ttft", "generate", "total"}
    assert 0 < body["latency_ms"]["ttft"] <= body["latency_ms"]["total"]
    # Issue 16: always said, whether any of the output was filled in rather than generated.
    assert isinstance(body["fallback"], bool) and isinstance(body["warnings"], list)
    assert body["fallback"] == bool(body["warnings"])


@pytest.mark.parametrize("agent", list(AGENT_CALLS))
def test_agent_answers_and_repeat_hits_token_and_prefix_caches(base_url, agent):
    status, first = call(base_url, agent)
    assert status == 200, first
    assert_contract(first, agent)
    status, second = call(base_url, agent)
    assert status == 200, second
    assert_contract(second, agent)
    assert second["sources"] == first["sources"]
    # Every source chunk of the repeat comes from the token cache, and vLLM reuses the context's KV blocks.
    assert second["cache"]["hits"] == len(second["sources"]) and second["cache"]["misses"] == 0
    assert second["cache"]["hit_rate"] == 1.0
    assert second["usage"]["prefix_cached_tokens"] > 0


@pytest.mark.parametrize("agent", ["support", "code-review"])
def test_use_cache_false_is_plain_rag_with_the_prefix_cache_on(base_url, agent):
    salt = f"plain-{uuid.uuid4().hex[:8]}"  # a KV namespace of its own: nothing sent before can be reused
    status, first = call(base_url, agent, use_cache=False, cache_salt=salt)
    assert status == 200, first
    assert_contract(first, agent)
    assert first["cache"] == {"hits": 0, "misses": 0, "hit_rate": 0.0}  # no token cache: tokenized per request
    assert first["usage"]["prefix_cached_tokens"] == 0
    status, again = call(base_url, agent, use_cache=False, cache_salt=salt)
    assert status == 200, again
    # vLLM's prefix cache is on, as plain RAG on vLLM runs: the verbatim repeat reuses the first one's KV.
    assert again["usage"]["prefix_cached_tokens"] > 0


def test_prefix_cache_false_in_plain_mode_reuses_no_kv(base_url):
    call(base_url, "support", use_cache=False)
    status, body = call(base_url, "support", use_cache=False, prefix_cache=False)
    assert status == 200, body
    assert body["usage"]["prefix_cached_tokens"] == 0  # a fresh cache salt per request


def test_prefix_cache_false_keeps_token_cache_but_not_kv_reuse(base_url):
    call(base_url, "documentation")
    status, body = call(base_url, "documentation", prefix_cache=False)
    assert status == 200
    assert body["cache"]["hits"] == len(body["sources"])
    assert body["usage"]["prefix_cached_tokens"] == 0


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [("/v1/agents/support/answer", {}, "query"),
     ("/v1/agents/support/answer", {"query": ""}, "query"),
     ("/v1/agents/support/answer", {"query": "x" * 5000}, "query"),
     ("/v1/agents/support/answer", {"query": "ok", "top_k": 0}, "top_k"),
     ("/v1/agents/support/answer", {"query": "ok", "max_tokens": 100000}, "max_tokens"),
     ("/v1/agents/support/answer", {"query": "ok", "surprise": 1}, "surprise"),
     ("/v1/agents/qa/generate-tests", {"code": "def f(): pass", "test_type": "telepathy"}, "test_type"),
     ("/v1/agents/code-review/review", {"code": "x = 1"}, "language"),
     ("/v1/agents/se-darwin/evolve", {"task": "t"}, "candidate"),
     ("/v1/agents/business/generate", {"brief": 42}, "brief")],
)
def test_bad_agent_bodies_answer_4xx_naming_the_field(base_url, path, body, field):
    status, answer = http_json("POST", f"{base_url}{path}", body)
    assert 400 <= status < 500
    assert answer["error"]["field"] == field


def test_stream_answers_server_sent_events(base_url):
    path, body = AGENT_CALLS["support"]
    request = urllib.request.Request(f"{base_url}{path}", method="POST",
                                     data=json.dumps({**body, "max_tokens": 8, "stream": True}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in response.read().decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    final = json.loads(events[-2])
    assert_contract(final, "support")
    deltas = [json.loads(e)["delta"] for e in events[:-2]]
    assert deltas and "".join(deltas).strip()


def test_collections_are_listed_with_counts(base_url):
    status, body = http_json("GET", f"{base_url}/v1/collections")
    assert status == 200
    names = {c["name"]: c for c in body["collections"]}
    for name in ("support_kb", "documentation", "business_templates", "test_templates", "code_patterns",
                 "darwin_operators"):
        assert names[name]["documents"] >= 15 and names[name]["chunks"] >= names[name]["documents"]
    status, one = http_json("GET", f"{base_url}/v1/collections/support_kb")
    assert status == 200 and one["name"] == "support_kb"
    status, missing = http_json("GET", f"{base_url}/v1/collections/no_such_collection")
    assert status == 404 and missing["error"]["field"] == "name"


def test_updated_document_is_served_with_its_new_tokens(base_url):
    marker = uuid.uuid4().hex[:8]
    doc_id = f"e2e-quantum-router-{marker}"
    query = f"How do I recalibrate the quantum router model QR-{marker}?"

    def put(text: str) -> dict:
        status, body = http_json("PUT", f"{base_url}/v1/collections/support_kb/documents",
                                 {"documents": [{"id": doc_id, "text": text, "metadata": {"title": "QR router"}}]})
        assert status == 200, body
        return body

    first_version = put(f"# Quantum router QR-{marker}\n\nTo recalibrate the quantum router QR-{marker}, "
                        "hold the reset button for ten seconds and wait for the blue light.")
    status, first = http_json("POST", f"{base_url}/v1/agents/support/answer", {"query": query, "max_tokens": 8})
    assert status == 200
    assert any(s.startswith(doc_id) for s in first["sources"])

    second_version = put(f"# Quantum router QR-{marker}\n\nTo recalibrate the quantum router QR-{marker}, "
                         "open the admin console, choose Calibration and press Start.")
    assert second_version["version"] > first_version["version"]
    status, second = http_json("POST", f"{base_url}/v1/agents/support/answer", {"query": query, "max_tokens": 8})
    assert status == 200
    assert any(s.startswith(doc_id) for s in second["sources"])
    # The changed chunk is new content: it cannot be a cache hit, so it was tokenized afresh.
    assert second["cache"]["misses"] >= 1

    status, _ = http_json("DELETE", f"{base_url}/v1/collections/support_kb/documents/{doc_id}")
    assert status == 200
    status, third = http_json("POST", f"{base_url}/v1/agents/support/answer", {"query": query, "max_tokens": 8})
    assert status == 200
    assert not any(s.startswith(doc_id) for s in third["sources"])
    status, gone = http_json("DELETE", f"{base_url}/v1/collections/support_kb/documents/{doc_id}")
    assert status == 404 and gone["error"]["field"] == "doc_id"


def test_bad_documents_answer_4xx_naming_the_field(base_url):
    status, body = http_json("PUT", f"{base_url}/v1/collections/support_kb/documents",
                             {"documents": [{"id": "ok-doc", "text": ""}]})
    assert 400 <= status < 500 and "text" in body["error"]["field"]
    status, body = http_json("PUT", f"{base_url}/v1/collections/support_kb/documents",
                             {"documents": [{"id": "bad id with spaces", "text": "hello"}]})
    assert 400 <= status < 500 and "id" in body["error"]["field"]
    status, body = http_json("PUT", f"{base_url}/v1/collections/Bad%20Name/documents",
                             {"documents": [{"id": "x", "text": "hello"}]})
    assert 400 <= status < 500 and body["error"]["field"] == "name"


def test_cache_stats_warmup_and_invalidate(base_url):
    call(base_url, "support")
    status, stats = http_json("GET", f"{base_url}/v1/cache/stats")
    assert status == 200
    support = stats["agents"]["support"]
    assert support["hits"] + support["misses"] > 0 and support["bytes"] > 0
    status, body = http_json("POST", f"{base_url}/v1/cache/invalidate", {"collection": "support_kb"})
    assert status == 200
    status, after = call(base_url, "support")
    assert status == 200 and after["cache"]["misses"] == len(after["sources"])
    status, body = http_json("POST", f"{base_url}/v1/cache/warmup", {"collection": "support_kb"})
    assert status == 200 and body["replicas"] and body["replicas"][0]["state"] == "done"
    status, warm = call(base_url, "support")
    assert warm["cache"]["hits"] == len(warm["sources"])
    status, body = http_json("POST", f"{base_url}/v1/cache/warmup", {"collection": "nope_nope"})
    assert status == 404 and body["error"]["field"] == "collection"
