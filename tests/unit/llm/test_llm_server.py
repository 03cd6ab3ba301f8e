import asyncio

import pytest

from llm import EngineDeadError, GenerateRequest, GenerationError, InvalidRequestError, LLMServer
from tests.fakes.fake_engine import FakeTokenEngine


def make_server(engine: FakeTokenEngine, eos: list[int] | None = None, max_model_len: int = 4096) -> LLMServer:
    return LLMServer(lambda: engine, max_model_len=max_model_len, eos_token_ids=eos, replica_id="r0")


async def test_generate_returns_tokens_and_accounting():
    engine = FakeTokenEngine()
    server = make_server(engine)
    prompt = list(range(100))
    first = await server.generate(GenerateRequest(prompt_token_ids=prompt, max_tokens=5))
    second = await server.generate(GenerateRequest(prompt_token_ids=prompt, max_tokens=5))
    assert first.token_ids == second.token_ids == [(sum(prompt) + i) % 1000 for i in range(5)]
    assert first.prompt_tokens == 100 and first.completion_tokens == 5
    assert first.num_cached_tokens == 0
    assert second.num_cached_tokens == 96  # whole 16-token blocks of the repeated prompt
    assert first.finish_reason == "length"
    assert 0 <= first.ttft_s <= first.total_s
    assert first.replica_id == "r0"


async def test_eos_ids_are_added_to_stop_ids():
    engine = FakeTokenEngine()
    prompt = [1, 2, 3]
    stop_token = (sum(prompt) + 2) % 1000
    server = make_server(engine, eos=[stop_token])
    result = await server.generate(GenerateRequest(prompt_token_ids=prompt, max_tokens=10, stop_token_ids=[999]))
    assert engine.requests[0].stop_token_ids == [999, stop_token]
    assert result.token_ids[-1] == stop_token and result.finish_reason == "stop"
    assert result.completion_tokens == 3


async def test_stream_yields_every_token_once_and_final_result():
    server = make_server(FakeTokenEngine())
    deltas = [d async for d in server.generate_stream(GenerateRequest(prompt_token_ids=[5, 6], max_tokens=4))]
    streamed = [t for d in deltas for t in d.token_ids]
    assert deltas[-1].result is not None
    assert streamed == deltas[-1].result.token_ids
    assert all(d.result is None for d in deltas[:-1])


@pytest.mark.parametrize(
    ("request_kwargs", "field"),
    [({"prompt_token_ids": []}, "prompt"), ({"prompt_token_ids": [1], "max_tokens": 0}, "max_tokens"),
     ({"prompt_token_ids": [1] * 60, "max_tokens": 10}, "max_tokens")],
)
async def test_invalid_requests_name_the_field(request_kwargs, field):
    server = make_server(FakeTokenEngine(), max_model_len=64)
    with pytest.raises(InvalidRequestError) as info:
        await server.generate(GenerateRequest(**request_kwargs))
    assert info.value.field == field


async def test_cancelled_stream_aborts_the_engine_request():
    engine = FakeTokenEngine(step_delay_s=0.01)
    server = make_server(engine)
    stream = server.generate_stream(GenerateRequest(prompt_token_ids=[1, 2], max_tokens=50, request_id="req-1"))
    await stream.__anext__()
    await stream.aclose()
    assert engine.aborted == ["req-1"]


async def test_engine_failure_wraps_cause_and_dead_engine_fails_health():
    engine = FakeTokenEngine()
    server = make_server(engine)
    engine.fail_next = RuntimeError("boom")
    with pytest.raises(GenerationError) as info:
        await server.generate(GenerateRequest(prompt_token_ids=[1], max_tokens=1))
    assert isinstance(info.value.__cause__, RuntimeError)
    await server.check_health()  # one failed request does not make the replica unhealthy

    engine.dead = True
    with pytest.raises(EngineDeadError):
        await server.generate(GenerateRequest(prompt_token_ids=[1], max_tokens=1))
    engine.dead = False  # even if the engine object recovers, a replica that saw it die stays unhealthy
    with pytest.raises(EngineDeadError):
        await server.check_health()


async def test_concurrent_requests_are_independent():
    server = make_server(FakeTokenEngine(step_delay_s=0.001))
    prompts = [[i, i + 1, i + 2] for i in range(20)]
    results = await asyncio.gather(
        *(server.generate(GenerateRequest(prompt_token_ids=p, max_tokens=3)) for p in prompts)
    )
    for prompt, result in zip(prompts, results):
        assert result.token_ids == [(sum(prompt) + i) % 1000 for i in range(3)]
