"""The completions service (issue 18) without Ray: prompts to token IDs (chat template included), the pool
request's sampling fields, answers and usage in vLLM's format, stop strings, echo, logprobs and the
server-sent events, with a real (tiny) HF tokenizer and a scripted pool or the fake engine."""

from __future__ import annotations

import json

import pytest

from llm import InvalidRequestError, LLMServer, LLMUnavailableError
from llm.completions import DONE, CompletionsService, ContextPrompt, IncrementalText
from llm.openai_api import ChatCompletionRequest, CompletionRequest
from tests.fakes.fake_engine import FakeTokenEngine
from tests.fakes.fake_hf_tokenizer import build_chatml_tokenizer
from tests.fakes.scripted_pool import ScriptedPool


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return build_chatml_tokenizer(tmp_path_factory.mktemp("tok"))


def service(tok, pool, max_model_len: int = 4096, context=None) -> CompletionsService:
    return CompletionsService(tokenizer=tok, llm=pool, model_name="m", max_model_len=max_model_len,
                              chat_context=context, clock=lambda: 1000.0)


def completion(**body) -> CompletionRequest:
    return CompletionRequest.model_validate({"prompt": "hello world", **body})


def chat(**body) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "hello world"}], **body})


async def events(stream) -> list:
    """A strict SSE reader: every event is exactly one `data: ...` line and a blank line; JSON until [DONE]."""
    raw = [e async for e in stream]
    assert raw[-1] == DONE and all(e.startswith("data: ") and e.endswith("\n\n") and e.count("\n") == 2 for e in raw)
    return [json.loads(e[len("data: "):]) for e in raw[:-1]]


# ----------------------------------------------------------------------------- prompts


async def test_chat_messages_are_rendered_with_the_template_and_tokenized_by_the_same_tokenizer(tok):
    pool = ScriptedPool(tok.encode("the token cache"))
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": [
        {"type": "text", "text": "hello"}, {"type": "text", "text": "world"}]}]
    body = await service(tok, pool).chat(chat(messages=messages, return_token_ids=True))
    expected = tok.render_chat([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello\nworld"}])
    assert pool.requests[0].prompt_token_ids == body["prompt_token_ids"] == expected
    assert tok.tokenizer.decode(expected) == ("<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhello\nworld"
                                               "<|im_end|>\n<|im_start|>assistant\n")
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "the token cache"}
    assert body["choices"][0]["token_ids"] == tok.encode("the token cache")


async def test_continue_final_message_renders_no_generation_prompt(tok):
    pool = ScriptedPool(tok.encode("cache"))
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "the token"}]
    await service(tok, pool).chat(chat(messages=messages, add_generation_prompt=False, continue_final_message=True))
    assert tok.tokenizer.decode(pool.requests[0].prompt_token_ids).endswith("<|im_start|>assistant\nthe token")


async def test_text_prompts_are_tokenized_as_vllm_does_special_tokens_parsed(tok):
    pool = ScriptedPool(tok.encode("the"))
    await service(tok, pool).complete(completion(prompt="<|im_end|>hello"))
    assert pool.requests[0].prompt_token_ids == tok.encode_prompt("<|im_end|>hello")
    assert pool.requests[0].prompt_token_ids[0] == tok.tokenizer.convert_tokens_to_ids("<|im_end|>")


async def test_token_prompts_pass_untouched_and_are_checked_against_the_vocabulary(tok):
    pool = ScriptedPool([5, 6])
    await service(tok, pool).complete(completion(prompt=[3, 2, 1]))
    assert pool.requests[0].prompt_token_ids == [3, 2, 1]
    with pytest.raises(InvalidRequestError) as info:
        await service(tok, pool).complete(completion(prompt=[1, 10**6]))
    assert info.value.field == "prompt[1]"
    with pytest.raises(InvalidRequestError) as info:
        await service(tok, pool).complete(completion(stop_token_ids=[1, -1]))
    assert info.value.field == "stop_token_ids[1]"


async def test_context_length_names_the_budget_field(tok):
    pool = ScriptedPool([5])
    with pytest.raises(InvalidRequestError) as info:
        await service(tok, pool, max_model_len=20).complete(completion(prompt=[1] * 10, max_tokens=11))
    assert info.value.field == "max_tokens"
    with pytest.raises(InvalidRequestError) as info:
        await service(tok, pool, max_model_len=20).complete(completion(prompt=[1] * 20))
    assert info.value.field == "prompt"
    with pytest.raises(InvalidRequestError) as info:
        await service(tok, pool, max_model_len=60).chat(chat(max_completion_tokens=60))
    assert info.value.field == "max_completion_tokens"
    assert not pool.requests


