"""RetrievalService: the store, per-collection in-memory indexes and an async embedder, together.

Freshness without coordination: before each search the service reads the collection's version from
the store (one indexed SQLite row) and rebuilds its in-memory index only when the version moved. A
document written by any process is therefore found by every process on its next request, and an
unchanged collection costs one tiny read per query. Blocking SQLite and numpy work runs in threads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.batching import AsyncEmbed, BatchEmbedder, describe_error
from retrieval.config import IngestConfig, RetrievalConfig
from retrieval.exceptions import EmbeddingError, InvalidInputError
from retrieval.index import ExactCosineIndex, VectorIndex
from retrieval.models import (
    DEFAULT_TOP_K,
    MAX_TOP_K,
    CollectionInfo,
    Document,
    PreparedUpsert,
    SearchHit,
    WriteResult,
    validate_collection_name,
)
from retrieval.samples import Progress, pending_sample_loads
from retrieval.store import CollectionStore

__all__ = ["RetrievalService"]

logger = logging.getLogger(__name__)

IndexFactory = Callable[[list, np.ndarray], VectorIndex]


@dataclass(frozen=True, slots=True)
class _LoadedIndex:
    version: int
    index: VectorIndex


class RetrievalService:
    """Search and write collections; safe to use from many coroutines of one event loop.

    Build it with `from_config` from the app's `RetrievalConfig` (store, chunk sizes and top_k limits
    all come from there); the plain constructor takes the parts, for tests and tools."""

    def __init__(
        self,
        store: CollectionStore,
        embed: AsyncEmbed,
        chunker: Callable[[str], list[str]],
        *,
        index_factory: IndexFactory = ExactCosineIndex,
        default_top_k: int = DEFAULT_TOP_K,
        max_top_k: int = MAX_TOP_K,
        ingest: IngestConfig | None = None,
    ) -> None:
        if not 1 <= default_top_k <= max_top_k:
            raise ValueError(f"need 1 <= default_top_k <= max_top_k, got {default_top_k} and {max_top_k}")
        self._store = store
        self._embed = embed
        self._chunker = chunker
        self.ingest_config = ingest or IngestConfig()
        self.batches = BatchEmbedder(embed, self.ingest_config)
        self._index_factory = index_factory
        self._default_top_k = default_top_k
        self._max_top_k = max_top_k
        self._indexes: dict[str, _LoadedIndex] = {}
        self._reload_locks: dict[str, asyncio.Lock] = {}
        self.reloads = 0  # number of index rebuilds, for stats and tests

    @classmethod
    def from_config(
        cls,
        config: RetrievalConfig,
        embed: AsyncEmbed,
        count_tokens: Callable[[str], int],
        *,
        index_factory: IndexFactory = ExactCosineIndex,
    ) -> RetrievalService:
        """The service over `config`'s store, chunking at its sizes (tokens counted by `count_tokens`,
        the served model's tokenizer) and searching within its top_k limits."""
        return cls(
            config.open_store(),
            embed,
            config.chunker(count_tokens),
            index_factory=index_factory,
            default_top_k=config.default_top_k,
            max_top_k=config.max_top_k,
            ingest=config.ingest,
        )

    @property
    def store(self) -> CollectionStore:
        return self._store

    async def search(
        self, collection: str, query: str, top_k: int | None = None, where: dict | None = None
    ) -> list[SearchHit]:
        """Top `top_k` (default: the config's `default_top_k`) chunks of `collection` for `query`,
        against the latest committed version."""
        if top_k is None:
            top_k = self._default_top_k
        validate_collection_name(collection)
        if not isinstance(query, str) or not query.strip():
            raise InvalidInputError("query", "must be a non-empty string")
        if not isinstance(top_k, int) or not 1 <= top_k <= self._max_top_k:
            raise InvalidInputError("top_k", f"must be an integer between 1 and {self._max_top_k}")
        if where is not None and not isinstance(where, dict):
            raise InvalidInputError("where", "must be an object of metadata key/value pairs")
        # Embed the query while the index is checked/refreshed: the two are independent.
        vectors, index = await asyncio.gather(self._embed_query(query), self.index(collection))
        return await asyncio.to_thread(index.search, vectors[0], top_k, where)

    async def index(self, collection: str) -> VectorIndex:
        """The in-memory index of `collection`, rebuilt first if the store's version moved."""
        version = await asyncio.to_thread(self._store.version, collection)
        loaded = self._indexes.get(collection)
        if loaded is not None and loaded.version == version:
            return loaded.index
        lock = self._reload_locks.setdefault(collection, asyncio.Lock())
        async with lock:  # one rebuild per version even when many requests notice it together
            loaded = self._indexes.get(collection)
            if loaded is not None and loaded.version >= version:
                return loaded.index
            snapshot = await asyncio.to_thread(self._store.snapshot, collection)
            index = await asyncio.to_thread(self._index_factory, snapshot.chunks, snapshot.embeddings)
            self._indexes[collection] = _LoadedIndex(snapshot.version, index)
            self.reloads += 1
            logger.info("loaded index %s v%d (%d chunks)", collection, snapshot.version, len(snapshot.chunks))
            return index

    async def upsert(self, collection: str, docs: Sequence[Document]) -> WriteResult:
        """Validate, chunk, embed (in bounded batches, outside any transaction), then write `docs`
        atomically."""
        prepared = await self.prepare(collection, docs)
        assert prepared is not None  # no chunk limit given
        return await self.write(prepared)

    async def prepare(self, collection: str, docs: Sequence[Document],
                      max_chunks_to_embed: int | None = None) -> PreparedUpsert | None:
        """Validate and chunk `docs` and find the chunks that need embedding; writes nothing. None when
        more than `max_chunks_to_embed` chunks need embedding (see `CollectionStore.prepare_upsert`)."""
        return await asyncio.to_thread(self._store.prepare_upsert, collection, docs, self._chunker,
                                       max_chunks_to_embed=max_chunks_to_embed)

    async def write(self, prepared: PreparedUpsert) -> WriteResult:
        """Embed what `prepared` needs, batch by batch, and write it in one transaction."""
        embeddings = None
        if prepared.texts_to_embed:
            embeddings = await self.batches.embed(prepared.texts_to_embed, label=f"{prepared.collection}: ")
        return await asyncio.to_thread(self._store.commit_upsert, prepared, embeddings)

    async def delete(self, collection: str, doc_id: str) -> WriteResult:
        return await asyncio.to_thread(self._store.delete_document, collection, doc_id)

    async def list_collections(self) -> list[CollectionInfo]:
        return await asyncio.to_thread(self._store.list_collections)

    async def get_collection(self, name: str) -> CollectionInfo:
        return await asyncio.to_thread(self._store.get_collection, name)

    async def create_collection(self, name: str) -> CollectionInfo:
        return await asyncio.to_thread(self._store.create_collection, name)

    async def load_samples(self, data_dir: Path, progress: Progress | None = None) -> dict[str, int]:
        """Async form of `retrieval.samples.load_sample_collections` through this service's embedder
        (e.g. the shared embedder deployment). Safe when several replicas start together: a batch
        another replica already wrote is skipped as unchanged."""
        pending = await asyncio.to_thread(pending_sample_loads, self._store, Path(data_dir))
        batch_size = min(self._store.limits.max_documents_per_call, 32)
        loaded: dict[str, int] = {}
        for name, docs in pending.items():
            for start in range(0, len(docs), batch_size):
                await self.upsert(name, docs[start : start + batch_size])
                if progress is not None:
                    progress(name, min(start + batch_size, len(docs)), len(docs))
            loaded[name] = len(docs)
        return loaded

    async def _embed_query(self, query: str) -> np.ndarray:
        try:
            vectors = np.asarray(await self._embed([query]), dtype=np.float32)
        except Exception as err:
            raise EmbeddingError(f"embedding the query failed: {describe_error(err)}") from err
        if vectors.ndim != 2 or vectors.shape[0] != 1:
            raise EmbeddingError(f"expected one query embedding, got shape {vectors.shape}")
        return vectors
