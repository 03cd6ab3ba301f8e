"""The gateway's HTTP surface without Ray (issue 16): strict bodies, 4xx bodies naming the field or path
parameter, and the body limit for bodies without Content-Length.

The real FastAPI ``app`` of ``deployments.gateway`` is exercised with TestClient: its class routes take the
Gateway instance from ``serve.get_replica_context()``, which the fixture points at an instance holding a
real retrieval service (SQLite store, hashing embedder) and test doubles of the agent and LLM handles.
"""

from __future__ import annotations

import asyncio
import pickle
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from agents.registry import AGENTS
from deployments import gateway
from retrieval.exceptions import (CollectionNotFoundError, DocumentNotFoundError, InvalidCollectionNameError,
                                  JobNotFoundError)
from retrieval.jobs import IngestJobs
from retrieval.models import Document
from retrieval.service import RetrievalService
from retrieval.store import CollectionStore
from tests.fakes.hashing_embedder import HashingEmbedder

SUPPORT = "/v1/agents/support/answer"
QA = "/v1/agents/qa/generate-tests"
SEARCH = "/v1/collections/support_kb/search"
DOCS = "/v1/collections/support_kb/documents"


class FakeAgentHandle:
    """Test double of an agent's DeploymentHandle: records the request model the gateway passes on."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests: list = []
        self.answer = SimpleNamespace(remote=self._answer)

    async def _answer(self, body):
        self.requests.append(body)
        return {"agent": self.name, "output": {}, "fallback": False, "warnings": []}


class FakeCompletions:
    def __init__(self) -> None:
        self.requests: list = []

    async def complete(self, body):
        self.requests.append(body)
        return {"choices": [{"text": ""}]}


class GatewayInstance(gateway.Gateway.func_or_class):
    """The ingress class, built without Serve's constructor; Serve's async ``__del__`` has nothing to stop."""

    def __del__(self) -> None:
        pass


@pytest.fixture
def instance(tmp_path, monkeypatch):
    monkeypatch.delenv(gateway.API_KEY_ENV, raising=False)
    embedder = HashingEmbedder()
    store = CollectionStore(tmp_path / "store.sqlite3")
    store.create_collection("support_kb")
    store.upsert_documents("support_kb", [Document("reset-password", "# Reset\n\nClick forgot password.", {})],
                           lambda text: [text], embedder.embed)
    self = object.__new__(GatewayInstance)
    self.config = SimpleNamespace(protect_reads=False, request_timeout_s=5.0, agent_collections={})
    self._retrieval = RetrievalService(store, embedder.aembed, lambda text: [text])
    self._ingest = IngestJobs(self._retrieval, on_done=self._invalidate_removed)
    self._agents = {cls.name: FakeAgentHandle(cls.name) for cls in AGENTS}
    self._completions = FakeCompletions()
    monkeypatch.setattr(gateway.serve, "get_replica_context", lambda: SimpleNamespace(servable_object=self))
    return self


@pytest.fixture
def client(instance) -> TestClient:
    return TestClient(gateway.app, raise_server_exceptions=False)


# ----------------------------------------------------------------------------- strict types


@pytest.mark.parametrize(
    ("method", "route", "body", "field"),
    [
        ("POST", SUPPORT, {"query": "hi", "top_k": "5"}, "top_k"),
        ("POST", SUPPORT, {"query": "hi", "top_k": 5.0}, "top_k"),
        ("POST", SUPPORT, {"query": "hi", "max_tokens": True}, "max_tokens"),
        ("POST", SUPPORT, {"query": "hi", "temperature": "0"}, "temperature"),
        ("POST", SUPPORT, {"query": "hi", "stream": "true"}, "stream"),
        ("POST", SUPPORT, {"query": "hi", "use_cache": 0}, "use_cache"),
        ("POST", SUPPORT, {"query": "hi", "prefix_cache": "false"}, "prefix_cache"),
        ("POST", SUPPORT, {"query": "hi", "cache_salt": 7}, "cache_salt"),
        ("POST", SUPPORT, {"query": "hi", "session_id": 7}, "session_id"),
        ("POST", SUPPORT, {"query": 5}, "query"),
        ("POST", QA, {"code": "def f(): pass", "test_type": 5}, "test_type"),
        ("POST", QA, {"code": 1, "test_type": "unit"}, "code"),
        ("POST", "/v1/completions", {"prompt": 5}, "prompt"),
        ("POST", "/v1/completions", {"prompt": [1, "2"]}, "prompt[1]"),
        ("POST", "/v1/completions", {"prompt": "x", "max_tokens": "16"}, "max_tokens"),
        ("POST", "/v1/completions", {"prompt": "x", "return_token_ids": "true"}, "return_token_ids"),
        ("POST", "/v1/completions", {"prompt": "x", "stop": ["a", 5]}, "stop[1]"),
        ("POST", SEARCH, {"query": "reset", "top_k": "5"}, "top_k"),
        ("POST", SEARCH, {"query": 5}, "query"),
        ("PUT", DOCS, {"documents": [{"id": 1, "text": "t"}]}, "documents[0].id"),
        ("PUT", DOCS, {"documents": [{"id": "a", "text": "t", "metadata": []}]}, "documents[0].metadata"),
        ("PUT", DOCS, {"documents": {"id": "a", "text": "t"}}, "documents"),
        ("POST", "/v1/cache/warmup", {"collection": 5}, "collection"),
        ("POST", "/v1/cache/invalidate", {"collection": ["support_kb"]}, "collection"),
    ],
)
def test_a_wrong_json_type_is_4xx_naming_the_field(client, instance, method, route, body, field):
    """422 on our routes; 400 on the OpenAI routes, as vLLM's server answers there (issue 18)."""
    response = client.request(method, route, json=body)
    assert response.status_code == (400 if route in gateway.OPENAI_ROUTES else 422), response.text
    error = response.json()["error"]
    assert error["field"] == field and error["type"] == "invalid_request"
    assert error["message"].startswith(f"{field}: ")
    assert not any(h.requests for h in instance._agents.values()) and not instance._completions.requests


