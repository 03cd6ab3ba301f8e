"""The gateway's ingestion routes without Ray: a small PUT stays 200, a large one answers 202 with a job that
GET /v1/jobs/{job_id} follows to done (or failed, with the batch named); an unknown job is a 404 naming
``job_id``. The real FastAPI ``app`` runs under one TestClient portal, so background jobs keep running
between requests."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest
from fastapi.testclient import TestClient

from deployments import gateway
from retrieval.config import IngestConfig
from retrieval.jobs import IngestJobs
from retrieval.models import Document
from retrieval.service import RetrievalService
from retrieval.store import CollectionStore
from tests.fakes.hashing_embedder import HashingEmbedder

DOCS = "/v1/collections/support_kb/documents"
SEARCH = "/v1/collections/support_kb/search"


class GatewayInstance(gateway.Gateway.func_or_class):
    def __del__(self) -> None:
        pass


class FlakyEmbed:
    """The hashing embedder, raising `error` on every call from call number `fail_from` on (None: never)."""

    def __init__(self) -> None:
        self.embedder = HashingEmbedder()
        self.fail_from: int | None = None
        self.error: Exception = RuntimeError("embedder unavailable")
        self.calls = 0

    async def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        if self.fail_from is not None and self.calls >= self.fail_from:
            raise self.error
        return self.embedder.embed(texts)


@pytest.fixture
def embed() -> FlakyEmbed:
    return FlakyEmbed()


@pytest.fixture
def instance(tmp_path, monkeypatch, embed):
    monkeypatch.delenv(gateway.API_KEY_ENV, raising=False)
    store = CollectionStore(tmp_path / "store.sqlite3")
    store.create_collection("support_kb")
    store.upsert_documents("support_kb", [Document("reset-password", "Click forgot password to reset it.", {})],
                           lambda text: [text], HashingEmbedder().embed)
    self = object.__new__(GatewayInstance)
    self.config = SimpleNamespace(protect_reads=False, request_timeout_s=5.0, agent_collections={})
    ingest = IngestConfig(batch_size=2, batch_timeout_s=5.0, job_threshold_chunks=3)
    self._retrieval = RetrievalService(store, embed, lambda text: [text], ingest=ingest)
    self._ingest = IngestJobs(self._retrieval, on_done=self._invalidate_removed)
    self._agents = {}
    monkeypatch.setattr(gateway.serve, "get_replica_context", lambda: SimpleNamespace(servable_object=self))
    yield self
    store.close()


@pytest.fixture
def client(instance):
    with TestClient(gateway.app, raise_server_exceptions=False) as client:  # one event loop for every request
        yield client


def documents(n: int, topic: str = "volcano") -> dict:
    return {"documents": [{"id": f"{topic}-{i}", "text": f"The {topic} guide, page {i}: {topic} safety."}
                          for i in range(n)]}


def follow(client: TestClient, status_url: str, timeout_s: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        response = client.get(status_url)
        assert response.status_code == 200, response.text
        job = response.json()
        if job["state"] in ("done", "failed"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.01)


def test_a_small_put_answers_200_with_the_write(client):
    response = client.put(DOCS, json=documents(3))
    assert response.status_code == 200, response.text
    assert response.json() == {"collection": "support_kb", "version": 2, "upserted": ["volcano-0", "volcano-1",
                               "volcano-2"], "skipped": [], "changed_chunks": 3, "removed_chunks": 0}


def test_a_large_put_answers_202_and_the_job_reaches_done(client):
    response = client.put(DOCS, json=documents(7))
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["status_url"] == f"/v1/jobs/{accepted['job']}"
    assert accepted["state"] == "queued" and (accepted["done"], accepted["total"]) == (0, 0)  # not yet chunked
    job = follow(client, accepted["status_url"])
    assert (job["state"], job["done"], job["total"], job["error"]) == ("done", 7, 7, None)
    assert job["collection"] == "support_kb" and job["finished_at"] >= job["created_at"]
    assert job["result"]["version"] == 2 and len(job["result"]["upserted"]) == 7
    hits = client.post(SEARCH, json={"query": "volcano guide page 5 safety", "top_k": 3}).json()["results"]
    assert "volcano-5" in [h["doc_id"] for h in hits]
    assert client.get("/v1/collections/support_kb").json()["documents"] == 8


def test_a_failed_job_reports_the_batch_and_the_collection_keeps_its_version(client, embed):
    embed.fail_from = 3  # batch 3 fails, and its retry
    accepted = client.put(DOCS, json=documents(7)).json()
    job = follow(client, accepted["status_url"])
    assert job["state"] == "failed" and job["done"] == 4
    assert job["error"] == "batch 3/4 (2 chunks) failed: RuntimeError: embedder unavailable, retried once"
    info = client.get("/v1/collections/support_kb").json()
    assert (info["version"], info["documents"]) == (1, 1)
    embed.fail_from = None  # the embedder is back: the previous version is what search finds
    hits = client.post(SEARCH, json={"query": "forgot password", "top_k": 1}).json()["results"]
    assert hits[0]["doc_id"] == "reset-password"


def test_a_small_put_whose_embedding_times_out_is_503_with_a_message_naming_the_batch(client, embed):
    """The embedder call's own timeout (a TimeoutError without a message, as before this change) is the
    batch timeout: the answer says which batch and how long, never an empty message."""
    embed.fail_from, embed.error = 1, TimeoutError()
    response = client.put(DOCS, json=documents(3))
    assert response.status_code == 503 and response.headers["retry-after"]
    assert response.json()["error"]["message"] == "batch 1/2 (2 chunks) exceeded 5 s, retried once"


def test_an_unknown_job_is_404_naming_job_id(client):
    response = client.get("/v1/jobs/0123456789abcdef")
    assert response.status_code == 404
    assert response.json()["error"] == {"type": "not_found", "field": "job_id", "param": "job_id",
                                        "message": "job_id: no ingestion job '0123456789abcdef'"}


def test_job_status_needs_the_key_only_when_reads_are_protected(client, instance, monkeypatch):
    accepted = client.put(DOCS, json=documents(5)).json()
    monkeypatch.setenv(gateway.API_KEY_ENV, "secret")
    assert client.get(accepted["status_url"]).status_code == 200
    instance.config.protect_reads = True
    assert client.get(accepted["status_url"]).status_code == 401
    assert client.get(accepted["status_url"], headers={"Authorization": "Bearer secret"}).status_code == 200
    assert client.put(DOCS, json=documents(5)).status_code == 401
