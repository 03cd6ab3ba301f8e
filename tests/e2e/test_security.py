"""Auth and input limits.

The auth logic is tested fast, without Ray, on the gateway's own functions and route table (the shared
e2e app runs without TCRAG_API_KEY, and a second app start only to set a key costs minutes); one e2e
check shows writes work when no key is set. Limits are checked through HTTP on the real app: each bad
input answers 4xx with a JSON error naming the field, never a 500, never a hang.
"""

from __future__ import annotations

import json
import logging
import socket
import urllib.request
from types import SimpleNamespace

import pytest
from fastapi import Depends, FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from deployments import gateway
from testbed.app_process import http_json

KEY = "s3cret-test-key"
WRITE_ROUTES = {
    ("PUT", "/v1/collections/{name}/documents"),
    ("DELETE", "/v1/collections/{name}/documents/{doc_id}"),
    ("POST", "/v1/cache/warmup"),
    ("POST", "/v1/cache/invalidate"),
}


# ----------------------------------------------------------------------------- auth, without Ray


def _routes() -> dict[tuple[str, str], APIRoute]:
    return {(m, r.path): r for r in gateway.app.routes if isinstance(r, APIRoute) for m in r.methods}


def _guards(route: APIRoute) -> set:
    return {d.call for d in route.dependant.dependencies}


def test_every_write_route_requires_the_key_and_every_other_api_route_can():
    routes = _routes()
    assert WRITE_ROUTES <= set(routes), "a write route is missing from the gateway"
    for key, route in routes.items():
        if key in WRITE_ROUTES:
            assert gateway._require_key in _guards(route), key
        elif route.path.startswith("/v1/"):
            assert gateway._require_key_for_reads in _guards(route), key
    health_guards = _guards(routes[("GET", "/healthz")])
    assert gateway._require_key not in health_guards and gateway._require_key_for_reads not in health_guards


def _mini_app() -> FastAPI:
    """The gateway's dependencies and error handler on a plain FastAPI app (no Serve)."""
    app = FastAPI()
    app.add_exception_handler(gateway._AuthError, gateway._unauthorized)

    @app.put("/write", dependencies=[Depends(gateway._require_key)])
    def write() -> dict:
        return {"ok": True}

    @app.get("/read", dependencies=[Depends(gateway._require_key_for_reads)])
    def read() -> dict:
        return {"ok": True}

    return app


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", f"Basic {KEY}", "Bearer wrong", f"Bearer {KEY}x", f"Bearer {KEY[:-1]}", KEY],
)
def test_write_without_the_right_bearer_key_is_401_naming_the_header(monkeypatch, caplog, header):
    monkeypatch.setenv(gateway.API_KEY_ENV, KEY)
    client = TestClient(_mini_app())
    caplog.set_level(logging.DEBUG)
    response = client.put("/write", headers={"Authorization": header} if header is not None else {})
    assert response.status_code == 401
    assert response.json()["error"]["field"] == "Authorization"
    assert response.headers["www-authenticate"] == "Bearer"
    assert KEY not in response.text and KEY not in caplog.text


@pytest.mark.parametrize("header", [f"Bearer {KEY}", f"bearer {KEY}", f"Bearer  {KEY} "])
def test_write_with_the_key_passes(monkeypatch, header):
    monkeypatch.setenv(gateway.API_KEY_ENV, KEY)
    assert TestClient(_mini_app()).put("/write", headers={"Authorization": header}).status_code == 200


def test_no_key_configured_leaves_writes_open(monkeypatch):
    monkeypatch.delenv(gateway.API_KEY_ENV, raising=False)
    assert TestClient(_mini_app()).put("/write").status_code == 200


