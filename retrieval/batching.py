"""Embedding many chunks as bounded batches, each under its own timeout and retried.

One embedder call per write used to carry every chunk of the write under one fixed timeout: a large
write failed after the timeout with an empty message (a `TimeoutError` has none) and held the shared
embedder for its whole length, so agents' query embeddings waited behind it. Here a write's chunks go
in batches of `IngestConfig.batch_size`, each batch gets `batch_timeout_s` per attempt and
`batch_retries` more attempts, progress is logged per batch, and a failure names the batch, its size
and what happened ("batch 3/12 (32 chunks) exceeded 20 s, retried once").
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import numpy as np

from retrieval.config import IngestConfig
from retrieval.exceptions import EmbeddingError, EmbeddingTimeoutError

__all__ = ["AsyncEmbed", "BatchEmbedder", "describe_error"]

logger = logging.getLogger(__name__)

AsyncEmbed = Callable[[list[str]], Awaitable[np.ndarray]]
"""texts -> (len(texts), dim) vectors, e.g. the embedder deployment's handle adapted by the gateway."""


def describe_error(err: BaseException) -> str:
    """A one-line, never empty description: the message (first line), else the error's type name."""
    cause = getattr(err, "cause", None)  # a RayTaskError's message is a whole traceback; its cause says it
    if isinstance(cause, BaseException):
        err = cause
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _retried(retries: int) -> str:
    return {0: "not retried", 1: "retried once"}.get(retries, f"retried {retries} times")


class BatchEmbedder:
    """Embeds texts through `embed` in batches of `config.batch_size`, each attempt bounded by
    `config.batch_timeout_s`, a failed or late batch tried `config.batch_retries` more times."""

    def __init__(self, embed: AsyncEmbed, config: IngestConfig, *,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self._embed = embed
        self.config = config
        self._clock = clock

    def num_batches(self, num_texts: int) -> int:
        return math.ceil(num_texts / self.config.batch_size)

    async def batches(self, texts: Sequence[str], *, label: str = "") -> AsyncIterator[tuple[slice, np.ndarray]]:
        """Yield (the batch's slice of `texts`, its (n, dim) float32 vectors) batch by batch, in order.
        Raises EmbeddingTimeoutError or EmbeddingError naming the batch that failed; `label` prefixes
        the progress log lines (e.g. the job id)."""
        size = self.config.batch_size
        count = self.num_batches(len(texts))
        started = self._clock()
        for number in range(1, count + 1):
            span = slice((number - 1) * size, min(number * size, len(texts)))
            vectors = await self._one_batch(list(texts[span]), number, count)
            elapsed = self._clock() - started
            logger.info("%sbatch %d/%d embedded: %d/%d chunks, %.1f chunks/s", label, number, count, span.stop,
                        len(texts), span.stop / elapsed if elapsed > 0 else 0.0)
            yield span, vectors

    async def embed(self, texts: Sequence[str], *, label: str = "") -> np.ndarray:
        """All vectors of `texts`, (len(texts), dim), embedded batch by batch."""
        parts = [vectors async for _, vectors in self.batches(texts, label=label)]
        if not parts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(parts)

    async def _one_batch(self, texts: list[str], number: int, count: int) -> np.ndarray:
        timeout_s = self.config.batch_timeout_s
        retries = self.config.batch_retries
        what = f"batch {number}/{count} ({len(texts)} chunk{'' if len(texts) == 1 else 's'})"
        failures: list[str] = []
        timed_out = False
        for attempt in range(retries + 1):
            try:
                vectors = await asyncio.wait_for(self._embed(texts), timeout_s)
                matrix = np.asarray(vectors, dtype=np.float32)
                if matrix.ndim != 2 or matrix.shape[0] != len(texts):
                    raise EmbeddingError(f"expected {len(texts)} vectors, got an array of shape {matrix.shape}")
                return matrix
            except TimeoutError:
                timed_out = True
                failures.append(f"exceeded {timeout_s:g} s")
            except asyncio.CancelledError:
                raise
            except Exception as err:
                timed_out = False
                failures.append(f"failed: {describe_error(err)}")
            if attempt < retries:
                logger.warning("%s %s; retrying", what, failures[-1])
        message = f"{what} {failures[-1]}, {_retried(retries)}"
        if len(set(failures)) > 1:
            message += f" (earlier: {'; '.join(dict.fromkeys(failures[:-1]))})"
        logger.warning("embedding %s", message)
        raise (EmbeddingTimeoutError if timed_out else EmbeddingError)(message)
