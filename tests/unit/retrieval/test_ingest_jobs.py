"""IngestJobs without Ray: the 200/202 threshold, the job lifecycle (done; failed mid-way with the previous
version still served and searchable; interrupted by a restart), progress, the one-transaction switch."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from retrieval.config import IngestConfig
from retrieval.exceptions import EmbeddingError, JobNotFoundError
from retrieval.jobs import INTERRUPTED_BY_RESTART, IngestJobs, owner_process_alive
from retrieval.models import Document, IngestJob, JobState, WriteResult
from retrieval.service import RetrievalService
from retrieval.store import CollectionStore
from tests.fakes.hashing_embedder import HashingEmbedder

OLD = [Document(f"doc{i}", f"old text of document {i} about llamas", {"title": f"Doc {i}"}) for i in range(3)]
NEW = [Document(f"doc{i}", f"new text of document {i} about volcanoes", {"title": f"Doc {i}"}) for i in range(10)]


def one_chunk_per_paragraph(text: str) -> list[str]:
    return [p for p in text.split("\n\n") if p.strip()]


class GatedEmbed:
    """Fake embed function: the hashing embedder, with optional gates (call number -> asyncio.Event that the
    call waits for) and failures (call number -> exception)."""

    def __init__(self) -> None:
        self.embedder = HashingEmbedder(dim=32)
        self.calls = 0
        self.gates: dict[int, asyncio.Event] = {}
        self.entered: dict[int, asyncio.Event] = {}
        self.failures: dict[int, BaseException] = {}

    def gate(self, call: int) -> asyncio.Event:
        self.entered[call] = asyncio.Event()
        self.gates[call] = asyncio.Event()
        return self.gates[call]

    async def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        number = self.calls
        if number in self.entered:
            self.entered[number].set()
        if number in self.gates:
            await self.gates[number].wait()
        if number in self.failures:
            raise self.failures[number]
        return self.embedder.embed(texts)


@pytest.fixture
def store(tmp_path):
    store = CollectionStore(tmp_path / "db")
    store.create_collection("kb")
    store.upsert_documents("kb", OLD, one_chunk_per_paragraph, HashingEmbedder(dim=32).embed)
    yield store
    store.close()


@pytest.fixture
def embed() -> GatedEmbed:
    return GatedEmbed()


def make_jobs(store, embed, *, owner="host:1:a", alive=lambda owner: True, on_done=None, **config) -> IngestJobs:
    ingest = IngestConfig(**{"batch_size": 3, "batch_timeout_s": 5.0, "job_threshold_chunks": 4, **config})
    service = RetrievalService(store, embed, one_chunk_per_paragraph, ingest=ingest)
    return IngestJobs(service, owner=owner, owner_alive=alive, on_done=on_done)


async def wait_until(predicate, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


async def search_ids(service: RetrievalService, query: str) -> list[str]:
    return [h.doc_id for h in await service.search("kb", query, top_k=3)]


# ----------------------------------------------------------------------------- the threshold


async def test_a_write_within_the_threshold_is_done_at_once(store, embed):
    jobs = make_jobs(store, embed)
    result = await jobs.submit("kb", NEW[:4])  # 4 chunks to embed: not more than the threshold
    assert isinstance(result, WriteResult) and result.version == 2
    assert store.get_document("kb", "doc0").text.startswith("new text")


async def test_a_write_over_the_threshold_is_a_queued_job(store, embed):
    jobs = make_jobs(store, embed)
    job = await jobs.submit("kb", NEW[:5])
    assert isinstance(job, IngestJob)
    assert (job.state, job.collection, job.documents, job.done, job.total) == (JobState.QUEUED, "kb", 5, 0, 0)
    assert job.owner == "host:1:a" and job.error is None and job.created_at > 0
    await jobs.join()
    assert ((await jobs.get(job.id)).done, (await jobs.get(job.id)).total) == (5, 5)  # total known once chunked


async def test_a_large_write_is_answered_after_chunking_about_the_threshold_not_all_of_it(store, embed):
    chunked: list[str] = []

    def counting_chunker(text: str) -> list[str]:
        chunked.append(text)
        return one_chunk_per_paragraph(text)

    ingest = IngestConfig(batch_size=3, batch_timeout_s=5.0, job_threshold_chunks=4)
    jobs = IngestJobs(RetrievalService(store, embed, counting_chunker, ingest=ingest), owner="host:1:a",
                      owner_alive=lambda owner: True)
    job = await jobs.submit("kb", NEW)
    assert isinstance(job, IngestJob) and len(chunked) == 5  # the fifth chunk made it a job
    await jobs.join()
    assert len(chunked) == 5 + 10 and (await jobs.get(job.id)).state == JobState.DONE


async def test_only_chunks_that_need_embedding_count_towards_the_threshold(store, embed):
    jobs = make_jobs(store, embed)
    same = await jobs.submit("kb", OLD)  # unchanged: skipped
    assert isinstance(same, WriteResult) and same.skipped_doc_ids == ["doc0", "doc1", "doc2"]
    repeated = [Document(f"r{i}", "the same paragraph") for i in range(9)]  # one distinct chunk text
    assert isinstance(await jobs.submit("kb", repeated), WriteResult)


async def test_bad_input_is_refused_before_any_job_is_recorded(store, embed):
    jobs = make_jobs(store, embed)
    with pytest.raises(Exception) as caught:
        await jobs.submit("kb", [*NEW[:5], Document("bad id", "x")])
    assert getattr(caught.value, "field", None) == "documents[5].id"
    assert store._conn().execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 0


# ----------------------------------------------------------------------------- lifecycle


async def test_a_job_runs_to_done_and_switches_the_collection_once(store, embed):
    done_results: list[WriteResult] = []

    async def on_done(result: WriteResult) -> None:
        done_results.append(result)

    jobs = make_jobs(store, embed, on_done=on_done)
    job = await jobs.submit("kb", NEW)
    await jobs.join()
    final = await jobs.get(job.id)
    assert final.state == JobState.DONE and (final.done, final.total) == (10, 10) and final.error is None
    assert final.started_at >= final.created_at and final.finished_at >= final.started_at
    assert final.result == {"collection": "kb", "version": 2, "upserted": [d.id for d in NEW], "skipped": [],
                            "changed_chunks": 10, "removed_chunks": 3}
    assert embed.calls == 4  # batches of 3: 3 + 3 + 3 + 1
    assert store.version("kb") == 2  # one switch for the whole job
    assert store.get_collection("kb").documents == 10
    # The cache invalidation hook got the replaced chunks, after the switch.
    assert [c.doc_id for c in done_results[0].removed_chunks] == ["doc0", "doc1", "doc2"]
    assert store._conn().execute("SELECT COUNT(*) FROM job_embeddings").fetchone()[0] == 0
    assert "doc7" in await search_ids(jobs._service, "new text of document 7 about volcanoes")


async def test_while_a_job_runs_the_previous_version_is_served_and_progress_shows(store, embed):
    jobs = make_jobs(store, embed)
    gate = embed.gate(2)
    job = await jobs.submit("kb", NEW)
    await embed.entered[2].wait()  # batch 1 staged, batch 2 in flight
    running = await jobs.get(job.id)
    assert (running.state, running.done, running.total) == (JobState.RUNNING, 3, 10)
    assert store.version("kb") == 1 and store.get_document("kb", "doc0").text.startswith("old text")
    assert "doc1" in await search_ids(jobs._service, "old text of document 1 about llamas")
    gate.set()
    await jobs.join()
    assert (await jobs.get(job.id)).state == JobState.DONE and store.version("kb") == 2


async def test_a_job_failing_mid_way_keeps_the_previous_version_served_and_searchable(store, embed):
    jobs = make_jobs(store, embed)
    embed.failures = {3: RuntimeError("embedder crashed"), 4: RuntimeError("embedder crashed")}  # batch 3, twice
    job = await jobs.submit("kb", NEW)
    await jobs.join()
    failed = await jobs.get(job.id)
    assert failed.state == JobState.FAILED and failed.done == 6 and failed.result is None
    assert failed.error == "batch 3/4 (3 chunks) failed: RuntimeError: embedder crashed, retried once"
    assert store.version("kb") == 1
    assert [store.get_document("kb", d.id).text for d in OLD] == [d.text for d in OLD]
    assert store.get_document("kb", "doc9") is None
    assert "doc2" in await search_ids(jobs._service, "old text of document 2 about llamas")
    assert store._conn().execute("SELECT COUNT(*) FROM job_embeddings").fetchone()[0] == 0


async def test_a_batch_timeout_fails_the_job_with_the_batch_named(store, embed):
    jobs = make_jobs(store, embed, batch_timeout_s=0.02)
    embed.gate(1)
    embed.gate(2)  # batch 1 never answers, nor its retry
    job = await jobs.submit("kb", NEW)
    await jobs.join()
    failed = await jobs.get(job.id)
    assert failed.state == JobState.FAILED
    assert failed.error == "batch 1/4 (3 chunks) exceeded 0.02 s, retried once"
    assert store.version("kb") == 1


async def test_a_failure_inside_the_switch_transaction_leaves_nothing_applied(store, embed):
    def fault(step: str) -> None:
        if step == "job_switch":
            raise OSError("disk full")

    jobs = make_jobs(store, embed)
    store._fault_hook = fault
    job = await jobs.submit("kb", NEW)
    await jobs.join()
    failed = await jobs.get(job.id)
    assert failed.state == JobState.FAILED and failed.error == "OSError: disk full"
    assert store.version("kb") == 1 and store.get_collection("kb").documents == 3
    assert store.get_document("kb", "doc0").text.startswith("old text")


async def test_jobs_beyond_max_running_jobs_wait_queued(store, embed):
    jobs = make_jobs(store, embed)
    gate = embed.gate(1)
    first = await jobs.submit("kb", NEW)
    second = await jobs.submit("kb", [Document(f"other{i}", f"other text {i}") for i in range(6)])
    await embed.entered[1].wait()
    assert (await jobs.get(first.id)).state == JobState.RUNNING
    assert (await jobs.get(second.id)).state == JobState.QUEUED
    gate.set()
    await jobs.join()
    assert [(await jobs.get(j.id)).state for j in (first, second)] == [JobState.DONE, JobState.DONE]
    assert store.version("kb") == 3 and store.get_collection("kb").documents == 16


async def test_stopping_the_gateway_fails_its_running_jobs(store, embed):
    jobs = make_jobs(store, embed)
    embed.gate(1)
    job = await jobs.submit("kb", NEW)
    await embed.entered[1].wait()
    await jobs.close()
    stopped = await jobs.get(job.id)
    assert stopped.state == JobState.FAILED and stopped.error.startswith("interrupted: the gateway stopped")
    assert store.version("kb") == 1


async def test_an_unknown_job_is_an_error_naming_job_id(store, embed):
    with pytest.raises(JobNotFoundError) as caught:
        await make_jobs(store, embed).get("nope")
    assert caught.value.field == "job_id" and str(caught.value) == "job_id: no ingestion job 'nope'"


# ----------------------------------------------------------------------------- restarts


async def test_a_restart_during_a_job_reports_it_failed_and_keeps_the_previous_version(store, embed, tmp_path):
    before = make_jobs(store, embed, owner="host:1:before")
    gate = embed.gate(2)
    job = await before.submit("kb", NEW)
    await embed.entered[2].wait()  # one batch staged when the app "dies"

    # The next start: another process (owner) opens the same store; the old owner is gone.
    reopened = CollectionStore(tmp_path / "db")
    after = make_jobs(reopened, GatedEmbed(), owner="host:2:after", alive=lambda owner: owner == "host:2:after")
    assert after.recover() == [job.id]
    failed = await after.get(job.id)
    assert failed.state == JobState.FAILED and failed.error == INTERRUPTED_BY_RESTART
    assert failed.error.startswith("interrupted by restart")
    assert reopened.version("kb") == 1 and reopened.get_collection("kb").documents == 3
    assert reopened._conn().execute("SELECT COUNT(*) FROM job_embeddings").fetchone()[0] == 0
    assert after.recover() == []  # reported once

    # Had the old process lingered, its job could not switch the collection any more.
    gate.set()
    await before.join()
    assert (await after.get(job.id)).error == INTERRUPTED_BY_RESTART
    assert reopened.version("kb") == 1
    reopened.close()


async def test_another_replica_reports_a_dead_owners_job_failed_when_asked(store, embed):
    dead = make_jobs(store, embed, owner="host:1:dead")
    embed.gate(1)
    job = await dead.submit("kb", NEW)
    await embed.entered[1].wait()
    other = make_jobs(store, GatedEmbed(), owner="host:2:other", alive=lambda owner: owner != "host:1:dead")
    assert (await other.get(job.id)).state == JobState.FAILED
    live = make_jobs(store, GatedEmbed(), owner="host:3:live", alive=lambda owner: True)
    assert (await live.get(job.id)).state == JobState.FAILED  # stays failed
    await dead.close()


async def test_recover_leaves_jobs_of_live_processes_alone(store, embed):
    running = make_jobs(store, embed, owner="host:1:live")
    gate = embed.gate(1)
    job = await running.submit("kb", NEW)
    await embed.entered[1].wait()
    assert make_jobs(store, GatedEmbed(), owner="host:2:new", alive=lambda owner: True).recover() == []
    gate.set()
    await running.join()
    assert (await running.get(job.id)).state == JobState.DONE


async def test_recover_drops_records_of_jobs_finished_longer_ago_than_the_ttl(store, embed):
    jobs = make_jobs(store, embed)
    job = await jobs.submit("kb", NEW)
    await jobs.join()
    finished_at = (await jobs.get(job.id)).finished_at
    ttl = jobs.config.finished_job_ttl_s
    later = IngestJobs(jobs._service, owner="host:2:b", owner_alive=lambda owner: True,
                       clock=lambda: finished_at + ttl - 1)
    later.recover()
    assert (await later.get(job.id)).state == JobState.DONE  # within the TTL: kept
    much_later = IngestJobs(jobs._service, owner="host:3:c", owner_alive=lambda owner: True,
                            clock=lambda: finished_at + ttl + 1)
    much_later.recover()
    with pytest.raises(JobNotFoundError):
        await much_later.get(job.id)


def test_owner_process_alive_checks_the_pid_on_this_host():
    host = socket.gethostname()
    assert owner_process_alive(f"{host}:{os.getpid()}:abc")
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert not owner_process_alive(f"{host}:{finished.stdout.strip()}:abc")
    assert not owner_process_alive(f"another-host-{host}:{os.getpid()}:abc")
    assert not owner_process_alive("garbage")


# ----------------------------------------------------------------------------- the synchronous path


async def test_small_writes_embed_in_batches_too(store, embed):
    service = RetrievalService(store, embed, one_chunk_per_paragraph, ingest=IngestConfig(batch_size=2))
    await service.upsert("kb", NEW[:5])
    assert embed.calls == 3


async def test_a_small_write_that_times_out_names_the_batch(store, embed):
    service = RetrievalService(store, embed, one_chunk_per_paragraph,
                               ingest=IngestConfig(batch_size=2, batch_timeout_s=0.02, batch_retries=1))
    embed.gate(2)
    embed.gate(3)
    with pytest.raises(EmbeddingError, match=r"^batch 2/3 \(2 chunks\) exceeded 0.02 s, retried once$"):
        await service.upsert("kb", NEW[:5])
    assert store.version("kb") == 1
