"""Durable collection store: the source of truth for documents, chunks and embeddings.

SQLite in WAL mode, one file: any number of processes (every agent replica) read while one writes,
and a reader never sees a half-applied write. Each collection carries a version that every successful
change bumps; readers compare versions to know when their in-memory index is stale.

Ingestion jobs (`retrieval.jobs`) are recorded here too: a job's row says how far it got, the vectors
of its finished batches are staged in `job_embeddings`, and `commit_job` writes the documents, marks the
job done and drops its staged rows in one transaction, so the collection switches version only when the
whole job is done. A job whose process died stays `running` in its row until `fail_interrupted_jobs`
reports it failed; its staged rows never touched the served tables.

Atomicity: an upsert first does everything that can fail slowly or for reasons outside SQLite
(validation, chunking, embedding) and only then opens one `BEGIN IMMEDIATE` transaction for the
writes. Any exception inside the transaction rolls it back, so the previous version stays readable and
the version number does not move. Redis and the token cache are caches of this data, never the copy.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.exceptions import (
    CollectionNotFoundError,
    DocumentNotFoundError,
    EmbeddingError,
    InvalidDocumentError,
    JobInterruptedError,
    JobNotFoundError,
    StoreWriteError,
)
from retrieval.models import (
    Chunk,
    CollectionInfo,
    CollectionSnapshot,
    Document,
    IngestJob,
    JobState,
    PreparedDoc,
    PreparedUpsert,
    StoreLimits,
    WriteResult,
    content_hash,
    document_hash,
    make_chunk,
    metadata_json,
    validate_collection_name,
    validate_doc_id,
    validate_documents,
)
from settings.paths import STORE_FILENAME

__all__ = ["CollectionStore", "FaultHook"]

logger = logging.getLogger(__name__)

FaultHook = Callable[[str], None]
"""Test hook: called with a step name at points inside the write transaction; raising aborts it."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL DEFAULT 0,
    dim INTEGER,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS documents (
    collection TEXT NOT NULL REFERENCES collections(name) ON DELETE CASCADE,
    doc_id TEXT NOT NULL,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (collection, doc_id)
);
CREATE TABLE IF NOT EXISTS chunks (
    collection TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    text TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    metadata TEXT NOT NULL,
    embedding BLOB NOT NULL,
    PRIMARY KEY (collection, doc_id, position),
    FOREIGN KEY (collection, doc_id) REFERENCES documents(collection, doc_id) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    collection TEXT NOT NULL,
    state TEXT NOT NULL,
    owner TEXT NOT NULL,
    documents INTEGER NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL,
    error TEXT,
    result TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state);