def test_right_types_pass_and_an_integer_is_a_valid_float(client, instance):
    response = client.post(SUPPORT, json={"query": "hi", "top_k": 3, "temperature": 1, "use_cache": False})
    assert response.status_code == 200, response.text
    request = instance._agents["support"].requests[0]
    assert request.temperature == 1.0 and isinstance(request.temperature, float)
    assert (request.top_k, request.use_cache) == (3, False)
    assert client.post("/v1/completions", json={"prompt": [1, 2], "temperature": 0, "top_p": 1}).status_code == 200
    assert isinstance(instance._completions.requests[0].top_p, float)
    assert client.post(SEARCH, json={"query": "reset", "top_k": 1}).status_code == 200


# ----------------------------------------------------------------------------- 4xx bodies name the field


@pytest.mark.parametrize(
    ("method", "route", "body", "status", "field"),
    [
        ("GET", "/v1/collections/nope", None, 404, "name"),
        ("POST", "/v1/collections/nope/search", {"query": "reset"}, 404, "name"),
        ("DELETE", "/v1/collections/nope/documents/reset-password", None, 404, "name"),
        ("DELETE", "/v1/collections/support_kb/documents/missing", None, 404, "doc_id"),
        ("POST", "/v1/cache/warmup", {"collection": "nope"}, 404, "collection"),
        ("POST", "/v1/cache/invalidate", {"collection": "nope"}, 404, "collection"),
        ("GET", "/v1/collections/Bad.Name", None, 400, "name"),
        ("POST", "/v1/collections/Bad.Name/search", {"query": "reset"}, 400, "name"),
        ("GET", "/v1/jobs/no-such-job", None, 404, "job_id"),
        ("GET", "/v1/no-such-route", None, 404, "path"),
        ("DELETE", "/v1/models", None, 405, "method"),
    ],
)
def test_every_4xx_names_the_field_or_path_parameter(client, method, route, body, status, field):
    response = client.request(method, route, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field, error
    assert error["message"].startswith(f"{field}: ") or status in (404, 405) and field in ("path", "method")


def test_an_upsert_into_an_unknown_collection_is_404_naming_the_path_parameter(client):
    response = client.put("/v1/collections/nope/documents", json={"documents": [{"id": "a", "text": "t"}]})
    assert (response.status_code, response.json()["error"]["field"]) == (404, "name")
    assert response.json()["error"]["message"] == "name: collection not found: 'nope'"


@pytest.mark.parametrize(
    ("error", "status", "field"),
    [
        (CollectionNotFoundError("kb"), 404, "collection"),
        (CollectionNotFoundError("kb", "name"), 404, "name"),
        (DocumentNotFoundError("kb", "d1"), 404, "doc_id"),
        (InvalidCollectionNameError("name", "bad"), 400, "name"),
        (JobNotFoundError("0123abcd"), 404, "job_id"),
    ],
)
def test_the_error_table_names_the_field_also_after_pickling(error, status, field):
    """Raised in a deployment, the error crosses processes pickled and arrives as a RayTaskError's cause."""
    copy = pickle.loads(pickle.dumps(error))
    for raised in (error, copy):
        response = gateway._mapped_error(raised)
        assert response is not None and response.status_code == status
        assert f'"field":"{field}"' in response.body.decode()
    remote = asyncio.run(gateway._remote_error(None, SimpleNamespace(cause=copy)))
    assert remote.status_code == status and f'"field":"{field}"' in remote.body.decode()


def test_every_4xx_entry_of_the_error_table_carries_a_field():
    """A 4xx row of the table must be an error type that names its field (the 404 rows included)."""
    samples = {
        "InvalidRequestError": lambda kind: kind("prompt", "too long"),
        "InvalidInputError": lambda kind: kind("query", "empty"),
        "CollectionNotFoundError": lambda kind: kind("kb"),
        "DocumentNotFoundError": lambda kind: kind("kb", "d1"),
        "JobNotFoundError": lambda kind: kind("0123abcd"),
    }
    for kind, status, *_ in gateway._ERROR_TABLE:
        if status < 500:
            assert kind.__name__ in samples, f"{kind.__name__} answers {status}: give it a field"
            assert samples[kind.__name__](kind).field


# ----------------------------------------------------------------------------- body limit


class Inner:
    """An ASGI app that reads the whole body and answers 200 with its size."""

    def __init__(self) -> None:
        self.calls = 0
        self.bodies: list[bytes] = []
        self.after: list[dict] = []

    async def __call__(self, scope, receive, send):
        self.calls += 1
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        self.after.append(await receive())  # what a streaming response's disconnect watcher would see
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(len(body)).encode()})


