"""Errors raised by the retrieval package.

A shallow tree grouped by cause: bad input (the caller must fix the request; retrying never helps),
missing collection or document (404-like), embedding failure and store write failure (a retry may
help; nothing was written). HTTP layers map these to status codes in one place.
"""

from __future__ import annotations

__all__ = [
    "RetrievalError",
    "InvalidInputError",
    "InvalidDocumentError",
    "InvalidCollectionNameError",
    "CollectionNotFoundError",
    "DocumentNotFoundError",
    "EmbeddingError",
    "EmbeddingTimeoutError",
    "JobNotFoundError",
    "JobInterruptedError",
    "StoreWriteError",
]


class RetrievalError(Exception):
    """Base class of every error raised by the retrieval package."""


class InvalidInputError(RetrievalError, ValueError):
    """Raised when a request field is malformed; `field` names it. Retrying the same input never helps."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def __reduce__(self):  # keep both fields when Ray pickles the error between processes
        return (type(self), (self.field, self.message))


class InvalidDocumentError(InvalidInputError):
    """Raised when a document fails validation (id pattern, empty or oversized text, bad metadata,
    too many documents per call). `field` names the offending field, e.g. ``documents[2].text``."""


class InvalidCollectionNameError(InvalidInputError):
    """Raised when a collection name does not match ``[a-z0-9_-]{1,64}``."""


class CollectionNotFoundError(RetrievalError, KeyError):
    """Raised when a collection does not exist. Create it first; retrying does not help. `field` names the
    request field that held the name ("collection" unless the caller says otherwise, e.g. a path parameter)."""

    def __init__(self, name: str, field: str = "collection") -> None:
        super().__init__(name)
        self.name = name
        self.field = field

    def __reduce__(self):  # keep the fields when Ray pickles the error between processes
        return (type(self), (self.name, self.field))

    def __str__(self) -> str:
        return f"{self.field}: collection not found: {self.name!r}"


class DocumentNotFoundError(RetrievalError, KeyError):
    """Raised when deleting a document that is not in the collection; `field` names the request field that
    held the document id."""

    def __init__(self, collection: str, doc_id: str, field: str = "doc_id") -> None:
        super().__init__(doc_id)
        self.collection = collection
        self.doc_id = doc_id
        self.field = field

    def __reduce__(self):
        return (type(self), (self.collection, self.doc_id, self.field))

    def __str__(self) -> str:
        return f"{self.field}: document not found: {self.collection!r}/{self.doc_id!r}"


class EmbeddingError(RetrievalError):
    """Raised when the embedder fails or returns vectors of the wrong shape. Raised before any write
    starts, so the store is untouched; a retry may help if the embedder was transiently unavailable."""


class EmbeddingTimeoutError(EmbeddingError):
    """Raised when one batch of a write's chunks got no embeddings within `IngestConfig.batch_timeout_s`,
    on every attempt; the message names the batch, its size and the timeout. Nothing was written. A retry
    helps once the embedder is less busy; a smaller `batch_size` or a longer `batch_timeout_s` avoids it."""


class JobNotFoundError(RetrievalError, KeyError):
    """Raised when no ingestion job has the requested id (never created, or in another store). `field`
    names the request field that held the id. Retrying does not help."""

    def __init__(self, job_id: str, field: str = "job_id") -> None:
        super().__init__(job_id)
        self.job_id = job_id
        self.field = field

    def __reduce__(self):
        return (type(self), (self.job_id, self.field))

    def __str__(self) -> str:
        return f"{self.field}: no ingestion job {self.job_id!r}"


class JobInterruptedError(RetrievalError):
    """Raised inside an ingestion job when its record is no longer running under this owner (it was
    reported failed, e.g. as interrupted by a restart). The job stops; nothing of it was written, so the
    previous version of the collection stays served. Submitting the documents again is the retry."""


class StoreWriteError(RetrievalError):
    """Raised when a write transaction fails (disk, lock timeout, injected fault). The transaction was
    rolled back, so the previous version is intact; a retry may help for lock timeouts."""