CREATE TABLE IF NOT EXISTS job_embeddings (
    job_id TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    embedding BLOB NOT NULL,
    PRIMARY KEY (job_id, content_hash)
);
"""

_JOB_COLUMNS = ("id, collection, state, owner, documents, done, total, error, result, created_at, started_at, "
                "finished_at")
_ACTIVE = (JobState.QUEUED.value, JobState.RUNNING.value)


class CollectionStore:
    """SQLite-backed store of collections, documents, chunks and embeddings.

    Safe to share between threads (one connection per thread) and between processes (WAL). Pass
    `fault_hook` only in tests: it is called with a step name inside each write transaction.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        limits: StoreLimits | None = None,
        fault_hook: FaultHook | None = None,
    ) -> None:
        path = Path(path)
        if path.is_dir():
            path = path / STORE_FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.limits = limits or StoreLimits()
        self._fault_hook = fault_hook
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._conn().executescript(_SCHEMA)

    # -- connections ---------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path,
                timeout=self.limits.busy_timeout_s,
                isolation_level=None,  # explicit BEGIN/COMMIT only
                check_same_thread=False,
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL mode
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    def close(self) -> None:
        """Close every connection this store opened (in any thread)."""
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query inside sees one consistent snapshot."""
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as err:
            raise StoreWriteError(f"could not start write transaction: {err}") from err
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as err:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(err, sqlite3.Error):
                raise StoreWriteError(f"write failed and was rolled back: {err}") from err
            raise

    def _fault(self, step: str) -> None:
        if self._fault_hook is not None:
            self._fault_hook(step)

    # -- collections -----------------------------------------------------------------------------

    def create_collection(self, name: str) -> CollectionInfo:
        """Create `name` if missing (idempotent) and return its info."""
        validate_collection_name(name)
        now = time.time()
        with self._write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO collections(name, version, created_at, updated_at) VALUES (?, 0, ?, ?)",
                (name, now, now),
            )
        return self.get_collection(name)

    def list_collections(self) -> list[CollectionInfo]:
        with self._read() as conn:
            rows = conn.execute(
                """SELECT c.name, c.version,
                          (SELECT COUNT(*) FROM documents d WHERE d.collection = c.name),
                          (SELECT COUNT(*) FROM chunks k WHERE k.collection = c.name)
                   FROM collections c ORDER BY c.name"""
            ).fetchall()
        return [CollectionInfo(name=r[0], documents=r[2], chunks=r[3], version=r[1]) for r in rows]

    def get_collection(self, name: str) -> CollectionInfo:
        validate_collection_name(name)
        with self._read() as conn:
            row = conn.execute(
                """SELECT c.version,
                          (SELECT COUNT(*) FROM documents d WHERE d.collection = c.name),
                          (SELECT COUNT(*) FROM chunks k WHERE k.collection = c.name)
                   FROM collections c WHERE c.name = ?""",
                (name,),
            ).fetchone()
        if row is None:
            raise CollectionNotFoundError(name)
        return CollectionInfo(name=name, documents=row[1], chunks=row[2], version=row[0])

    def version(self, collection: str) -> int:
        """The collection's version: one indexed row read, cheap enough to call on every search."""
        row = self._conn().execute("SELECT version FROM collections WHERE name = ?", (collection,)).fetchone()
        if row is None:
            validate_collection_name(collection)
            raise CollectionNotFoundError(collection)
        return int(row[0])

    # -- reads -----------------------------------------------------------------------------------

    def snapshot(self, collection: str) -> CollectionSnapshot:
        """Chunks and embeddings of `collection` with the version they belong to, read atomically."""
        validate_collection_name(collection)
        with self._read() as conn:
            row = conn.execute("SELECT version, dim FROM collections WHERE name = ?", (collection,)).fetchone()
            if row is None:
                raise CollectionNotFoundError(collection)
            version, dim = int(row[0]), row[1]
            rows = conn.execute(
                """SELECT doc_id, position, text, content_hash, metadata, embedding FROM chunks
                   WHERE collection = ? ORDER BY doc_id, position""",
                (collection,),
            ).fetchall()
        chunks: list[Chunk] = []
        metas: dict[str, dict] = {}  # share one metadata dict per document
        for doc_id, position, text, chash, meta_json, _ in rows:
            meta = metas.get(doc_id)
            if meta is None:
                meta = metas[doc_id] = json.loads(meta_json)
            chunks.append(make_chunk(collection, doc_id, position, text, chash, meta))
        if rows:
            embeddings = np.frombuffer(b"".join(r[5] for r in rows), dtype=np.float32).reshape(len(rows), -1)
        else:
            embeddings = np.zeros((0, dim or 0), dtype=np.float32)
        return CollectionSnapshot(collection, version, chunks, embeddings)

    def load(self, collection: str) -> tuple[list[Chunk], np.ndarray]:
        """All chunks of `collection` (ordered by doc id, position) and their (n, dim) embeddings."""
        snap = self.snapshot(collection)
        return snap.chunks, snap.embeddings

    def get_document(self, collection: str, doc_id: str) -> Document | None:
        """The stored document, or None if the collection has no such document."""
        validate_collection_name(collection)
        with self._read() as conn:
            if conn.execute("SELECT 1 FROM collections WHERE name = ?", (collection,)).fetchone() is None:
                raise CollectionNotFoundError(collection)
            row = conn.execute(
                "SELECT text, metadata FROM documents WHERE collection = ? AND doc_id = ?", (collection, doc_id)
            ).fetchone()
        if row is None:
            return None
        return Document(id=doc_id, text=row[0], metadata=json.loads(row[1]))

    def list_document_ids(self, collection: str) -> list[str]:
        validate_collection_name(collection)
        with self._read() as conn:
            if conn.execute("SELECT 1 FROM collections WHERE name = ?", (collection,)).fetchone() is None:
                raise CollectionNotFoundError(collection)
            rows = conn.execute(
                "SELECT doc_id FROM documents WHERE collection = ? ORDER BY doc_id", (collection,)
            ).fetchall()
        return [r[0] for r in rows]

    # -- writes ----------------------------------------------------------------------------------

    def validate_documents(self, docs: Sequence[Document]) -> None:
        """Raise InvalidDocumentError naming the first bad field, under this store's limits."""
        validate_documents(docs, self.limits)

    def prepare_upsert(
        self,
        collection: str,
        docs: Sequence[Document],
        chunker: Callable[[str], list[str]],
        *,
        max_chunks_to_embed: int | None = None,
    ) -> PreparedUpsert | None:
        """Validate and chunk `docs`, and work out which chunk texts need embedding. Writes nothing.

        With `max_chunks_to_embed`, chunking stops and None is returned as soon as more chunks than that
        need embedding: a caller that will run such a write as a job learns it after chunking about that
        many chunks, not the whole write (every document is still validated first)."""
        validate_collection_name(collection)
        self.validate_documents(docs)
        # Reuse embeddings of chunk texts already stored for these documents (edits usually touch a
        # few chunks); an embedding depends only on the text, so a concurrent writer cannot make a
        # reused vector wrong.
        ids = [doc.id for doc in docs]
        known: dict[str, np.ndarray] = {}
        with self._read() as conn:
            if conn.execute("SELECT 1 FROM collections WHERE name = ?", (collection,)).fetchone() is None:
                raise CollectionNotFoundError(collection)
            for start in range(0, len(ids), 500):
                part = ids[start : start + 500]
                marks = ",".join("?" * len(part))
                for chash, blob in conn.execute(
                    f"SELECT content_hash, embedding FROM chunks WHERE collection = ? AND doc_id IN ({marks})",
                    (collection, *part),
                ):
                    known[chash] = np.frombuffer(blob, dtype=np.float32)
        prepared: list[PreparedDoc] = []
        texts_to_embed: list[str] = []
        hashes_to_embed: list[str] = []
        pending: set[str] = set()
        for i, doc in enumerate(docs):
            texts = [t for t in chunker(doc.text) if t.strip()]
            if not texts:
                raise InvalidDocumentError(f"documents[{i}].text", "produced no chunks")
            p = PreparedDoc(doc, document_hash(doc), texts, [content_hash(t) for t in texts])
            prepared.append(p)
            for text, chash in zip(p.chunk_texts, p.chunk_hashes):
                if chash not in known and chash not in pending:
                    pending.add(chash)
                    texts_to_embed.append(text)
                    hashes_to_embed.append(chash)
            if max_chunks_to_embed is not None and len(texts_to_embed) > max_chunks_to_embed:
                return None
        return PreparedUpsert(collection, prepared, texts_to_embed, hashes_to_embed, known)

    def commit_upsert(self, prepared: PreparedUpsert, embeddings: np.ndarray | None) -> WriteResult:
        """Write a prepared upsert in one transaction; `embeddings` rows match `texts_to_embed`."""
        vectors = dict(prepared.known_embeddings)
        if prepared.texts_to_embed:
            matrix = _check_embeddings(embeddings, len(prepared.texts_to_embed))
            vectors.update(zip(prepared.hashes_to_embed, matrix))
        with self._write() as conn:
            result = self._apply_upsert(conn, prepared, vectors, time.time())
        _log_upsert(result)
        return result

    def _apply_upsert(
        self, conn: sqlite3.Connection, prepared: PreparedUpsert, vectors: dict[str, np.ndarray], now: float
    ) -> WriteResult:
        """The writes of an upsert, inside the caller's write transaction; `vectors` maps every chunk
        hash of `prepared` to its (normalized) embedding."""
        dims = {v.shape[0] for v in vectors.values()}
        if len(dims) > 1:
            raise EmbeddingError(f"embeddings of mixed dimensions {sorted(dims)}")
        dim = dims.pop() if dims else None
        collection = prepared.collection
        changed: list[Chunk] = []
        removed: list[Chunk] = []
        upserted: list[str] = []
        skipped: list[str] = []
        row = conn.execute("SELECT version, dim FROM collections WHERE name = ?", (collection,)).fetchone()
        if row is None:
            raise CollectionNotFoundError(collection)
        version, stored_dim = int(row[0]), row[1]
        if stored_dim is not None and dim is not None and stored_dim != dim:
            raise EmbeddingError(f"collection {collection!r} holds {stored_dim}-d embeddings, got {dim}-d")
        self._fault("begin")
        for p in prepared.docs:
            doc = p.doc
            old = conn.execute(
                "SELECT content_hash FROM documents WHERE collection = ? AND doc_id = ?", (collection, doc.id)
            ).fetchone()
            if old is not None and old[0] == p.doc_hash:
                skipped.append(doc.id)
                continue
            old_chunks = self._doc_chunks(conn, collection, doc.id)
            meta_json = metadata_json(doc.metadata)
            conn.execute(
                """INSERT INTO documents(collection, doc_id, text, metadata, content_hash, updated_at)
                   VALUES (?, ?, ?, ?, ?, ?)
                   ON CONFLICT(collection, doc_id) DO UPDATE SET text = excluded.text,
                   metadata = excluded.metadata, content_hash = excluded.content_hash,
                   updated_at = excluded.updated_at""",
                (collection, doc.id, doc.text, meta_json, p.doc_hash, now),
            )
            self._fault("document_written")
            conn.execute("DELETE FROM chunks WHERE collection = ? AND doc_id = ?", (collection, doc.id))
            self._fault("chunks_deleted")
            new_chunks = [
                make_chunk(collection, doc.id, pos, text, chash, doc.metadata)
                for pos, (text, chash) in enumerate(zip(p.chunk_texts, p.chunk_hashes))
            ]
            conn.executemany(
                """INSERT INTO chunks(collection, doc_id, position, text, content_hash, metadata, embedding)
                   VALUES (?, ?, ?, ?, ?, ?, ?)""",
                [
                    (collection, doc.id, c.position, c.text, c.content_hash, meta_json,
                     vectors[c.content_hash].astype(np.float32, copy=False).tobytes())
                    for c in new_chunks
                ],
            )
            self._fault("chunks_written")
            old_keys = {(c.chunk_id, c.content_hash) for c in old_chunks}
            new_keys = {(c.chunk_id, c.content_hash) for c in new_chunks}
            changed.extend(c for c in new_chunks if (c.chunk_id, c.content_hash) not in old_keys)
            removed.extend(c for c in old_chunks if (c.chunk_id, c.content_hash) not in new_keys)
            upserted.append(doc.id)
        if upserted:
            version += 1
            conn.execute(
                "UPDATE collections SET version = ?, dim = COALESCE(dim, ?), updated_at = ? WHERE name = ?",
                (version, dim, now, collection),
            )
        self._fault("before_commit")
        return WriteResult(collection, version, upserted, changed, removed, skipped)

    def upsert_documents(
        self,
        collection: str,
        docs: Sequence[Document],
        chunker: Callable[[str], list[str]],
        embed: Callable[[list[str]], np.ndarray],
    ) -> WriteResult:
        """Insert or replace `docs` atomically. Chunking and embedding run before the transaction;
        documents whose text and metadata are unchanged are skipped; the version is bumped once if
        anything changed. On any failure nothing is written and the previous version stays readable."""
        prepared = self.prepare_upsert(collection, docs, chunker)
        assert prepared is not None  # no chunk limit given
        embeddings = None
        if prepared.texts_to_embed:
            try:
                embeddings = embed(list(prepared.texts_to_embed))
            except Exception as err:
                raise EmbeddingError(f"embedding {len(prepared.texts_to_embed)} chunks failed: {err}") from err
        return self.commit_upsert(prepared, embeddings)

    def delete_document(self, collection: str, doc_id: str) -> WriteResult:
        """Delete one document and its chunks atomically and bump the version."""
        validate_collection_name(collection)
        validate_doc_id(doc_id)
        with self._write() as conn:
            row = conn.execute("SELECT version FROM collections WHERE name = ?", (collection,)).fetchone()
            if row is None:
                raise CollectionNotFoundError(collection)
            old_chunks = self._doc_chunks(conn, collection, doc_id)
            cur = conn.execute("DELETE FROM documents WHERE collection = ? AND doc_id = ?", (collection, doc_id))
            if cur.rowcount == 0:
                raise DocumentNotFoundError(collection, doc_id)
            self._fault("document_deleted")
            conn.execute("DELETE FROM chunks WHERE collection = ? AND doc_id = ?", (collection, doc_id))
            version = int(row[0]) + 1
            conn.execute(
                "UPDATE collections SET version = ?, updated_at = ? WHERE name = ?", (version, time.time(), collection)
            )
            self._fault("before_commit")
        logger.info("deleted %s/%s (v%d): %d chunks removed", collection, doc_id, version, len(old_chunks))
        return WriteResult(collection, version, [], [], old_chunks)

    # -- ingestion jobs --------------------------------------------------------------------------

    def create_job(self, job_id: str, collection: str, owner: str, documents: int, total: int) -> IngestJob:
        """Record a queued job that will embed `total` chunks of `documents` documents into `collection`."""
        validate_collection_name(collection)
        now = time.time()
        with self._write() as conn:
            conn.execute(
                """INSERT INTO jobs(id, collection, state, owner, documents, done, total, created_at, updated_at)
                   VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?)""",
                (job_id, collection, JobState.QUEUED.value, owner, documents, total, now, now),
            )
        return self.get_job(job_id)

    def get_job(self, job_id: str) -> IngestJob:
        """The job's record; JobNotFoundError when there is none."""
        row = self._conn().execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFoundError(job_id)
        return _job(row)

    def start_job(self, job_id: str, owner: str) -> None:
        """queued -> running; JobInterruptedError if the job is no longer queued under `owner`."""
        now = time.time()
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE jobs SET state = ?, started_at = ?, updated_at = ? WHERE id = ? AND state = ? AND owner = ?",
                (JobState.RUNNING.value, now, now, job_id, JobState.QUEUED.value, owner),
            )
            if cur.rowcount == 0:
                raise JobInterruptedError(f"job {job_id} is no longer queued under this process")

    def set_job_total(self, job_id: str, owner: str, total: int) -> None:
        """The number of chunks the running job will embed, known once its documents are chunked."""
        with self._write() as conn:
            cur = conn.execute("UPDATE jobs SET total = ?, updated_at = ? WHERE id = ? AND state = ? AND owner = ?",
                               (total, time.time(), job_id, JobState.RUNNING.value, owner))
            if cur.rowcount == 0:
                raise JobInterruptedError(f"job {job_id} is no longer running under this process")

    def stage_job_embeddings(self, job_id: str, owner: str, hashes: Sequence[str], embeddings: np.ndarray) -> int:
        """Keep one finished batch's vectors for the job's final write and advance its `done` count, in one
        transaction; returns the new count. Served tables are untouched."""
        matrix = _check_embeddings(embeddings, len(hashes))
        with self._write() as conn:
            row = conn.execute("SELECT done FROM jobs WHERE id = ? AND state = ? AND owner = ?",
                               (job_id, JobState.RUNNING.value, owner)).fetchone()
            if row is None:
                raise JobInterruptedError(f"job {job_id} is no longer running under this process")
            conn.executemany(
                "INSERT OR REPLACE INTO job_embeddings(job_id, content_hash, embedding) VALUES (?, ?, ?)",
                [(job_id, h, v.astype(np.float32, copy=False).tobytes()) for h, v in zip(hashes, matrix)],
            )
            done = int(row[0]) + len(hashes)
            conn.execute("UPDATE jobs SET done = ?, updated_at = ? WHERE id = ?", (done, time.time(), job_id))
        return done

    def commit_job(self, job_id: str, owner: str, prepared: PreparedUpsert) -> WriteResult:
        """The switch: write `prepared` with the job's staged vectors, mark the job done with its result and
        drop its staged rows, all in one transaction. On any error nothing of it is applied and the job
        stays running (the caller reports it failed)."""
        now = time.time()
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM jobs WHERE id = ? AND state = ? AND owner = ?",
                            (job_id, JobState.RUNNING.value, owner)).fetchone() is None:
                raise JobInterruptedError(f"job {job_id} is no longer running under this process")
            staged = {h: np.frombuffer(blob, dtype=np.float32) for h, blob in conn.execute(
                "SELECT content_hash, embedding FROM job_embeddings WHERE job_id = ?", (job_id,))}
            missing = [h for h in prepared.hashes_to_embed if h not in staged]
            if missing:
                raise StoreWriteError(f"job {job_id} has {len(missing)} of {len(prepared.hashes_to_embed)} "
                                      "chunk embeddings missing")
            result = self._apply_upsert(conn, prepared, {**prepared.known_embeddings, **staged}, now)
            self._fault("job_switch")
            conn.execute(
                """UPDATE jobs SET state = ?, done = total, result = ?, finished_at = ?, updated_at = ?
                   WHERE id = ?""",
                (JobState.DONE.value, json.dumps(result.summary()), now, now, job_id),
            )
            conn.execute("DELETE FROM job_embeddings WHERE job_id = ?", (job_id,))
        _log_upsert(result)
        return result

    def fail_job(self, job_id: str, error: str, owner: str | None = None) -> bool:
        """Mark an unfinished job failed with `error` and drop its staged rows; only if `owner` still runs it
        when given. False when the job had already finished (or changed owner)."""
        now = time.time()
        query = "UPDATE jobs SET state = ?, error = ?, finished_at = ?, updated_at = ? WHERE id = ? AND state IN (?, ?)"
        params: tuple = (JobState.FAILED.value, error, now, now, job_id, *_ACTIVE)
        if owner is not None:
            query += " AND owner = ?"
            params += (owner,)
        with self._write() as conn:
            failed = conn.execute(query, params).rowcount > 0
            if failed:
                conn.execute("DELETE FROM job_embeddings WHERE job_id = ?", (job_id,))
        return failed

    def prune_jobs(self, finished_before: float) -> int:
        """Drop the records of jobs that finished before `finished_before` (Unix seconds); returns how many."""
        with self._write() as conn:
            return conn.execute("DELETE FROM jobs WHERE state IN (?, ?) AND finished_at < ?",
                                (JobState.DONE.value, JobState.FAILED.value, finished_before)).rowcount

    def fail_interrupted_jobs(self, owner_alive: Callable[[str], bool], error: str) -> list[str]:
        """Report failed every queued or running job whose owner process is gone (the app restarted while
        it ran); returns their ids. Their staged rows are dropped; the collections were never touched."""
        rows = self._conn().execute(
            "SELECT id, owner FROM jobs WHERE state IN (?, ?)", _ACTIVE
        ).fetchall()
        return [job_id for job_id, owner in rows if not owner_alive(owner) and self.fail_job(job_id, error, owner)]

    @staticmethod
    def _doc_chunks(conn: sqlite3.Connection, collection: str, doc_id: str) -> list[Chunk]:
        rows = conn.execute(
            """SELECT position, text, content_hash, metadata FROM chunks
               WHERE collection = ? AND doc_id = ? ORDER BY position""",
            (collection, doc_id),
        ).fetchall()
        return [make_chunk(collection, doc_id, r[0], r[1], r[2], json.loads(r[3])) for r in rows]


