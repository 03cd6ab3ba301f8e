"""Issue 16 through the real app: strict body types, 4xx bodies naming the field or path parameter, the
body limit for chunked uploads (no Content-Length), and the ``fallback`` flag on agent answers.

The same rules are unit-tested without Ray in ``tests/unit/deployments/test_gateway_http.py``; these tests
show they hold behind Serve's proxy, which forwards a chunked body to the gateway replica as it arrives.
"""

from __future__ import annotations

import json
import select
import socket
import time

import pytest

from testbed.app_process import http_json

pytestmark = pytest.mark.e2e

SUPPORT = "/v1/agents/support/answer"
BUSINESS = "/v1/agents/business/generate"
SEARCH = "/v1/collections/support_kb/search"
LIMIT = 16 << 20  # deployments.gateway.MAX_BODY_BYTES


# ----------------------------------------------------------------------------- strict types


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        (SUPPORT, {"query": "How do I reset my password?", "top_k": "5"}, "top_k"),
        (SUPPORT, {"query": "How do I reset my password?", "max_tokens": "8"}, "max_tokens"),
        (SUPPORT, {"query": "How do I reset my password?", "stream": "true"}, "stream"),
        (SUPPORT, {"query": "How do I reset my password?", "use_cache": 0}, "use_cache"),
        (SUPPORT, {"query": 5}, "query"),
        (SEARCH, {"query": "reset password", "top_k": "5"}, "top_k"),
        ("/v1/completions", {"prompt": "hi", "max_tokens": "4"}, "max_tokens"),
        ("/v1/completions", {"prompt": [1, "2"]}, "prompt[1]"),
        ("/v1/cache/warmup", {"collection": 5}, "collection"),
    ],
)
def test_a_wrong_json_type_is_4xx_naming_the_field(base_url, route, body, field):
    """422 on our routes; 400 on the OpenAI routes, as vLLM's server answers (issue 18)."""
    status, answer = http_json("POST", f"{base_url}{route}", body, timeout_s=60)
    assert status == (400 if route.endswith("/completions") else 422), answer
    assert answer["error"]["field"] == field, answer


def test_an_integer_is_still_a_valid_float(base_url):
    status, answer = http_json("POST", f"{base_url}{SUPPORT}",
                               {"query": "How do I reset my password?", "temperature": 1, "max_tokens": 2})
    assert status == 200, answer


# ----------------------------------------------------------------------------- 4xx bodies name the field


@pytest.mark.parametrize(
    ("method", "route", "body", "field"),
    [
        ("POST", "/v1/collections/no_such_collection/search", {"query": "x"}, "name"),
        ("GET", "/v1/collections/no_such_collection", None, "name"),
        ("DELETE", "/v1/collections/no_such_collection/documents/x", None, "name"),
        ("DELETE", "/v1/collections/support_kb/documents/no-such-document", None, "doc_id"),
        ("POST", "/v1/cache/warmup", {"collection": "no_such_collection"}, "collection"),
        ("POST", "/v1/cache/invalidate", {"collection": "no_such_collection"}, "collection"),
        ("GET", "/v1/sessions/no-such-session", None, "session_id"),
        ("GET", "/v1/no-such-route", None, "path"),
    ],
)
def test_every_404_names_the_field_or_path_parameter(base_url, method, route, body, field):
    status, answer = http_json(method, f"{base_url}{route}", body, timeout_s=60)
    assert status == 404, answer
    assert answer["error"]["field"] == field, answer


# ----------------------------------------------------------------------------- chunked bodies


def _chunked_request(base_url: str, method: str, path: str, total: int, piece: int = 256 << 10,
                     prefix: bytes = b"") -> tuple[int, dict, int]:
    """Send `prefix` plus filler up to `total` bytes with Transfer-Encoding: chunked and no Content-Length.
    Sending stops as soon as the server answers. Returns (status, JSON body, bytes sent)."""
    host, port = base_url.removeprefix("http://").split(":")
    sent = 0
    received = b""
    with socket.create_connection((host, int(port)), timeout=60) as conn:
        conn.sendall(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode())
        try:
            while sent < total:
                if select.select([conn], [], [], 0)[0]:
                    break  # the server answered before the whole body was sent
                data = prefix if sent == 0 and prefix else b"x" * min(piece, total - sent)
                conn.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                sent += len(data)
            else:
                conn.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed while we were sending: read what it said
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                chunk = conn.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
            head, sep, rest = received.partition(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), None)
            if sep and length is not None and len(rest) >= length:
                break
    head, _, rest = received.partition(b"\r\n\r\n")
    assert head, "no answer from the server"
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(rest or b"{}"), sent


def test_a_chunked_body_over_the_limit_is_413_naming_the_body(base_url):
    prefix = b'{"documents": [{"id": "huge", "text": "'  # a real upsert that never ends
    status, body, sent = _chunked_request(base_url, "PUT", "/v1/collections/support_kb/documents",
                                          total=LIMIT + (4 << 20), prefix=prefix)
    assert status == 413, body
    assert body["error"]["field"] == "body"
    assert sent > LIMIT - (1 << 20), "answered before the limit was reached"
    status, _ = http_json("GET", f"{base_url}/v1/collections/support_kb")  # the app still serves
    assert status == 200


def test_a_small_chunked_body_is_served(base_url):
    body = json.dumps({"query": "How do I reset my password?", "top_k": 2}).encode()
    status, answer, _ = _chunked_request(base_url, "POST", SEARCH, total=len(body), prefix=body)
    assert status == 200, answer
    assert len(answer["results"]) == 2


# ----------------------------------------------------------------------------- the fallback flag


def test_generated_answers_say_fallback_false_or_list_what_was_filled(base_url):
    status, answer = http_json("POST", f"{base_url}{SUPPORT}",
                               {"query": "How do I reset two-factor authentication?", "max_tokens": 16})
    assert status == 200, answer
    assert isinstance(answer["fallback"], bool) and isinstance(answer["warnings"], list)
    assert answer["fallback"] == bool(answer["warnings"])


def test_output_filled_from_templates_is_flagged(base_url):
    # One token cannot hold eight labelled fields: the business agent fills the rest from its templates.
    status, answer = http_json("POST", f"{base_url}{BUSINESS}",
                               {"brief": "A subscription box for indoor plant lovers", "max_tokens": 1})
    assert status == 200, answer
    assert answer["fallback"] is True
    filled = {w.split(":", 1)[0] for w in answer["warnings"]}
    assert len(filled) >= 7 and filled <= set(answer["output"])