async def test_chat_without_a_max_gets_what_the_context_leaves_as_on_vllm(tok):
    pool = ScriptedPool([5])
    await service(tok, pool, max_model_len=100).chat(chat())
    request = pool.requests[0]
    assert request.max_tokens == 100 - len(request.prompt_token_ids)


async def test_unknown_model_is_refused_naming_model(tok):
    with pytest.raises(InvalidRequestError) as info:
        await service(tok, ScriptedPool([])).chat(chat(model="other"))
    assert info.value.field == "model"


# ----------------------------------------------------------------------------- sampling fields reach the pool


async def test_every_sampling_field_reaches_the_generate_request(tok):
    pool = ScriptedPool([5, 6])
    await service(tok, pool).complete(completion(
        max_tokens=7, temperature=0.3, top_p=0.8, top_k=12, min_p=0.1, presence_penalty=0.4, frequency_penalty=-0.2,
        repetition_penalty=1.3, min_tokens=2, ignore_eos=True, seed=11, stop_token_ids=[9], logprobs=2,
        cache_salt="salt-1"))
    r = pool.requests[0]
    assert (r.max_tokens, r.temperature, r.top_p, r.top_k, r.min_p) == (7, 0.3, 0.8, 12, 0.1)
    assert (r.presence_penalty, r.frequency_penalty, r.repetition_penalty) == (0.4, -0.2, 1.3)
    assert (r.min_tokens, r.ignore_eos, r.seed, r.stop_token_ids, r.logprobs, r.cache_salt) == (2, True, 11, [9], 2, "salt-1")
    await service(tok, pool).chat(chat(logprobs=True, top_logprobs=3, max_tokens=4))
    assert pool.requests[1].logprobs == 3 and pool.requests[1].max_tokens == 4


# ----------------------------------------------------------------------------- answers


async def test_completion_answer_has_vllms_shape_and_usage_with_cached_tokens(tok):
    out = tok.encode("the token cache")
    pool = ScriptedPool(out, cached=32, per_delta=2)
    body = await service(tok, pool).complete(completion(prompt=[7, 8, 9], max_tokens=16, return_token_ids=True))
    assert body["object"] == "text_completion" and body["model"] == "m" and body["created"] == 1000
    assert body["id"].startswith("cmpl-")
    choice = body["choices"][0]
    assert choice["text"] == "the token cache" and choice["finish_reason"] == "length"
    assert choice["prompt_token_ids"] == [7, 8, 9] and choice["token_ids"] == out
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": len(out), "total_tokens": 3 + len(out),
                             "prompt_tokens_details": {"cached_tokens": 32}}


async def test_chat_answer_has_vllms_shape(tok):
    pool = ScriptedPool(tok.encode("hello"), cached=16, finish_reason="stop")
    body = await service(tok, pool).chat(chat(max_tokens=50))
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["choices"][0]["finish_reason"] == "stop" and body["choices"][0]["logprobs"] is None
    assert "prompt_token_ids" not in body and "token_ids" not in body["choices"][0]
    assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 16}


async def test_stop_string_cuts_the_text_and_aborts_the_generation(tok):
    out = tok.encode("the token cache keeps chunk token ids")
    pool = ScriptedPool(out)
    body = await service(tok, pool).complete(completion(stop=["cache"], max_tokens=50))
    choice = body["choices"][0]
    assert choice["text"] == "the token " and choice["finish_reason"] == "stop" and choice["stop_reason"] == "cache"
    assert pool.closed_early == 1 and pool.deltas_sent < len(out)
    kept = await service(tok, ScriptedPool(out)).complete(
        completion(stop="cache", include_stop_str_in_output=True, max_tokens=50))
    assert kept["choices"][0]["text"] == "the token cache"


async def test_stop_token_id_is_reported_as_the_stop_reason(tok):
    out = tok.encode("the token")
    body = await service(tok, ScriptedPool(out, finish_reason="stop")).complete(
        completion(stop_token_ids=[out[-1]], max_tokens=50))
    assert body["choices"][0]["stop_reason"] == out[-1]


async def test_echo_puts_the_prompt_before_the_output(tok):
    pool = ScriptedPool(tok.encode(" the token"))
    body = await service(tok, pool).complete(completion(prompt="hello world", echo=True, max_tokens=5))
    assert body["choices"][0]["text"] == "hello world the token"
    ids_prompt = tok.encode("hello world")
    body = await service(tok, ScriptedPool([])).complete(completion(prompt=ids_prompt, echo=True, max_tokens=0))
    assert body["choices"][0]["text"] == "hello world" and body["usage"]["completion_tokens"] == 0


