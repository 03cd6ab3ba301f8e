"""The engine mapping (issue 18): every sampling field of a ``GenerateRequest`` reaches vLLM's
``SamplingParams`` under its own name, and vLLM's per-position logprob dicts become ``TokenLogprob``s."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from llm import GenerateRequest, LLMServer
from llm.engine import sampling_kwargs, token_logprobs
from tests.fakes.fake_engine import FakeTokenEngine

REQUEST = GenerateRequest(
    prompt_token_ids=[1, 2, 3], max_tokens=9, temperature=0.7, top_p=0.9, stop_token_ids=[5], seed=3, top_k=20,
    min_p=0.05, presence_penalty=0.1, frequency_penalty=0.2, repetition_penalty=1.1, min_tokens=2, ignore_eos=True,
    logprobs=4)


def test_sampling_kwargs_map_each_field_to_vllms_name():
    assert sampling_kwargs(REQUEST) == {
        "max_tokens": 9, "temperature": 0.7, "top_p": 0.9, "top_k": 20, "min_p": 0.05, "presence_penalty": 0.1,
        "frequency_penalty": 0.2, "repetition_penalty": 1.1, "min_tokens": 2, "ignore_eos": True,
        "stop_token_ids": [5], "seed": 3, "logprobs": 4, "detokenize": False}


def test_vllm_sampling_params_take_them():
    vllm = pytest.importorskip("vllm")
    params = vllm.SamplingParams(**sampling_kwargs(REQUEST))
    for name, value in sampling_kwargs(REQUEST).items():
        assert getattr(params, name) == value, name


def test_vllm_logprob_dicts_become_token_logprobs():
    lp = lambda value: SimpleNamespace(logprob=value)  # noqa: E731  (vLLM's Logprob has .logprob)
    positions = [{7: lp(-0.1), 8: lp(-2.0)}, {9: lp(-1.5), 4: lp(-0.3)}]
    out = token_logprobs([7, 9], positions)
    assert [(t.token_id, t.logprob) for t in out] == [(7, -0.1), (9, -1.5)]
    assert out[1].entries == ((9, -1.5), (4, -0.3))
    assert token_logprobs([7], None) is None


async def test_llm_server_streams_logprobs_aligned_with_tokens():
    server = LLMServer(lambda: FakeTokenEngine(), max_model_len=4096)
    deltas = [d async for d in server.generate_stream(GenerateRequest(prompt_token_ids=[1, 2], max_tokens=3, logprobs=1))]
    streamed = [lp for d in deltas for lp in (d.logprobs or [])]
    assert [lp.token_id for lp in streamed] == [t for d in deltas for t in d.token_ids]
    assert deltas[-1].result.logprobs == streamed and all(d.num_cached_tokens == 0 for d in deltas)


async def test_min_tokens_holds_back_stop_tokens_and_ignore_eos_drops_eos():
    engine = FakeTokenEngine()
    prompt = [1, 2, 3]
    first = (sum(prompt)) % 1000
    server = LLMServer(lambda: engine, max_model_len=4096, eos_token_ids=[first])
    result = await server.generate(GenerateRequest(prompt_token_ids=prompt, max_tokens=5, min_tokens=3,
                                                   stop_token_ids=[first + 1]))
    assert result.completion_tokens == 5  # both stop tokens came before min_tokens
    result = await server.generate(GenerateRequest(prompt_token_ids=prompt, max_tokens=5, ignore_eos=True))
    assert engine.requests[-1].stop_token_ids == [] and result.completion_tokens == 5
