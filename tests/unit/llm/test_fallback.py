import json

import httpx
import pytest
from pydantic import ValidationError

from llm import GenerateRequest, GenerateResult, InvalidRequestError, LLMUnavailableError, StreamDelta
from llm.fallback import FallbackConfig, FallbackLLM, OpenAIFallbackClient, build_fallback_llm

CONFIG = FallbackConfig(base_url="http://fallback.test/v1/", model="m", api_key_env="FB_KEY", timeout_s=5)


def completion(token_ids: list[int] | None, finish_reason: str = "length", cached: int = 0) -> dict:
    choice = {"index": 0, "text": "t", "finish_reason": finish_reason}
    if token_ids is not None:
        choice["token_ids"] = token_ids
    return {"choices": [choice], "usage": {"prompt_tokens": 3, "completion_tokens": 2,
                                           "prompt_tokens_details": {"cached_tokens": cached}}}


def client_with(handler, **kwargs) -> tuple[OpenAIFallbackClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    http = httpx.AsyncClient(transport=httpx.MockTransport(record))
    return OpenAIFallbackClient(CONFIG, client=http, environ={"FB_KEY": "sekret"}, **kwargs), seen


async def test_sends_token_ids_with_return_token_ids_and_bearer_key():
    client, seen = client_with(lambda r: httpx.Response(200, json=completion([7, 8], cached=2)))
    result = await client.generate(GenerateRequest(prompt_token_ids=[1, 2, 3], max_tokens=4, temperature=0, seed=9))
    request = seen[0]
    assert str(request.url) == "http://fallback.test/v1/completions"
    assert request.headers["authorization"] == "Bearer sekret"
    body = json.loads(request.content)
    assert body == {"model": "m", "prompt": [1, 2, 3], "max_tokens": 4, "temperature": 0, "top_p": 1.0,
                    "return_token_ids": True, "seed": 9}
    assert result.token_ids == [7, 8] and result.prompt_tokens == 3 and result.num_cached_tokens == 2
    assert result.completion_tokens == 2 and result.finish_reason == "length"
    assert result.replica_id.startswith("fallback:")


async def test_stop_token_ids_cut_the_output_client_side():
    client, _ = client_with(lambda r: httpx.Response(200, json=completion([5, 2, 6])))
    result = await client.generate(GenerateRequest(prompt_token_ids=[1], stop_token_ids=[2]))
    assert result.token_ids == [5] and result.finish_reason == "stop" and result.completion_tokens == 1


async def test_text_only_answer_needs_an_encoder():
    client, _ = client_with(lambda r: httpx.Response(200, json=completion(None)))
    with pytest.raises(LLMUnavailableError):
        await client.generate(GenerateRequest(prompt_token_ids=[1]))
    client, _ = client_with(lambda r: httpx.Response(200, json=completion(None)), encode=lambda text: [42])
    assert (await client.generate(GenerateRequest(prompt_token_ids=[1]))).token_ids == [42]


@pytest.mark.parametrize("status", [401, 429, 500, 503])
async def test_server_failures_are_unavailable(status):
    client, _ = client_with(lambda r: httpx.Response(status, json={"error": {"message": "no"}}))
    with pytest.raises(LLMUnavailableError):
        await client.generate(GenerateRequest(prompt_token_ids=[1]))
    assert client.failures == 1


async def test_bad_request_keeps_the_field_the_server_named():
    client, _ = client_with(lambda r: httpx.Response(400, json={"error": {"message": "too long", "field": "max_tokens"}}))
    with pytest.raises(InvalidRequestError) as info:
        await client.generate(GenerateRequest(prompt_token_ids=[1]))
    assert info.value.field == "max_tokens"


async def test_transport_errors_and_timeouts_are_unavailable():
    def refuse(request):
        raise httpx.ConnectError("refused", request=request)

    def slow(request):
        raise httpx.ReadTimeout("slow", request=request)

    for handler in (refuse, slow):
        client, _ = client_with(handler)
        with pytest.raises(LLMUnavailableError):
            await client.generate(GenerateRequest(prompt_token_ids=[1]))


def test_missing_key_variable_is_a_config_error_and_the_key_is_not_in_the_config():
    with pytest.raises(ValueError, match="FB_KEY"):
        OpenAIFallbackClient(CONFIG, environ={})
    assert "sekret" not in repr(CONFIG)
    with pytest.raises(ValidationError):
        FallbackConfig(base_url="fallback.test", model="m")
    with pytest.raises(ValidationError):
        FallbackConfig(base_url="http://x/v1", model="m", api_key="inline keys are refused")


class FakePool:
    """A pool double: raises the given error, or answers with fixed IDs."""

    def __init__(self, error: Exception | None = None, stream_then_fail: bool = False) -> None:
        self.error = error
        self.stream_then_fail = stream_then_fail
        self.calls = 0

    def _result(self, ids: list[int]) -> GenerateResult:
        return GenerateResult(token_ids=ids, prompt_tokens=1, num_cached_tokens=0, completion_tokens=len(ids),
                              finish_reason="length", ttft_s=0.0, total_s=0.0)

    async def generate(self, request):
        self.calls += 1
        if self.error:
            raise self.error
        return self._result([1, 1])

    async def generate_stream(self, request):
        self.calls += 1
        if self.stream_then_fail:
            yield StreamDelta(token_ids=[1])
        if self.error:
            raise self.error
        yield StreamDelta(token_ids=[1], result=self._result([1]))


async def test_fallback_only_on_unavailable():
    fallback = FakePool()
    llm = FallbackLLM(FakePool(error=LLMUnavailableError("pool gone")), fallback)
    assert (await llm.generate(GenerateRequest(prompt_token_ids=[1]))).token_ids == [1, 1]
    assert llm.fallbacks == 1 and fallback.calls == 1

    bad = FallbackLLM(FakePool(error=InvalidRequestError("prompt", "too long")), fallback)
    with pytest.raises(InvalidRequestError):
        await bad.generate(GenerateRequest(prompt_token_ids=[1]))
    assert fallback.calls == 1


async def test_both_down_is_unavailable_with_both_reasons():
    llm = FallbackLLM(FakePool(error=LLMUnavailableError("pool gone")), FakePool(error=LLMUnavailableError("fb gone")))
    with pytest.raises(LLMUnavailableError, match="pool gone.*fb gone"):
        await llm.generate(GenerateRequest(prompt_token_ids=[1]))


async def test_stream_falls_back_only_before_the_first_delta():
    llm = FallbackLLM(FakePool(error=LLMUnavailableError("down")), FakePool())
    deltas = [d async for d in llm.generate_stream(GenerateRequest(prompt_token_ids=[1]))]
    assert deltas[-1].result is not None and deltas[-1].token_ids == [1, 1]

    midway = FallbackLLM(FakePool(error=LLMUnavailableError("down"), stream_then_fail=True), FakePool())
    with pytest.raises(LLMUnavailableError):
        [d async for d in midway.generate_stream(GenerateRequest(prompt_token_ids=[1]))]


def test_build_without_config_returns_the_pool_itself():
    pool = FakePool()
    assert build_fallback_llm(pool, None) is pool
