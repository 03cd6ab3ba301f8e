"""SE-Darwin's loop through the real app (Ray Serve, vLLM, Redis): `generations: n` runs n rounds, each
round's prompt extending the previous round's exact tokens, so vLLM serves the earlier rounds from its
prefix cache."""

from __future__ import annotations

import json
import urllib.request
import uuid

import pytest

from testbed.app_process import http_json

pytestmark = pytest.mark.e2e

EVOLVE = "/v1/agents/se-darwin/evolve"
BODY = {"task": "make fibonacci faster for large n",
        "candidate": "def fib(n):\n    return n if n < 2 else fib(n-1) + fib(n-2)\n",
        "max_tokens": 24, "top_k": 3}  # round 1 well under sessions.max_history_tokens: round 2 extends it


def evolve(base_url: str, **extra) -> dict:
    status, body = http_json("POST", f"{base_url}{EVOLVE}", {**BODY, **extra})
    assert status == 200, body
    return body


def test_two_generations_the_second_extends_the_first_and_reuses_its_kv(base_url):
    sid = f"e2e-darwin-{uuid.uuid4().hex[:12]}"
    salt = f"darwin-{uuid.uuid4().hex[:8]}"  # a KV namespace of its own: round 1 finds nothing cached
    body = evolve(base_url, generations=2, session_id=sid, cache_salt=salt)
    output = body["output"]
    assert {"operators", "variants", "generations"} <= set(output)
    first, second = output["generations"]
    assert (first["generation"], second["generation"]) == (1, 2)
    assert first["candidate"].strip() and second["candidate"].strip()
    assert not second["history_rebuilt"]
    # The second round's prompt is the first round's prompt and output plus a new turn: its KV is reused.
    assert second["usage"]["prefix_cached_tokens"] > 0
    assert second["usage"]["prefix_cached_tokens"] >= first["usage"]["prompt_tokens"] - 256
    # The answer's usage is the sum over the rounds.
    for key in ("prompt_tokens", "prefix_cached_tokens", "completion_tokens"):
        assert body["usage"][key] == first["usage"][key] + second["usage"][key]
    assert 0 < body["latency_ms"]["ttft"] <= body["latency_ms"]["total"]
    # Each round is a turn of the session, token for token.
    assert (body["session"]["first_turn"], body["session"]["turn"]) == (0, 1)
    status, session = http_json("GET", f"{base_url}/v1/sessions/{sid}")
    assert status == 200, session
    turn1, turn2 = session["turns"]
    history = turn1["prompt_token_ids"] + turn1["response_token_ids"]
    # The whole history, or all but a final end-of-turn token (the template's turn separator puts it back).
    assert (turn2["prompt_token_ids"][: len(history)] == history
            or turn2["prompt_token_ids"][: len(history) - 1] == history[:-1])
    assert second["usage"]["prompt_tokens"] == len(turn2["prompt_token_ids"])


def test_generations_without_a_session_reuse_kv_and_store_nothing(base_url):
    body = evolve(base_url, generations=2, cache_salt=f"darwin-{uuid.uuid4().hex[:8]}")
    first, second = body["output"]["generations"]
    assert second["usage"]["prefix_cached_tokens"] > 0
    assert second["usage"]["prefix_cached_tokens"] >= first["usage"]["prompt_tokens"] - 256
    assert "session" not in body


def test_generations_stream_each_round_then_the_answer(base_url):
    request = urllib.request.Request(f"{base_url}{EVOLVE}", method="POST",
                                     data=json.dumps({**BODY, "generations": 2, "stream": True}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in response.read().decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    payloads = [json.loads(e) for e in events[:-1]]
    final = payloads[-1]
    assert [g["generation"] for g in final["output"]["generations"]] == [1, 2]
    assert {p["generation"] for p in payloads[:-1] if "delta" in p} == {1, 2}
    assert [p["generation"] for p in payloads[:-1] if "result" in p] == [1, 2]


@pytest.mark.parametrize("generations", [0, 9, "many", "2", True])  # strict: "2" and true are no int
def test_generations_outside_1_to_8_are_refused_naming_the_field(base_url, generations):
    status, answer = http_json("POST", f"{base_url}{EVOLVE}", {**BODY, "generations": generations})
    assert status == 422, answer
    assert answer["error"]["field"] == "generations"