@pytest.mark.parametrize(("protect_reads", "status"), [(False, 200), (True, 401)])
def test_reads_need_the_key_only_when_protect_reads_is_set(monkeypatch, protect_reads, status):
    monkeypatch.setenv(gateway.API_KEY_ENV, KEY)
    replica = SimpleNamespace(servable_object=SimpleNamespace(config=SimpleNamespace(protect_reads=protect_reads)))
    monkeypatch.setattr(gateway.serve, "get_replica_context", lambda: replica)
    client = TestClient(_mini_app())
    assert client.get("/read").status_code == status
    assert client.get("/read", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_declared_body_over_the_limit_is_413_naming_the_body(monkeypatch):
    app = _mini_app()
    app.add_middleware(gateway.BodyLimit, max_bytes=100)
    monkeypatch.delenv(gateway.API_KEY_ENV, raising=False)
    client = TestClient(app)
    assert client.put("/write", content=b"x" * 100).status_code == 200
    response = client.put("/write", content=b"x" * 101)
    assert response.status_code == 413 and response.json()["error"]["field"] == "body"


def test_key_comparison_is_constant_time():
    import inspect

    assert "hmac.compare_digest" in inspect.getsource(gateway._require_key)


# ----------------------------------------------------------------------------- overload, without Ray


async def test_pool_backpressure_becomes_unavailable_not_a_500():
    """A full LLM queue (``max_queued_requests``) is ``LLMUnavailableError``, which the gateway maps to 503."""
    from ray.serve.exceptions import BackPressureError

    from deployments.llm_client import LLMPoolClient
    from llm import GenerateRequest, LLMUnavailableError

    class RejectedResponse:  # test double of a DeploymentResponse: Serve raises backpressure on await
        def __await__(self):
            raise BackPressureError(num_queued_requests=256, max_queued_requests=256)
            yield  # pragma: no cover - makes this a generator

        def cancel(self):
            pass

    class FullQueue:  # test double of a DeploymentHandle whose queue is full
        def __getattr__(self, name):
            return SimpleNamespace(remote=lambda request: RejectedResponse())

    with pytest.raises(LLMUnavailableError):
        await LLMPoolClient(FullQueue(), timeout_s=5).generate(GenerateRequest(prompt_token_ids=[1]))
    response = await gateway._table_error(None, LLMUnavailableError("queue full"))
    assert response.status_code == 503 and response.headers["retry-after"]


# ----------------------------------------------------------------------------- against the app

pytest_e2e = pytest.mark.e2e


@pytest_e2e
def test_writes_work_without_a_key_when_none_is_set(base_url):
    doc = {"id": "security-probe", "text": "A probe document written without an API key.", "metadata": {}}
    status, body = http_json("PUT", f"{base_url}/v1/collections/support_kb/documents", {"documents": [doc]})
    assert status == 200, body
    status, body = http_json("DELETE", f"{base_url}/v1/collections/support_kb/documents/security-probe")
    assert status == 200, body


SUPPORT = "/v1/agents/support/answer"
QA = "/v1/agents/qa/generate-tests"


@pytest_e2e
@pytest.mark.parametrize(
    ("route", "body", "status", "field"),
    [
        (SUPPORT, {"query": "x" * 4001}, 422, "query"),
        (SUPPORT, {"query": "   "}, 422, "query"),
        (SUPPORT, {}, 422, "query"),
        (SUPPORT, {"query": 5}, 422, "query"),
        (SUPPORT, {"query": "hi", "top_k": 0}, 422, "top_k"),
        (SUPPORT, {"query": "hi", "top_k": 21}, 422, "top_k"),
        (SUPPORT, {"query": "hi", "max_tokens": 0}, 422, "max_tokens"),
        (SUPPORT, {"query": "hi", "max_tokens": 1025}, 422, "max_tokens"),
        (SUPPORT, {"query": "hi", "temperature": 3}, 422, "temperature"),
        (SUPPORT, {"query": "hi", "surprise": 1}, 422, "surprise"),
        (QA, {"code": "x" * 20001, "test_type": "unit"}, 422, "code"),
        (QA, {"code": "def f(): pass", "test_type": "astrology"}, 422, "test_type"),
        ("/v1/completions", {"prompt": "hi", "max_tokens": 5000}, 400, "max_tokens"),
        ("/v1/completions", {"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ("/v1/cache/warmup", {"collection": "x" * 65}, 422, "collection"),
        ("/v1/cache/invalidate", {"collection": ""}, 422, "collection"),
    ],
)
def test_bad_input_is_4xx_naming_the_field(base_url, route, body, status, field):
    got_status, got = http_json("POST", f"{base_url}{route}", body, timeout_s=60)
    assert got_status == status, got
    assert got["error"]["field"] == field, got


@pytest_e2e
@pytest.mark.parametrize(
    ("documents", "field"),
    [
        ([{"id": "big", "text": "x" * 200_001}], "documents[0].text"),
        ([{"id": f"d{i}", "text": "t"} for i in range(257)], "documents"),
        ([{"id": "a", "text": "t"}, {"id": "a", "text": "u"}], "documents[1].id"),
        ([{"id": "m", "text": "t", "metadata": {"blob": "x" * 20_000}}], "documents[0].metadata"),
        ([{"id": "", "text": "t"}], "documents[0].id"),
        ([], "documents"),
    ],
)
def test_document_limits_are_4xx_naming_the_field(base_url, documents, field):
    status, body = http_json("PUT", f"{base_url}/v1/collections/support_kb/documents", {"documents": documents})
    assert 400 <= status < 500, body
    assert body["error"]["field"] == field, body


def _read_response(conn: socket.socket) -> bytes:
    """One HTTP response with a Content-Length body: headers and body may arrive in separate segments."""
    received = b""
    while True:
        head, sep, body = received.partition(b"\r\n\r\n")
        if sep:
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            if len(body) >= length:
                return received
        chunk = conn.recv(65536)
        if not chunk:  # closed by the server: whatever arrived is the answer
            return received
        received += chunk


@pytest_e2e
def test_oversized_body_is_refused_before_it_is_read(base_url):
    """A body over the gateway's limit is a 413 naming the body, decided on Content-Length alone."""
    host, port = base_url.removeprefix("http://").split(":")
    size = 64 << 20  # claim 64 MiB, send only the headers: the answer must not wait for the body
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(
            f"PUT /v1/collections/support_kb/documents HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {size}\r\nConnection: close\r\n\r\n".encode()
        )
        head = _read_response(conn).decode(errors="replace")
    status_line, _, rest = head.partition("\r\n")
    assert " 413 " in status_line + " ", head[:300]
    body = json.loads(rest.split("\r\n\r\n", 1)[1] or "{}")
    assert body["error"]["field"] == "body"


@pytest_e2e
def test_malformed_json_and_wrong_content_are_4xx(base_url):
    for data in (b"{not json", b"[1, 2]", b'"text"', b"\xff\xfe"):
        request = urllib.request.Request(f"{base_url}{SUPPORT}", data=data, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status = response.status
        except urllib.error.HTTPError as err:
            status = err.code
        assert 400 <= status < 500, (data, status)
