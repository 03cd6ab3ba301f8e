"""Retrieval: durable collections, deterministic chunking, embedding and vector search.

Plain Python (no Ray or Serve imports) so that every piece runs in a unit test; the Serve embedder
deployment lives in `deployments/embedder.py`. Import from the modules (this package re-exports
nothing, so that `retrieval.models` stays cheap for the layers above):

- `retrieval.models`: the values (Document, Chunk, SearchHit, CollectionInfo, WriteResult, StoreLimits,
  ...), the validators, `content_hash`, the top_k bounds. The only module `agents/` may import.
- `retrieval.store`: `CollectionStore`, the SQLite (WAL) source of truth.
- `retrieval.config`: `RetrievalConfig` (paths, chunk sizes, top_k limits, write limits, `IngestConfig`),
  `EmbedderConfig`.
- `retrieval.service`: `RetrievalService` (store + per-collection index + async embedder).
- `retrieval.batching`: `BatchEmbedder` (a write's chunks in bounded batches, timeout per attempt, retry).
- `retrieval.jobs`: `IngestJobs` (writes too large for one request run as jobs recorded in the store).
- `retrieval.index`: `VectorIndex`, `ExactCosineIndex`.
- `retrieval.chunker`, `retrieval.tokens`: chunking in served-model tokens.
- `retrieval.embedder`: `Embedder`, `SentenceTransformerEmbedder` (heavy import deferred).
- `retrieval.samples`: loading `data/<collection>/` into empty collections.
- `retrieval.exceptions`: the error types (each names the offending field).
- CLIs: `python -m retrieval.ingest`, `python -m retrieval.eval_recall`.
"""