def _run(app, chunks: list[bytes], headers: list[tuple[bytes, bytes]] | None = None):
    """Drive an ASGI app with a chunked request body; returns (status, body, chunks read by the app)."""
    pulled = 0
    sent: list[dict] = []

    async def receive():
        nonlocal pulled
        if pulled < len(chunks):
            pulled += 1
            return {"type": "http.request", "body": chunks[pulled - 1], "more_body": pulled < len(chunks)}
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "PUT", "path": "/", "headers": headers or [], "query_string": b""}
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body, pulled


def test_a_chunked_body_over_the_limit_is_413_and_reading_stops_there():
    inner = Inner()
    status, body, pulled = _run(gateway.BodyLimit(inner, max_bytes=100), [b"x" * 30] * 10)  # 300 bytes, no length
    assert status == 413 and b'"field":"body"' in body
    assert pulled == 4  # 120 bytes read: the first chunk past the limit, not one more
    assert inner.calls == 0


def test_a_chunked_body_within_the_limit_reaches_the_app_whole():
    inner = Inner()
    status, body, pulled = _run(gateway.BodyLimit(inner, max_bytes=100), [b"a" * 40, b"b" * 40, b"c" * 20])
    assert (status, body, pulled) == (200, b"100", 3)
    assert inner.bodies == [b"a" * 40 + b"b" * 40 + b"c" * 20]
    assert inner.after == [{"type": "http.disconnect"}]  # later receives go to the server


@pytest.mark.parametrize("length", [b"101", b"abc", b"-1"])
def test_a_declared_length_over_the_limit_is_refused_before_reading(length):
    inner = Inner()
    status, body, pulled = _run(gateway.BodyLimit(inner, max_bytes=100), [b"x"], [(b"content-length", length)])
    assert status == 413 and b'"field":"body"' in body
    assert pulled == 0 and inner.calls == 0


def test_the_gateway_refuses_an_oversized_body_sent_without_content_length(client, monkeypatch):
    def chunks():  # a generator body: httpx sends it chunked, with no Content-Length
        for _ in range(17):
            yield b"x" * (1 << 20)

    response = client.put(DOCS, content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413, response.text
    assert response.json()["error"]["field"] == "body"
    assert "content-length" not in {k.lower() for k in response.request.headers}


def test_the_gateway_app_carries_the_body_limit():
    assert any(m.cls is gateway.BodyLimit and m.kwargs == {"max_bytes": gateway.MAX_BODY_BYTES}
               for m in gateway.app.user_middleware)


# ----------------------------------------------------------------------------- an agent replica lost


class LosingAgentHandle(FakeAgentHandle):
    """An agent handle whose first ``lost`` calls die as a replica on a lost node does."""

    def __init__(self, name: str, lost: int) -> None:
        super().__init__(name)
        self.lost = lost
        self.calls = 0

    async def _answer(self, body):
        from ray.exceptions import ActorDiedError

        self.calls += 1
        if self.calls <= self.lost:
            raise ActorDiedError()
        return await super()._answer(body)


def test_a_request_whose_agent_replica_died_is_sent_once_more(client, instance):
    instance._agents["support"] = handle = LosingAgentHandle("support", lost=1)
    response = client.post(SUPPORT, json={"query": "reset my password"})
    assert response.status_code == 200, response.text
    assert handle.calls == 2 and len(handle.requests) == 1


def test_an_agent_lost_twice_is_503_with_retry_after(client, instance):
    instance._agents["support"] = handle = LosingAgentHandle("support", lost=5)
    response = client.post(SUPPORT, json={"query": "reset my password"})
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == str(gateway.RETRY_AFTER_S)
    assert handle.calls == gateway.AGENT_RETRIES + 1 and "lost its replica" in response.json()["error"]["message"]
