"""LLMPoolClient passes the prompt's prefix key as Serve's session id (for session-sticky routers)."""

import asyncio

from deployments.llm_client import LLMPoolClient
from llm.types import GenerateRequest, GenerateResult
from routing.prefix_affinity import prefix_key


class RecordingHandleDouble:
    """Test double of a DeploymentHandle: records the options of the handle each call went through."""

    def __init__(self, calls: list[dict], options: dict | None = None) -> None:
        self._calls, self._options = calls, options or {}

    def options(self, **kwargs) -> "RecordingHandleDouble":
        return RecordingHandleDouble(self._calls, {**self._options, **kwargs})

    @property
    def generate(self) -> "RecordingHandleDouble":
        return self

    def remote(self, request: GenerateRequest):
        self._calls.append(dict(self._options))

        async def answer() -> GenerateResult:
            return GenerateResult([7], len(request.prompt_token_ids), 0, 1, "length", 0.01, 0.02, "r")

        return asyncio.ensure_future(answer())


async def test_session_id_is_the_prefix_key_and_absent_without_one():
    calls: list[dict] = []
    client = LLMPoolClient(RecordingHandleDouble(calls), timeout_s=5)
    long_prompt = GenerateRequest(prompt_token_ids=list(range(100, 400)), max_tokens=1, prefix_len=256)
    await client.generate(long_prompt)
    await client.generate(GenerateRequest(prompt_token_ids=[1, 2, 3], max_tokens=1))
    assert calls[0] == {"session_id": prefix_key(long_prompt.prompt_token_ids, context_end=256)}
    assert calls[1] == {}


class StreamingHandleDouble:
    """Test double of a DeploymentHandle's streaming call: yields scripted deltas, records cancel()."""

    def __init__(self, deltas: list) -> None:
        self.deltas = deltas
        self.cancelled = 0

    def options(self, **kwargs) -> "StreamingHandleDouble":
        return self

    @property
    def generate_stream(self) -> "StreamingHandleDouble":
        return self

    def remote(self, request: GenerateRequest) -> "StreamingHandleDouble":
        return self

    def __aiter__(self):
        async def gen():
            for delta in self.deltas:
                yield delta

        return gen()

    def cancel(self) -> None:
        self.cancelled += 1


def _deltas():
    from llm.types import StreamDelta

    result = GenerateResult([1, 2, 3], 3, 0, 3, "length", 0.01, 0.02, "r")
    return [StreamDelta([1]), StreamDelta([2]), StreamDelta([3], result=result)]


async def test_a_stream_closed_before_its_end_is_cancelled_on_the_replica():
    """Issue 18: a stop string ends the output early; closing the stream must abort the generation."""
    handle = StreamingHandleDouble(_deltas())
    stream = LLMPoolClient(handle, timeout_s=5).generate_stream(GenerateRequest(prompt_token_ids=[1], max_tokens=3))
    assert (await anext(stream)).token_ids == [1]
    await stream.aclose()
    assert handle.cancelled == 1


async def test_a_stream_read_to_its_end_is_not_cancelled():
    handle = StreamingHandleDouble(_deltas())
    stream = LLMPoolClient(handle, timeout_s=5).generate_stream(GenerateRequest(prompt_token_ids=[1], max_tokens=3))
    assert [d.token_ids async for d in stream] == [[1], [2], [3]]
    await stream.aclose()
    assert handle.cancelled == 0
