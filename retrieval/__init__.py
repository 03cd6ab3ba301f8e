"""Retrieval: durable collections, deterministic chunking, embedding and vector search.

Plain Python (no Ray or Serve imports) so that every piece runs in a unit test; the Serve embedder
deployment lives in `deployments/embedder.py`. The heavy `SentenceTransformerEmbedder` import is lazy.
"""

from retrieval.chunker import chunk_text
from retrieval.config import EmbedderConfig, RetrievalConfig
from retrieval.embedder import Embedder, SentenceTransformerEmbedder, bundled_model_path, make_async_embed
from retrieval.exceptions import (
    CollectionNotFoundError,
    DocumentNotFoundError,
    EmbeddingError,
    InvalidCollectionNameError,
    InvalidDocumentError,
    InvalidInputError,
    RetrievalError,
    StoreWriteError,
)
from retrieval.index import ExactCosineIndex, SearchHit, VectorIndex
from retrieval.samples import SAMPLE_COLLECTIONS, load_sample_collections, pending_sample_loads, read_folder
from retrieval.service import RetrievalService
from retrieval.store import (
    Chunk,
    CollectionInfo,
    CollectionSnapshot,
    CollectionStore,
    Document,
    StoreLimits,
    WriteResult,
    content_hash,
    validate_collection_name,
)
from retrieval.tokens import approx_token_count, make_token_counter

__all__ = [
    "SAMPLE_COLLECTIONS",
    "Chunk",
    "CollectionInfo",
    "CollectionNotFoundError",
    "CollectionSnapshot",
    "CollectionStore",
    "Document",
    "DocumentNotFoundError",
    "Embedder",
    "EmbedderConfig",
    "EmbeddingError",
    "ExactCosineIndex",
    "InvalidCollectionNameError",
    "InvalidDocumentError",
    "InvalidInputError",
    "RetrievalConfig",
    "RetrievalError",
    "RetrievalService",
    "SearchHit",
    "SentenceTransformerEmbedder",
    "StoreLimits",
    "StoreWriteError",
    "VectorIndex",
    "WriteResult",
    "approx_token_count",
    "bundled_model_path",
    "chunk_text",
    "content_hash",
    "load_sample_collections",
    "make_async_embed",
    "make_token_counter",
    "pending_sample_loads",
    "read_folder",
    "validate_collection_name",
]
