"""BatchEmbedder: bounded batches, a timeout per attempt, one retry, errors that name the batch."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest

from retrieval.batching import BatchEmbedder, describe_error
from retrieval.config import IngestConfig
from retrieval.exceptions import EmbeddingError, EmbeddingTimeoutError
from tests.fakes.hashing_embedder import HashingEmbedder

TEXTS = [f"chunk number {i}" for i in range(7)]


class ScriptedEmbed:
    """Fake embed function: per call number (1-based), "hang", an exception to raise, or a wrong shape;
    otherwise the hashing embedder's vectors."""

    def __init__(self, script: dict[int, object] | None = None) -> None:
        self.script = script or {}
        self.calls: list[list[str]] = []
        self.embedder = HashingEmbedder(dim=16)

    async def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        action = self.script.get(len(self.calls))
        if action == "hang":
            await asyncio.Event().wait()
        if action == "short":
            return self.embedder.embed(texts[:-1])
        if isinstance(action, BaseException):
            raise action
        return self.embedder.embed(texts)


def batcher(embed, **config) -> BatchEmbedder:
    return BatchEmbedder(embed, IngestConfig(**{"batch_size": 3, "batch_timeout_s": 0.05, **config}))


async def test_texts_go_in_bounded_batches_in_order():
    embed = ScriptedEmbed()
    vectors = await batcher(embed).embed(TEXTS)
    assert [len(c) for c in embed.calls] == [3, 3, 1]
    assert [t for c in embed.calls for t in c] == TEXTS
    np.testing.assert_allclose(vectors, HashingEmbedder(dim=16).embed(TEXTS))


async def test_batches_yields_each_span_with_its_vectors_and_logs_progress(caplog):
    caplog.set_level(logging.INFO, logger="retrieval.batching")
    spans = [(span, len(v)) async for span, v in batcher(ScriptedEmbed()).batches(TEXTS, label="job x: ")]
    assert spans == [(slice(0, 3), 3), (slice(3, 6), 3), (slice(6, 7), 1)]
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("job x: batch 1/3 embedded: 3/7 chunks")
    assert lines[-1].startswith("job x: batch 3/3 embedded: 7/7 chunks")


async def test_a_batch_that_fails_once_is_retried_and_the_write_goes_on():
    embed = ScriptedEmbed({2: RuntimeError("embedder restarting")})
    vectors = await batcher(embed).embed(TEXTS)
    assert len(embed.calls) == 4 and embed.calls[1] == embed.calls[2]  # batch 2 sent twice
    assert vectors.shape == (7, 16)


async def test_a_late_batch_is_retried_once_then_succeeds():
    embed = ScriptedEmbed({1: "hang"})
    vectors = await batcher(embed).embed(TEXTS)
    assert len(embed.calls) == 4 and vectors.shape == (7, 16)


async def test_the_timeout_error_names_the_batch_its_size_and_the_timeout():
    embed = ScriptedEmbed({2: "hang", 3: "hang"})  # batch 2's two attempts
    with pytest.raises(EmbeddingTimeoutError) as caught:
        await batcher(embed, batch_timeout_s=0.02).embed(TEXTS)
    assert str(caught.value) == "batch 2/3 (3 chunks) exceeded 0.02 s, retried once"
    assert len(embed.calls) == 3  # batch 3 never sent


async def test_the_timeout_is_per_attempt_and_the_retry_count_comes_from_config():
    embed = ScriptedEmbed({1: "hang", 2: "hang", 3: "hang"})
    with pytest.raises(EmbeddingTimeoutError, match=r"^batch 1/3 \(3 chunks\) exceeded 0.05 s, retried 2 times$"):
        await batcher(embed, batch_retries=2).embed(TEXTS)
    with pytest.raises(EmbeddingTimeoutError, match="not retried$"):
        await batcher(ScriptedEmbed({1: "hang"}), batch_retries=0).embed(TEXTS)


async def test_a_failure_without_a_message_is_still_described():
    embed = ScriptedEmbed({1: ValueError(), 2: ValueError()})
    with pytest.raises(EmbeddingError) as caught:
        await batcher(embed).embed(TEXTS)
    assert not isinstance(caught.value, EmbeddingTimeoutError)
    assert str(caught.value) == "batch 1/3 (3 chunks) failed: ValueError, retried once"


async def test_mixed_failures_report_the_last_and_the_earlier_one():
    embed = ScriptedEmbed({1: "hang", 2: RuntimeError("connection reset\nTraceback ...")})
    with pytest.raises(EmbeddingError) as caught:
        await batcher(embed).embed(TEXTS)
    assert str(caught.value) == ("batch 1/3 (3 chunks) failed: RuntimeError: connection reset, retried once "
                                 "(earlier: exceeded 0.05 s)")


async def test_a_wrong_number_of_vectors_is_a_failed_batch():
    with pytest.raises(EmbeddingError, match=r"batch 1/3 \(3 chunks\) failed: .*expected 3 vectors"):
        await batcher(ScriptedEmbed({1: "short", 2: "short"})).embed(TEXTS)


async def test_no_texts_no_calls():
    embed = ScriptedEmbed()
    assert (await batcher(embed).embed([])).shape[0] == 0 and embed.calls == []


def test_describe_error_is_never_empty_and_prefers_a_remote_cause():
    assert describe_error(TimeoutError()) == "TimeoutError"
    assert describe_error(RuntimeError("boom\nmore")) == "RuntimeError: boom"
    wrapper = RuntimeError("long remote traceback")
    wrapper.cause = KeyError("missing")  # what a RayTaskError carries
    assert describe_error(wrapper) == "KeyError: 'missing'"
