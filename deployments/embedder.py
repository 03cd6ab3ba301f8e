"""Shared embedder deployment: one all-MiniLM-L6-v2 per replica, concurrent requests batched.

Agents embed one short query per request; `@serve.batch` collects the queries that arrive within
`batch_wait_timeout_s` into one forward pass, which on CPU costs about the same as a single query.
Bulk callers (ingestion) send whole lists to `embed`, which is already a batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import numpy as np
from ray import serve

from deployments.llm_client import REPLICA_LOST
from retrieval.config import EmbedderConfig
from retrieval.embedder import Embedder

__all__ = ["EmbedderServer", "make_remote_embed"]

logger = logging.getLogger(__name__)


class _EmbedderServerImpl:
    """Plain class (testable without a cluster); `EmbedderServer` is its Serve deployment."""

    def __init__(self, config: EmbedderConfig | None = None, embedder: Embedder | None = None) -> None:
        config = config or EmbedderConfig()
        self._embedder = embedder or config.create()
        self.embed_one.set_max_batch_size(config.max_batch_size)
        self.embed_one.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        self._batches = 0
        self._batched_calls = 0

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def embed_one(self, texts: list[str]) -> list[list[float]]:
        """One text in, one vector out; Serve hands this method the batch of concurrent calls."""
        self._batches += 1
        self._batched_calls += len(texts)
        vectors = await asyncio.to_thread(self._embedder.embed, texts)
        return vectors.tolist()

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """Vectors of `texts` (float32 values, unit-length rows) in one forward pass."""
        if not texts:
            return []
        vectors = await asyncio.to_thread(self._embedder.embed, list(texts))
        return vectors.tolist()

    async def dim(self) -> int:
        return self._embedder.dim

    async def batch_stats(self) -> dict[str, int]:
        """How many `embed_one` calls were served in how many batches (for tests and metrics)."""
        return {"batches": self._batches, "calls": self._batched_calls}


EmbedderServer = serve.deployment(
    _EmbedderServerImpl,
    name="EmbedderServer",
    ray_actor_options={"num_cpus": 0.1},
    max_ongoing_requests=256,  # small requests; let @serve.batch see many at once
)


def make_remote_embed(handle, timeout_s: float = 30.0,
                      retries: int = 1) -> Callable[[list[str]], Awaitable[np.ndarray]]:
    """Adapt an EmbedderServer handle to the async embed callable RetrievalService takes.

    A single text goes through the batched `embed_one` (query path); lists go to `embed`. A call that times
    out or whose caller is cancelled (a batch timeout in `retrieval.batching`) is cancelled at the embedder
    too, so that a retry does not queue behind it (awaiting a response does not cancel it by itself). A call
    whose embedder replica died under it is sent once more (``retries``), as the LLM pool client does."""

    async def embed(texts: list[str]) -> np.ndarray:
        method = "embed_one" if len(texts) == 1 else "embed"
        for attempt in range(retries + 1):
            response = handle.options(method_name=method).remote(texts[0] if len(texts) == 1 else texts)
            try:
                vectors = await asyncio.wait_for(response, timeout_s)
                break
            except (TimeoutError, asyncio.CancelledError):
                response.cancel()
                raise
            except REPLICA_LOST as err:  # its replica died under it (process or node lost): not embedded yet
                if attempt == retries:
                    raise
                logger.warning("embedder replica lost, sending the call again: %s", err)
        if len(texts) == 1:
            vectors = [vectors]
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)

    return embed