def _job(row: tuple) -> IngestJob:
    return IngestJob(id=row[0], collection=row[1], state=JobState(row[2]), owner=row[3], documents=row[4],
                     done=row[5], total=row[6], error=row[7], result=json.loads(row[8]) if row[8] else None,
                     created_at=row[9], started_at=row[10], finished_at=row[11])


def _log_upsert(result: WriteResult) -> None:
    if result.upserted_doc_ids:
        logger.info(
            "upserted %d documents into %s (v%d): %d chunks changed, %d removed, %d skipped",
            len(result.upserted_doc_ids), result.collection, result.version, len(result.changed_chunks),
            len(result.removed_chunks), len(result.skipped_doc_ids),
        )


def _check_embeddings(embeddings: Any, n: int) -> np.ndarray:
    """(n, dim) finite float32 rows, L2-normalized here so that search can use a plain dot product."""
    try:
        matrix = np.asarray(embeddings, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise EmbeddingError(f"embeddings are not a numeric array: {err}") from err
    if matrix.ndim != 2 or matrix.shape[0] != n or matrix.shape[1] == 0:
        raise EmbeddingError(f"expected embeddings of shape ({n}, dim), got {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise EmbeddingError("embeddings contain NaN or infinity")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if (norms == 0).any():
        raise EmbeddingError("embeddings contain a zero vector")
    return matrix / norms
