"""Bulk ingestion against the real app (issue 16): a large PUT runs as a job and switches the collection
when the whole job is done; small PUTs stay synchronous; the CLI sends a folder through the app.

The large write is CPython's 79 help topics (`pydoc_data.topics`, in every CPython's standard library:
465 KB, ~370 chunks with the served model's tokenizer), the set that once failed after 31 s with an empty
503 message. With the app's embedder at ~11 chunks/s on 2 idle cores the job takes ~35 s. The documents
go into `documentation` under ids of their own and are deleted afterwards, so later tests see the
collection as the samples left it.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pydoc_data.topics
import pytest

from testbed.app_process import http_json

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
COLLECTION = "documentation"
PREFIX = "e2e-pydoc-"
JOB_TIMEOUT_S = 900  # ~35 s idle; generous for a busy CI machine
WRITE_KEYS = {"collection", "version", "upserted", "skipped", "changed_chunks", "removed_chunks"}


def help_topic_documents() -> list[dict]:
    topics = pydoc_data.topics.topics
    return [{"id": f"{PREFIX}{name}", "text": topics[name], "metadata": {"title": f"Python help: {name}",
                                                                         "source": "pydoc_data.topics"}}
            for name in sorted(topics)]


def collection_info(base_url: str) -> dict:
    status, info = http_json("GET", f"{base_url}/v1/collections/{COLLECTION}")
    assert status == 200, info
    return info


def search(base_url: str, query: str, top_k: int = 5) -> list[str]:
    status, body = http_json("POST", f"{base_url}/v1/collections/{COLLECTION}/search",
                             {"query": query, "top_k": top_k}, timeout_s=120)
    assert status == 200, body
    return [r["doc_id"] for r in body["results"]]


def delete_documents(base_url: str, doc_ids: list[str]) -> None:
    for doc_id in doc_ids:
        http_json("DELETE", f"{base_url}/v1/collections/{COLLECTION}/documents/{doc_id}", timeout_s=120)


def test_a_large_put_runs_as_a_job_and_the_collection_switches_when_it_is_done(base_url):
    docs = help_topic_documents()
    assert len(docs) >= 79 and sum(len(d["text"]) for d in docs) > 400_000
    before = collection_info(base_url)
    try:
        started = time.monotonic()
        status, accepted = http_json("PUT", f"{base_url}/v1/collections/{COLLECTION}/documents",
                                     {"documents": docs}, timeout_s=300)
        accepted_s = time.monotonic() - started
        assert status == 202, accepted
        assert accepted["status_url"] == f"/v1/jobs/{accepted['job']}"
        assert accepted["state"] in ("queued", "running") and accepted["collection"] == COLLECTION
        print(f"\n[e2e] PUT of {len(docs)} documents answered 202 after {accepted_s:.1f} s", file=sys.stderr)

        states = []
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while True:
            info = collection_info(base_url)  # read before the job: if the job is still unfinished after
            status, job = http_json("GET", f"{base_url}{accepted['status_url']}")  # this, it was then too
            assert status == 200, job
            assert job["job"] == accepted["job"] and 0 <= job["done"] <= job["total"]  # total: 0 until chunked
            states.append(job["state"])
            if job["state"] in ("queued", "running"):
                assert info["version"] == before["version"], "the collection switched before the job was done"
                assert job["error"] is None
            else:
                break
            assert time.monotonic() < deadline, f"job not finished after {JOB_TIMEOUT_S} s: {job}"
            time.sleep(1.0)
        elapsed = time.monotonic() - started
        assert job["state"] == "done", job
        print(f"[e2e] job {job['job']}: {job['total']} chunks in {elapsed:.1f} s "
              f"({job['total'] / elapsed:.1f} chunks/s), states seen {sorted(set(states))}", file=sys.stderr)
        assert job["total"] >= 300 and job["done"] == job["total"] and job["error"] is None
        assert job["finished_at"] >= job["started_at"] >= job["created_at"]
        assert set(job["result"]) == WRITE_KEYS
        assert sorted(job["result"]["upserted"]) == sorted(d["id"] for d in docs)
        assert job["result"]["changed_chunks"] >= job["total"]  # total counts distinct chunk texts

        after = collection_info(base_url)
        assert after["version"] == before["version"] + 1  # one switch for the whole job
        assert after["documents"] == before["documents"] + len(docs)
        assert f"{PREFIX}assert" in search(base_url, "assert statement debugging assertions AssertionError __debug__")
        found = search(base_url, "with statement context manager __enter__ __exit__")
        assert {f"{PREFIX}with", f"{PREFIX}context-managers"} & set(found), found
        status, again = http_json("GET", f"{base_url}{accepted['status_url']}")
        assert status == 200 and again["state"] == "done"  # the record stays
    finally:
        delete_documents(base_url, [d["id"] for d in docs])
    assert collection_info(base_url)["documents"] == before["documents"]


def test_a_small_put_stays_synchronous(base_url):
    marker = uuid.uuid4().hex[:8]
    doc_id = f"e2e-small-{marker}"
    text = (f"# Lantern calibration {marker}\n\nTo calibrate the lantern model LC-{marker}, turn the brass dial "
            "three notches clockwise and wait for the amber glow.")
    try:
        status, body = http_json("PUT", f"{base_url}/v1/collections/{COLLECTION}/documents",
                                 {"documents": [{"id": doc_id, "text": text, "metadata": {}}]})
        assert status == 200, body
        assert set(body) == WRITE_KEYS and body["upserted"] == [doc_id] and body["changed_chunks"] == 1
        assert doc_id in search(base_url, f"How do I calibrate the lantern model LC-{marker}?")
    finally:
        delete_documents(base_url, [doc_id])


def test_an_unknown_job_is_404_naming_job_id(base_url):
    status, body = http_json("GET", f"{base_url}/v1/jobs/{uuid.uuid4().hex}")
    assert status == 404, body
    assert body["error"]["field"] == "job_id" and body["error"]["type"] == "not_found"


def test_the_cli_sends_a_folder_through_the_app(base_url, tmp_path):
    marker = uuid.uuid4().hex[:8]
    for i in range(5):
        (tmp_path / f"cli-{marker}-{i}.md").write_text(
            f"# Glacier station {i} ({marker})\n\nGlacier station {i} of survey {marker} records ice depth "
            f"every {10 + i} minutes and uploads it at dawn.\n")
    ids = [f"cli-{marker}-{i}" for i in range(5)]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "retrieval.ingest", str(tmp_path), "--collection", COLLECTION, "--url", base_url,
             "--batch-docs", "2", "--poll-s", "0.5"],
            cwd=REPO, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        assert "5 documents in 3 calls" in done.stdout and "5 upserted" in done.stdout, done.stdout
        assert f"cli-{marker}-3" in search(base_url, f"How often does glacier station 3 of survey {marker} "
                                                     "record ice depth?")
    finally:
        delete_documents(base_url, ids)