async def test_logprobs_in_vllms_chat_and_completion_formats(tok):
    out = tok.encode("the token")
    body = await service(tok, ScriptedPool(out)).chat(chat(logprobs=True, top_logprobs=2, max_tokens=10))
    content = body["choices"][0]["logprobs"]["content"]
    assert [c["token"] for c in content] == [tok.token_text(t) for t in out]
    assert all(c["logprob"] == -0.5 and len(c["top_logprobs"]) == 2 for c in content)
    assert content[0]["bytes"] == list(content[0]["token"].encode())
    assert content[0]["top_logprobs"][1] == {"token": tok.token_text(out[0] + 1), "logprob": -2.0,
                                             "bytes": list(tok.token_text(out[0] + 1).encode())}
    body = await service(tok, ScriptedPool(out)).complete(completion(logprobs=1, max_tokens=10))
    logprobs = body["choices"][0]["logprobs"]
    assert logprobs["tokens"] == [tok.token_text(t) for t in out]
    assert logprobs["token_logprobs"] == [-0.5] * len(out)
    assert logprobs["text_offset"][0] == 0 and logprobs["text_offset"][1] == len(logprobs["tokens"][0])
    assert all(len(top) == 2 for top in logprobs["top_logprobs"])  # the sampled token plus 1, as vLLM sends


# ----------------------------------------------------------------------------- server-sent events


