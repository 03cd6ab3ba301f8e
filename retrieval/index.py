"""Vector search over one collection's chunks.

`VectorIndex` is the contract; `ExactCosineIndex` is the default: with L2-normalized float32 rows,
cosine similarity is one matrix-vector product, and `argpartition` picks the top k in O(n). At
100,000 x 384 that is ~150 MB scanned per query (see benchmarks/retrieval_bench.py), fast enough on
this machine; an approximate index can implement the same contract later.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from retrieval.models import Chunk, SearchHit

__all__ = ["ExactCosineIndex", "VectorIndex"]


class VectorIndex(ABC):
    """Nearest-neighbour search over a fixed set of chunks; rebuilt (not mutated) on change."""

    @abstractmethod
    def search(self, query: np.ndarray, top_k: int, where: dict | None = None) -> list[SearchHit]:
        """The `top_k` chunks most similar to `query`, best first, optionally restricted to chunks
        whose metadata equals every key/value in `where`."""

    @property
    @abstractmethod
    def size(self) -> int:
        """Number of indexed chunks."""


def _meta_key(value: object) -> str:
    # Metadata values may be unhashable (lists, dicts); their canonical JSON is hashable and exact.
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class ExactCosineIndex(VectorIndex):
    """Brute-force cosine similarity; exact results, deterministic tie order (lower position first)."""

    def __init__(self, chunks: Sequence[Chunk], embeddings: np.ndarray) -> None:
        matrix = np.ascontiguousarray(embeddings, dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[0] != len(chunks):
            raise ValueError(f"embeddings shape {matrix.shape} does not match {len(chunks)} chunks")
        self._chunks = list(chunks)
        self._matrix = matrix
        # Inverted index for metadata equality filters: (key, canonical value) -> row indices.
        postings: dict[tuple[str, str], list[int]] = {}
        for row, chunk in enumerate(self._chunks):
            for key, value in chunk.metadata.items():
                postings.setdefault((key, _meta_key(value)), []).append(row)
        self._postings = {k: np.asarray(v, dtype=np.int64) for k, v in postings.items()}

    @property
    def size(self) -> int:
        return len(self._chunks)

    @property
    def dim(self) -> int:
        return int(self._matrix.shape[1])

    def search(self, query: np.ndarray, top_k: int, where: dict | None = None) -> list[SearchHit]:
        if top_k <= 0:
            raise ValueError("top_k must be positive")
        if not self._chunks:
            return []
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.shape[0] != self._matrix.shape[1]:
            raise ValueError(f"query has dimension {q.shape[0]}, index has {self._matrix.shape[1]}")
        norm = float(np.linalg.norm(q))
        if norm > 0:
            q = q / norm
        rows = self._filter_rows(where)
        if rows is None:
            scores = self._matrix @ q
            candidates = None
        else:
            if rows.size == 0:
                return []
            scores = self._matrix[rows] @ q
            candidates = rows
        k = min(top_k, scores.shape[0])
        if k < scores.shape[0]:
            top = np.argpartition(scores, -k)[-k:]
        else:
            top = np.arange(scores.shape[0])
        # Sort by score descending, then by row for a stable order among equal scores.
        top = top[np.lexsort((top, -scores[top]))]
        out_rows = top if candidates is None else candidates[top]
        return [SearchHit(self._chunks[r], float(scores[t])) for r, t in zip(out_rows, top)]

    def _filter_rows(self, where: dict | None) -> np.ndarray | None:
        if not where:
            return None
        rows: np.ndarray | None = None
        for key, value in where.items():
            posting = self._postings.get((key, _meta_key(value)))
            if posting is None:
                return np.zeros(0, dtype=np.int64)
            rows = posting if rows is None else np.intersect1d(rows, posting, assume_unique=True)
        return rows
