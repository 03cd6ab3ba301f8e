"""Request modes, the search route and conversations through the real app (Ray Serve, vLLM, Redis)."""

from __future__ import annotations

import uuid

import pytest

from testbed.app_process import http_json

pytestmark = pytest.mark.e2e

SUPPORT = "/v1/agents/support/answer"
DOCS = "/v1/agents/documentation/lookup"


def ask(base_url: str, path: str, query: str, **extra) -> dict:
    status, body = http_json("POST", f"{base_url}{path}", {"query": query, "max_tokens": 12, **extra})
    assert status == 200, body
    return body


def test_cache_salt_separates_kv_and_each_salt_reuses_its_own(base_url):
    query = "How do I export my invoices as PDF?"
    a, b = f"tenant-a-{uuid.uuid4().hex[:8]}", f"tenant-b-{uuid.uuid4().hex[:8]}"
    first = ask(base_url, SUPPORT, query, cache_salt=a)
    same = ask(base_url, SUPPORT, query, cache_salt=a)
    other = ask(base_url, SUPPORT, query, cache_salt=b)
    assert same["usage"]["prefix_cached_tokens"] > 0
    assert first["usage"]["prefix_cached_tokens"] == 0 and other["usage"]["prefix_cached_tokens"] == 0


def test_modes_send_what_they_claim(base_url):
    salt = f"modes-{uuid.uuid4().hex[:8]}"
    query = "What does the API rate limit reset header mean?"
    warm = ask(base_url, SUPPORT, query, cache_salt=salt)  # cached path: the token cache now holds the chunks
    full = ask(base_url, SUPPORT, query, cache_salt=salt)
    token_only = ask(base_url, SUPPORT, query, prefix_cache=False)
    plain = ask(base_url, SUPPORT, query, use_cache=False, cache_salt=salt)
    no_reuse = ask(base_url, SUPPORT, query, use_cache=False, prefix_cache=False)
    # full: chunks from the token cache, the same context in the same order as before, KV reused.
    assert full["cache"]["misses"] == 0 and full["usage"]["prefix_cached_tokens"] > 0
    assert full["sources"] == warm["sources"]
    # token_cache: token cache on, a fresh salt, so no KV reuse.
    assert token_only["cache"]["hits"] == len(token_only["sources"]) and token_only["usage"]["prefix_cached_tokens"] == 0
    # plain_rag: no token cache (tokenized per request), retrieval order, same chunk set.
    assert plain["cache"] == {"hits": 0, "misses": 0, "hit_rate": 0.0}
    assert set(plain["sources"]) <= set(full["sources"])  # full may carry a reused context's extra chunks
    status, ranked = http_json("POST", f"{base_url}/v1/collections/support_kb/search", {"query": query, "top_k": 5})
    assert status == 200
    assert plain["sources"] == [r["chunk_id"] for r in ranked["results"]]
    # no_reuse: neither cache.
    assert no_reuse["cache"]["hits"] == 0 and no_reuse["usage"]["prefix_cached_tokens"] == 0


def test_search_returns_ranked_chunks(base_url):
    status, body = http_json("POST", f"{base_url}/v1/collections/documentation/search",
                             {"query": "cron syntax for scheduled pipelines", "top_k": 3})
    assert status == 200, body
    results = body["results"]
    assert len(results) == 3
    assert set(results[0]) == {"chunk_id", "doc_id", "score", "text"}
    assert all(r["chunk_id"].startswith(r["doc_id"] + "#") and r["text"] for r in results)
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize(("path", "body", "status", "field"), [
    ("/v1/collections/no_such_collection/search", {"query": "x"}, 404, "name"),
    ("/v1/collections/documentation/search", {"query": ""}, 422, "query"),
    ("/v1/collections/documentation/search", {"query": "x", "top_k": 0}, 422, "top_k"),
    ("/v1/collections/documentation/search", {"query": "x", "extra": 1}, 422, "extra"),
    (SUPPORT, {"query": "x", "cache_salt": "no spaces allowed"}, 422, "cache_salt"),
    (SUPPORT, {"query": "x", "session_id": "bad id!"}, 422, "session_id"),
    ("/v1/completions", {"prompt": "hi", "cache_salt": ""}, 400, "cache_salt"),
])
def test_bad_search_salt_and_session_fields_are_refused_naming_the_field(base_url, path, body, status, field):
    code, answer = http_json("POST", f"{base_url}{path}", body)
    assert code == status, answer
    if field is not None:
        assert answer["error"]["field"] == field


def test_completions_accept_a_cache_salt(base_url):
    body = {"prompt": "The capital of France is " * 40, "max_tokens": 4, "temperature": 0,
            "cache_salt": f"c-{uuid.uuid4().hex[:8]}"}
    status, first = http_json("POST", f"{base_url}/v1/completions", body)
    status2, second = http_json("POST", f"{base_url}/v1/completions", body)
    assert status == status2 == 200
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] > 0


def test_session_follow_up_extends_the_previous_turn_token_for_token(base_url):
    sid = f"e2e-{uuid.uuid4().hex[:12]}"
    first = ask(base_url, DOCS, "How do I schedule a pipeline with cron syntax?", session_id=sid)
    second = ask(base_url, DOCS, "Can I use a time zone other than UTC there?", session_id=sid)
    assert first["session"]["turn"] == 0 and second["session"]["turn"] == 1
    status, session = http_json("GET", f"{base_url}/v1/sessions/{sid}")
    assert status == 200, session
    assert session["agent"] == "documentation" and len(session["turns"]) == 2
    turn1, turn2 = session["turns"]
    history = turn1["prompt_token_ids"] + turn1["response_token_ids"]
    # The whole history, or all but a final end-of-turn token (the template's turn separator puts it back).
    assert (turn2["prompt_token_ids"][: len(history)] == history
            or turn2["prompt_token_ids"][: len(history) - 1] == history[:-1])
    assert second["usage"]["prompt_tokens"] == len(turn2["prompt_token_ids"])
    # The conversation so far is served from vLLM's prefix cache (whole KV blocks of it).
    assert second["usage"]["prefix_cached_tokens"] >= len(turn1["prompt_token_ids"]) - 256


def test_session_errors_name_the_field_and_delete_ends_it(base_url):
    sid = f"e2e-{uuid.uuid4().hex[:12]}"
    ask(base_url, SUPPORT, "How do I reset two-factor authentication?", session_id=sid)
    status, wrong_agent = http_json("POST", f"{base_url}{DOCS}", {"query": "x", "session_id": sid, "max_tokens": 4})
    assert status == 400 and wrong_agent["error"]["field"] == "session_id"
    status, gone = http_json("GET", f"{base_url}/v1/sessions/never-{sid}")
    assert status == 404 and gone["error"]["field"] == "session_id"
    status, _ = http_json("DELETE", f"{base_url}/v1/sessions/{sid}")
    assert status == 200
    status, after = http_json("GET", f"{base_url}/v1/sessions/{sid}")
    assert status == 404 and after["error"]["field"] == "session_id"
    status, bad = http_json("GET", f"{base_url}/v1/sessions/bad%20id")
    assert 400 <= status < 500 and bad["error"]["field"] == "session_id"
