"""Ingestion jobs: writes too large to finish within their HTTP request.

`IngestJobs.submit` validates and chunks the documents first (bad input is still the caller's 4xx, before
anything is accepted), then looks at how many chunks need embedding:

- at most `IngestConfig.job_threshold_chunks`: the write happens now and its `WriteResult` is returned
  (the route answers 200, as before jobs existed);
- more: a job is recorded in the store as `queued` and returned at once (the route answers 202); a
  background task chunks the documents (the job's `total` is 0 until then), embeds the chunks batch by
  batch (`retrieval.batching`), stages each batch's vectors in the store with the job's progress, and
  finally switches the collection to the new content in one transaction (`CollectionStore.commit_job`).
  Until then, and after a failure, the previous version is what every search sees.

Jobs are rows in the store, not objects in memory, so any gateway replica answers `GET /v1/jobs/{id}`
and a restart is detectable: each job names its owner process (``host:pid:token``), and a queued or
running job whose owner is gone is reported `failed` ("interrupted by restart") at the next start
(`recover`) or when it is next read (`get`). Its staged vectors are dropped; the collection never saw them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence

from retrieval.batching import describe_error
from retrieval.exceptions import RetrievalError
from retrieval.models import Document, IngestJob, WriteResult
from retrieval.service import RetrievalService

__all__ = ["INTERRUPTED_BY_RESTART", "IngestJobs", "owner_process_alive", "process_owner"]

logger = logging.getLogger(__name__)

INTERRUPTED_BY_RESTART = ("interrupted by restart: the app stopped while this job ran; the previous version of "
                          "the collection is still served; submit the documents again")
STOPPED = "interrupted: the gateway stopped while this job ran; the previous version of the collection is still served"

OnDone = Callable[[WriteResult], Awaitable[None]]
"""Called with a job's write once the collection has switched (the gateway invalidates replaced chunks)."""


def process_owner() -> str:
    """This process's owner name for the jobs it runs: ``host:pid:token``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_process_alive(owner: str) -> bool:
    """Whether the process named by `owner` (see `process_owner`) still runs. The store is a local SQLite
    file, so every process writing it runs on this host: another host name means a previous machine or
    container, whose processes are gone."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OSError:
        return False
    return True


class IngestJobs:
    """Writes to collections, as jobs when they are large. One per gateway replica; plain asyncio, so a test
    drives it with a store and an injected embed function (through `RetrievalService`).

    `owner` and `owner_alive` default to this process and a liveness check of the owner's pid; tests pass
    their own to simulate a restart. `on_done` runs after a job's switch (errors in it are logged only).
    """

    def __init__(
        self,
        service: RetrievalService,
        *,
        on_done: OnDone | None = None,
        owner: str | None = None,
        owner_alive: Callable[[str], bool] = owner_process_alive,
        new_job_id: Callable[[], str] = lambda: uuid.uuid4().hex,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._service = service
        self._store = service.store
        self.config = service.ingest_config
        self._on_done = on_done
        self.owner = owner or process_owner()
        self._owner_alive = owner_alive
        self._new_job_id = new_job_id
        self._clock = clock
        self._slots = asyncio.Semaphore(self.config.max_running_jobs)
        self._tasks: set[asyncio.Task] = set()

    def recover(self) -> list[str]:
        """At start: report failed every unfinished job whose process is gone (returns their ids), and drop
        records of jobs finished longer than `finished_job_ttl_s` ago."""
        ids = self._store.fail_interrupted_jobs(self._owner_alive, INTERRUPTED_BY_RESTART)
        for job_id in ids:
            logger.warning("ingestion job %s was interrupted by a restart; reported failed", job_id)
        pruned = self._store.prune_jobs(self._clock() - self.config.finished_job_ttl_s)
        if pruned:
            logger.info("dropped %d ingestion job records older than %.0f s", pruned, self.config.finished_job_ttl_s)
        return ids

    async def submit(self, collection: str, docs: Sequence[Document]) -> WriteResult | IngestJob:
        """Write `docs` now (a `WriteResult`) or start a job for them (its queued `IngestJob`).

        Every document is validated here (bad input is the caller's error, before anything is accepted);
        chunking stops once the write is known to be a job, and the job chunks the whole write itself, so
        a large write is answered after about `job_threshold_chunks` chunks' worth of tokenization."""
        threshold = self.config.job_threshold_chunks
        prepared = await self._service.prepare(collection, docs, max_chunks_to_embed=threshold)
        if prepared is not None:
            return await self._service.write(prepared)
        job = await asyncio.to_thread(self._store.create_job, self._new_job_id(), collection, self.owner,
                                      len(docs), 0)
        task = asyncio.create_task(self._run(job.id, collection, list(docs)), name=f"ingest-{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        logger.info("ingestion job %s: %d documents into %s (more than %d chunks to embed)", job.id, len(docs),
                    collection, threshold)
        return job

    async def get(self, job_id: str) -> IngestJob:
        """The job's current record (JobNotFoundError naming `job_id` when unknown). A job left unfinished by
        a process that is gone is reported failed here, whichever replica is asked first."""
        job = await asyncio.to_thread(self._store.get_job, job_id)
        if not job.state.finished and job.owner != self.owner and not self._owner_alive(job.owner):
            await asyncio.to_thread(self._store.fail_job, job_id, INTERRUPTED_BY_RESTART, job.owner)
            job = await asyncio.to_thread(self._store.get_job, job_id)
        return job

    async def join(self) -> None:
        """Wait for every job this instance started (tests, orderly shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        """Stop the running jobs; each is reported failed and the previous versions stay served."""
        for task in list(self._tasks):
            task.cancel()
        await self.join()

    async def _run(self, job_id: str, collection: str, docs: list[Document]) -> None:
        try:
            async with self._slots:
                await asyncio.to_thread(self._store.start_job, job_id, self.owner)
                prepared = await self._service.prepare(collection, docs)
                assert prepared is not None  # no chunk limit given
                total = len(prepared.texts_to_embed)
                await asyncio.to_thread(self._store.set_job_total, job_id, self.owner, total)
                logger.info("ingestion job %s: %d chunks to embed into %s in %d batches", job_id, total, collection,
                            self._service.batches.num_batches(total))
                label = f"job {job_id} ({collection}): "
                async for span, vectors in self._service.batches.batches(prepared.texts_to_embed, label=label):
                    await asyncio.to_thread(self._store.stage_job_embeddings, job_id, self.owner,
                                            prepared.hashes_to_embed[span], vectors)
                result = await asyncio.to_thread(self._store.commit_job, job_id, self.owner, prepared)
        except asyncio.CancelledError:
            self._fail(job_id, STOPPED)  # synchronous: this task is being cancelled
            raise
        except Exception as err:  # the job's outcome is its record; nothing may escape a background task
            self._fail(job_id, str(err) if isinstance(err, RetrievalError) and str(err) else describe_error(err))
            return
        logger.info("ingestion job %s done: %s v%d", job_id, result.collection, result.version)
        if self._on_done is not None:
            try:
                await self._on_done(result)
            except Exception as err:  # the switch is committed; a failed follow-up must not undo the report
                logger.warning("ingestion job %s: after-switch hook failed: %s", job_id, describe_error(err))

    def _fail(self, job_id: str, error: str) -> None:
        logger.warning("ingestion job %s failed: %s", job_id, error)
        try:
            self._store.fail_job(job_id, error, self.owner)
        except Exception as err:  # the store itself failed: the next start reports the job interrupted
            logger.error("ingestion job %s: could not record the failure: %s", job_id, describe_error(err))