async def test_chat_stream_chunks_role_first_content_then_usage_and_done(tok):
    out = tok.encode("the token cache keeps chunk token ids")
    pool = ScriptedPool(out, cached=48, per_delta=2)
    stream = await service(tok, pool).chat(chat(stream=True, stream_options={"include_usage": True},
                                                return_token_ids=True, max_tokens=64))
    chunks = await events(stream)
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[0]["prompt_token_ids"] == pool.requests[0].prompt_token_ids
    content = chunks[1:-1]
    assert "".join(c["choices"][0]["delta"]["content"] for c in content) == "the token cache keeps chunk token ids"
    assert [t for c in content for t in c["choices"][0]["token_ids"]] == out
    assert [c["choices"][0]["finish_reason"] for c in content] == [None] * (len(content) - 1) + ["length"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {
        "prompt_tokens": len(pool.requests[0].prompt_token_ids), "completion_tokens": len(out),
        "total_tokens": len(pool.requests[0].prompt_token_ids) + len(out), "prompt_tokens_details": {"cached_tokens": 48}}


async def test_completion_stream_without_usage_has_no_usage_chunk(tok):
    out = tok.encode("the token")
    stream = await service(tok, ScriptedPool(out)).complete(completion(stream=True, max_tokens=10))
    chunks = await events(stream)
    assert all(c["object"] == "text_completion" and len(c["choices"]) == 1 and "usage" not in c for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == "the token"


async def test_a_stop_string_split_across_tokens_is_never_streamed(tok):
    out = tok.encode("the token cache keeps chunk")
    stream = await service(tok, ScriptedPool(out)).complete(
        completion(stream=True, stop=["n cache"], max_tokens=50))
    chunks = await events(stream)
    texts = [c["choices"][0]["text"] for c in chunks]
    assert "".join(texts) == "the toke"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_stream_echo_and_continuous_usage(tok):
    out = tok.encode(" the token")
    stream = await service(tok, ScriptedPool(out)).complete(completion(
        prompt="hello world", echo=True, stream=True, stream_options={"continuous_usage_stats": True}, max_tokens=10))
    chunks = await events(stream)
    assert "".join(c["choices"][0]["text"] for c in chunks) == "hello world the token"
    assert [c["usage"]["completion_tokens"] for c in chunks] == list(range(1, len(out) + 1))


async def test_errors_before_the_first_token_raise_and_after_it_are_an_error_event(tok):
    failing = ScriptedPool(tok.encode("the token cache"), fail_after=0, fail_with=LLMUnavailableError("pool down"))
    with pytest.raises(LLMUnavailableError):
        await service(tok, failing).chat(chat(stream=True))
    late = ScriptedPool(tok.encode("the token cache"), fail_after=1, fail_with=LLMUnavailableError("pool down"))
    chunks = await events(await service(tok, late).chat(chat(stream=True)))
    assert chunks[-1]["error"]["message"] == "pool down" and chunks[-1]["error"]["code"] == 503


# ----------------------------------------------------------------------------- the RAG hook


class RecordingContext:
    def __init__(self, ids: list[int]) -> None:
        self.ids = ids
        self.calls: list[dict] = []

    async def prompt(self, **kwargs) -> ContextPrompt:
        self.calls.append(kwargs)
        return ContextPrompt(token_ids=self.ids, prefix_len=len(self.ids) - 2, sources=["doc#0"], cache_hits=1,
                             cache_misses=2)


async def test_collection_asks_the_context_for_the_prompt_and_reports_it(tok):
    context = RecordingContext([1, 2, 3, 4, 5])
    pool = ScriptedPool(tok.encode("the"))
    messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": "q1"},
                {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]
    body = await service(tok, pool, context=context).chat(chat(
        messages=messages, collection="kb", retrieval_top_k=3, max_tokens=8, cache_salt="s"))
    assert context.calls == [{"collection": "kb", "top_k": 3, "system": "sys", "turns": [("q1", "a1")], "user": "q2",
                              "max_tokens": 8, "cache_salt": "s"}]
    assert pool.requests[0].prompt_token_ids == [1, 2, 3, 4, 5] and pool.requests[0].prefix_len == 3
    assert body["rag"] == {"collection": "kb", "sources": ["doc#0"], "cache": {"hits": 1, "misses": 2}}


@pytest.mark.parametrize(("messages", "field"), [
    ([{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}], "messages"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "messages"),
    ([{"role": "system", "content": "s"}, {"role": "system", "content": "s"}, {"role": "user", "content": "q"}], "messages"),
])
async def test_collection_needs_a_plain_conversation(tok, messages, field):
    with pytest.raises(InvalidRequestError) as info:
        await service(tok, ScriptedPool([]), context=RecordingContext([1])).chat(chat(messages=messages, collection="kb"))
    assert info.value.field == field


async def test_collection_without_a_context_is_refused_naming_collection(tok):
    with pytest.raises(InvalidRequestError) as info:
        await service(tok, ScriptedPool([])).chat(chat(collection="kb"))
    assert info.value.field == "collection"


# ----------------------------------------------------------------------------- through the replica logic


async def test_through_llm_server_logprobs_and_cached_tokens_flow_and_ignore_eos_drops_eos(tok):
    engine = FakeTokenEngine()
    server = LLMServer(lambda: engine, max_model_len=4096, eos_token_ids=[2])
    svc = service(tok, server)
    body = await svc.complete(completion(prompt=[3] * 40, max_tokens=4, logprobs=1, ignore_eos=True, min_tokens=1))
    assert engine.requests[0].stop_token_ids == [] and engine.requests[0].logprobs == 1
    assert len(body["choices"][0]["logprobs"]["tokens"]) == 4
    again = await svc.complete(completion(prompt=[3] * 40, max_tokens=4, stream=True,
                                          stream_options={"include_usage": True}))
    chunks = await events(again)
    assert chunks[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] == 32
    assert engine.requests[1].stop_token_ids == [2]


# ----------------------------------------------------------------------------- incremental text


def test_incremental_text_holds_back_an_incomplete_utf8_character(tok):
    ids = tok.tokenizer("é café", add_special_tokens=False)["input_ids"]
    text = IncrementalText(tok.decode, [], False)
    pieces = [text.add([i])[0] for i in ids]
    assert "\ufffd" not in "".join(pieces)
    assert "".join(pieces) + text.flush() == "é café"


def test_incremental_text_finds_the_earliest_stop_string():
    words = ["a", "b", "c", "d"]
    decode = lambda ids: "".join(words[i] for i in ids)  # noqa: E731
    text = IncrementalText(decode, ["cd", "bc"], False)
    assert text.add([0]) == ("", None)  # held back: a stop may start here
    assert text.add([1]) == ("a", None)
    assert text.add([2]) == ("", "bc")


async def test_a_raw_prompt_is_keyed_on_its_leading_tokens_so_a_shared_prefix_routes_together(tok):
    """An OpenAI prompt has no known context end: the pool request marks its first
    ``open_prompt_prefix_tokens`` as the shared part, so two prompts with the same leading tokens and
    different tails get the same prefix key (and replica), and a short prompt is keyed whole."""
    from routing.prefix_affinity import PrefixKeyConfig

    pool = ScriptedPool([5, 6])
    svc = CompletionsService(tokenizer=tok, llm=pool, model_name="m", max_model_len=4096,
                             open_prompt_prefix_tokens=32)
    shared = [5] * 40
    await svc.complete(completion(prompt=[*shared, *[6] * 20]))
    await svc.complete(completion(prompt=[*shared, *[9] * 20]))
    await svc.complete(completion(prompt=[3, 2, 1]))
    first, second, short = pool.requests
    assert first.prefix_len == second.prefix_len == 32 and short.prefix_len == 3
    key = PrefixKeyConfig(block_size=16, max_blocks=64)
    assert key.key(first.prompt_token_ids, first.prefix_len) == key.key(second.prompt_token_ids, second.prefix_len)
    assert key.key([*shared, *[6] * 20]) != key.key([*shared, *[9] * 20])  # keyed whole, the tails split them
