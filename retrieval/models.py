"""The retrieval layer's values: documents, chunks, search hits, write results, limits and validators.

Plain data with no I/O, so that every layer above (the pipeline, the agents, the HTTP gateway) can
import it without pulling in the store, the embedder or the index. `SearchHit` is the project's one
retrieved-chunk type, from the vector index to the agents' post-processing and the HTTP response.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from retrieval.exceptions import InvalidCollectionNameError, InvalidDocumentError

__all__ = [
    "COLLECTION_NAME_RE",
    "DEFAULT_TOP_K",
    "DOC_ID_RE",
    "MAX_TOP_K",
    "Chunk",
    "CollectionInfo",
    "CollectionSnapshot",
    "Document",
    "IngestJob",
    "JobState",
    "PreparedDoc",
    "PreparedUpsert",
    "SearchHit",
    "StoreLimits",
    "WriteResult",
    "content_hash",
    "document_hash",
    "make_chunk",
    "metadata_json",
    "validate_collection_name",
    "validate_doc_id",
    "validate_documents",
]

COLLECTION_NAME_RE = re.compile(r"[a-z0-9_-]{1,64}")
DOC_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")

DEFAULT_TOP_K = 5
"""Chunks retrieved when a request does not say (`RetrievalConfig.default_top_k`'s default)."""
MAX_TOP_K = 20
"""Largest top_k a request may ask for: the HTTP request schema's bound and the ceiling (and default)
of `RetrievalConfig.max_top_k`."""


class StoreLimits(BaseModel):
    """Input limits enforced on every write; set from the app config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_document_chars: int = Field(200_000, gt=0, description="Largest accepted document text, in characters.")
    max_documents_per_call: int = Field(256, gt=0, description="Most documents accepted by one upsert call.")
    max_metadata_bytes: int = Field(16_384, gt=0, description="Largest accepted metadata, as compact JSON bytes.")
    busy_timeout_s: float = Field(30.0, gt=0, description="How long a write waits for another writer's lock.")


@dataclass(frozen=True, slots=True)
class Document:
    """A user document as submitted: id, full text and free-form JSON metadata."""

    id: str
    text: str
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Chunk:
    """One retrieval unit and one token-cache entry. `content_hash` is the sha256 of `text`;
    `chunk_id` is ``"<doc_id>#<position>"`` (see `make_chunk`)."""

    chunk_id: str
    doc_id: str
    collection: str
    position: int
    text: str
    content_hash: str
    metadata: dict = field(default_factory=dict)

    @property
    def title(self) -> str:
        """The document's metadata title when it has a non-empty one, else its id."""
        return str((self.metadata or {}).get("title") or self.doc_id)


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One retrieved chunk and its cosine similarity to the query (higher is closer).

    The one retrieved-chunk type from the index to the HTTP response; the properties read through
    to the chunk so that consumers need not know its layout."""

    chunk: Chunk
    score: float

    @property
    def chunk_id(self) -> str:
        return self.chunk.chunk_id

    @property
    def doc_id(self) -> str:
        return self.chunk.doc_id

    @property
    def title(self) -> str:
        return self.chunk.title

    @property
    def text(self) -> str:
        return self.chunk.text


@dataclass(frozen=True, slots=True)
class CollectionInfo:
    """A collection's name, its document and chunk counts, and the version its last write set."""

    name: str
    documents: int
    chunks: int
    version: int


@dataclass(frozen=True, slots=True)
class WriteResult:
    """Outcome of a write. `changed_chunks` are chunks whose (chunk_id, content) did not exist before;
    `removed_chunks` are old chunks whose (chunk_id, content) no longer exists. A chunk whose text
    changed appears in both (old content in removed, new in changed) so that callers can invalidate
    token-cache entries by either key. An upsert that changed nothing keeps the version."""

    collection: str
    version: int
    upserted_doc_ids: list[str]
    changed_chunks: list[Chunk]
    removed_chunks: list[Chunk]
    skipped_doc_ids: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The write as the HTTP API reports it (the PUT's 200 body, a done job's `result`)."""
        return {"collection": self.collection, "version": self.version, "upserted": list(self.upserted_doc_ids),
                "skipped": list(self.skipped_doc_ids), "changed_chunks": len(self.changed_chunks),
                "removed_chunks": len(self.removed_chunks)}


class JobState(StrEnum):
    """Where an ingestion job is: waiting for a slot, embedding, switched in, or given up."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED)


@dataclass(frozen=True, slots=True)
class IngestJob:
    """An ingestion job as recorded in the store. `done`/`total` count chunks to embed; `owner` names
    the process running it (``host:pid:token``), so that a restart can tell its jobs were interrupted;
    `result` is the write's `WriteResult.summary()` once done; timestamps are Unix seconds."""

    id: str
    collection: str
    state: JobState
    owner: str
    documents: int
    done: int
    total: int
    error: str | None
    result: dict[str, Any] | None
    created_at: float
    started_at: float | None
    finished_at: float | None


@dataclass(frozen=True, slots=True)
class CollectionSnapshot:
    """A consistent read of one collection: the chunks and their embeddings at `version`."""

    collection: str
    version: int
    chunks: list[Chunk]
    embeddings: np.ndarray  # (len(chunks), dim) float32, L2-normalized rows


@dataclass(frozen=True, slots=True)
class PreparedDoc:
    """One validated document with its hash and its chunk texts and their hashes, in order."""

    doc: Document
    doc_hash: str
    chunk_texts: list[str]
    chunk_hashes: list[str]


@dataclass(frozen=True, slots=True)
class PreparedUpsert:
    """Validated, chunked documents plus the chunk texts that still need an embedding.

    Splitting prepare / embed / commit lets an async caller run the embedder outside any thread or
    transaction; `known_embeddings` reuses stored vectors of unchanged chunk texts (keyed by hash)."""

    collection: str
    docs: list[PreparedDoc]
    texts_to_embed: list[str]
    hashes_to_embed: list[str]
    known_embeddings: dict[str, np.ndarray]


def content_hash(text: str) -> str:
    """sha256 hex of the UTF-8 text: the identity of a chunk's content across processes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def metadata_json(metadata: dict) -> str:
    """The canonical (sorted, compact) JSON of a document's metadata, as stored and hashed."""
    return json.dumps(metadata, sort_keys=True, separators=(",", ":"))


def document_hash(doc: Document) -> str:
    """Hash of a document's text and metadata: an unchanged document is skipped on upsert."""
    return content_hash(f"{doc.text}\x00{metadata_json(doc.metadata)}")


def make_chunk(collection: str, doc_id: str, position: int, text: str, chash: str, metadata: dict) -> Chunk:
    """The chunk at `position` of document `doc_id`, with its id ``"<doc_id>#<position>"``."""
    return Chunk(
        chunk_id=f"{doc_id}#{position}",
        doc_id=doc_id,
        collection=collection,
        position=position,
        text=text,
        content_hash=chash,
        metadata=metadata,
    )


def validate_collection_name(name: Any) -> str:
    """Return `name` if it is a valid collection name, else raise InvalidCollectionNameError."""
    if not isinstance(name, str) or COLLECTION_NAME_RE.fullmatch(name) is None:
        raise InvalidCollectionNameError("collection", f"must match [a-z0-9_-]{{1,64}}, got {name!r}")
    return name


def validate_doc_id(doc_id: Any, field_name: str = "doc_id") -> str:
    """Return `doc_id` if it is a valid document id, else raise InvalidDocumentError naming `field_name`."""
    if not isinstance(doc_id, str) or DOC_ID_RE.fullmatch(doc_id) is None:
        raise InvalidDocumentError(field_name, f"must match [A-Za-z0-9._:-]{{1,128}}, got {doc_id!r}")
    return doc_id


def validate_documents(docs: Sequence[Document], limits: StoreLimits) -> None:
    """Raise InvalidDocumentError naming the first bad field; checks everything before any work."""
    if not isinstance(docs, Sequence) or isinstance(docs, (str, bytes)):
        raise InvalidDocumentError("documents", "must be a list of documents")
    if not docs:
        raise InvalidDocumentError("documents", "must contain at least one document")
    if len(docs) > limits.max_documents_per_call:
        raise InvalidDocumentError(
            "documents", f"at most {limits.max_documents_per_call} documents per call, got {len(docs)}"
        )
    seen: dict[str, int] = {}
    for i, doc in enumerate(docs):
        where = f"documents[{i}]"
        if not isinstance(doc, Document):
            raise InvalidDocumentError(where, "must be a Document")
        validate_doc_id(doc.id, f"{where}.id")
        if doc.id in seen:
            raise InvalidDocumentError(f"{where}.id", f"duplicate of documents[{seen[doc.id]}].id {doc.id!r}")
        seen[doc.id] = i
        if not isinstance(doc.text, str) or not doc.text.strip():
            raise InvalidDocumentError(f"{where}.text", "must be a non-empty string")
        if len(doc.text) > limits.max_document_chars:
            raise InvalidDocumentError(
                f"{where}.text", f"{len(doc.text)} characters exceeds the limit of {limits.max_document_chars}"
            )
        if not isinstance(doc.metadata, dict):
            raise InvalidDocumentError(f"{where}.metadata", "must be a JSON object")
        try:
            meta = json.dumps(doc.metadata, sort_keys=True, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as err:
            raise InvalidDocumentError(f"{where}.metadata", f"must be JSON-serializable: {err}") from err
        if len(meta.encode("utf-8")) > limits.max_metadata_bytes:
            raise InvalidDocumentError(f"{where}.metadata", f"exceeds {limits.max_metadata_bytes} bytes as JSON")
