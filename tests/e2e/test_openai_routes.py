"""The OpenAI API as vLLM serves it, through the real app with the official ``openai`` client (issue 18):
chat completions with and without streaming (the client's own SSE parser reads our events), token IDs
that decode to the text, logprobs, completions with echo, each sampling field's effect, refused fields
naming the field, and the chat RAG hook (``collection``) reusing the token cache and vLLM's prefix cache."""

from __future__ import annotations

import json
import urllib.request
import uuid

import pytest

from testbed.app_process import http_json

pytestmark = pytest.mark.e2e

openai = pytest.importorskip("openai")

QUESTION = [{"role": "user", "content": "Name three primary colors."}]


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def model(base_url) -> str:
    status, body = http_json("GET", f"{base_url}/v1/models")
    assert status == 200, body
    return body["data"][0]["id"]


@pytest.fixture(scope="module")
def tokenizer():
    """The served model's tokenizer, to decode returned token IDs the way a trainer would."""
    from llm.model_files import resolve_model_path
    from tokenization import HuggingFaceTokenizer

    return HuggingFaceTokenizer(resolve_model_path())


def salt() -> str:
    return f"oai-{uuid.uuid4().hex[:12]}"


# ----------------------------------------------------------------------------- models


def test_models_lists_the_served_model_with_its_max_length(base_url, client):
    status, body = http_json("GET", f"{base_url}/v1/models")
    assert status == 200
    card = body["data"][0]
    assert card["object"] == "model" and card["max_model_len"] == 4096  # serve_config.yaml's engine setting
    assert [m.id for m in client.models.list()] == [card["id"]]


# ----------------------------------------------------------------------------- chat


def test_chat_without_and_with_stream_give_the_same_greedy_answer(client, model):
    own = {"cache_salt": salt()}
    answer = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=16, temperature=0,
                                            extra_body=own)
    text = answer.choices[0].message.content
    assert answer.object == "chat.completion" and answer.choices[0].message.role == "assistant"
    assert text and answer.choices[0].finish_reason in {"stop", "length"}
    assert answer.usage.prompt_tokens > 0 and 0 < answer.usage.completion_tokens <= 16
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    assert answer.usage.prompt_tokens_details.cached_tokens == 0  # its own salt: nothing to reuse

    stream = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=16, temperature=0, stream=True,
                                            stream_options={"include_usage": True}, extra_body=own)
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [answer.choices[0].finish_reason]
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage.completion_tokens == answer.usage.completion_tokens
    assert usage.prompt_tokens == answer.usage.prompt_tokens and usage.prompt_tokens_details.cached_tokens >= 0
    assert len(chunks) >= 3  # the role chunk, at least one content chunk, the usage chunk


def test_chat_return_token_ids_decode_to_the_text(client, model, tokenizer):
    answer = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=16, temperature=0,
                                            extra_body={"return_token_ids": True})
    data = answer.model_dump()
    token_ids = data["choices"][0]["token_ids"]
    assert len(token_ids) == answer.usage.completion_tokens
    assert tokenizer.decode(token_ids) == answer.choices[0].message.content
    prompt_ids = data["prompt_token_ids"]
    assert len(prompt_ids) == answer.usage.prompt_tokens
    # The chat template rendered by the served model's tokenizer, as vLLM renders it.
    assert prompt_ids == tokenizer.render_chat(QUESTION)

    stream = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=16, temperature=0, stream=True,
                                            extra_body={"return_token_ids": True})
    chunks = [c.model_dump() for c in stream]
    assert chunks[0]["prompt_token_ids"] == prompt_ids
    streamed_ids = [t for c in chunks[1:] for t in (c["choices"][0].get("token_ids") or [])]
    assert streamed_ids == token_ids


def test_chat_logprobs_are_greedy_consistent(client, model):
    answer = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=8, temperature=0,
                                            logprobs=True, top_logprobs=3)
    content = answer.choices[0].logprobs.content
    assert len(content) == answer.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0 and 1 <= len(entry.top_logprobs) <= 3
        # greedy: the chosen token is the most likely one (the first of vLLM's list is the sampled token)
        assert entry.logprob >= max(t.logprob for t in entry.top_logprobs) - 1e-3
    assert "".join(e.token for e in content).strip() != ""


# ----------------------------------------------------------------------------- completions


def test_completions_echo_puts_the_prompt_first(client, model):
    prompt = "The capital of France is"
    completion = client.completions.create(model=model, prompt=prompt, max_tokens=6, temperature=0, echo=True)
    assert completion.choices[0].text.startswith(prompt)
    plain = client.completions.create(model=model, prompt=prompt, max_tokens=6, temperature=0)
    assert completion.choices[0].text == prompt + plain.choices[0].text


def test_completions_logprobs(client, model):
    completion = client.completions.create(model=model, prompt="One, two, three,", max_tokens=5, temperature=0,
                                           logprobs=2)
    logprobs = completion.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == completion.usage.completion_tokens
    assert all(1 <= len(top) <= 3 for top in logprobs.top_logprobs)
    assert logprobs.text_offset == sorted(logprobs.text_offset)


def test_completions_stream_reports_cached_tokens_in_the_usage_chunk(client, model):
    prompt = "Retrieval augmented generation keeps context chunks as token IDs. " * 40
    extra = {"cache_salt": salt()}
    usages = []
    for _ in range(2):
        chunks = list(client.completions.create(model=model, prompt=prompt, max_tokens=4, temperature=0, stream=True,
                                                stream_options={"include_usage": True}, extra_body=extra))
        usages.append(chunks[-1].usage)
    assert usages[0].prompt_tokens_details.cached_tokens == 0
    assert usages[1].prompt_tokens_details.cached_tokens > 0


def test_sse_framing_on_the_wire(base_url, model):
    body = json.dumps({"model": model, "prompt": "Hello", "max_tokens": 4, "stream": True}).encode()
    request = urllib.request.Request(f"{base_url}/v1/completions", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    for event in events[:-2]:
        assert event.startswith("data: ")
        assert json.loads(event[len("data: "):])["object"] == "text_completion"


# ----------------------------------------------------------------------------- each field's effect


def test_seed_makes_sampling_reproducible(client, model):
    def sample(seed: int) -> list[int]:
        completion = client.completions.create(model=model, prompt="Once upon a time", max_tokens=12, temperature=1.0,
                                               seed=seed, extra_body={"return_token_ids": True})
        return completion.model_dump()["choices"][0]["token_ids"]

    first = sample(1234)
    assert sample(1234) == first
    assert any(sample(seed) != first for seed in (1, 2, 3))


def test_max_tokens_and_ignore_eos_bound_the_output(client, model):
    completion = client.completions.create(model=model, prompt="Hi", max_tokens=3, temperature=0,
                                           extra_body={"ignore_eos": True})
    assert completion.usage.completion_tokens == 3 and completion.choices[0].finish_reason == "length"
    answer = client.chat.completions.create(model=model, messages=QUESTION, max_completion_tokens=2, temperature=0)
    assert answer.usage.completion_tokens <= 2


def test_stop_string_and_stop_token_ids_end_the_output(client, model):
    base = client.completions.create(model=model, prompt="Count: 1, 2, 3, 4, 5,", max_tokens=24, temperature=0,
                                     extra_body={"return_token_ids": True, "ignore_eos": True})
    text = base.choices[0].text
    ids = base.model_dump()["choices"][0]["token_ids"]
    # a stop string from the middle of the greedy output: the same output, cut before its first occurrence
    start = next(i for i in range(len(text) // 3, len(text) - 1) if not text[i:i + 2].isspace() and text[i] != " ")
    stop = text[start:start + 2]
    cut = client.completions.create(model=model, prompt="Count: 1, 2, 3, 4, 5,", max_tokens=24, temperature=0,
                                    stop=[stop], extra_body={"ignore_eos": True})
    choice = cut.model_dump()["choices"][0]
    assert choice["text"] == text[:text.index(stop)]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] == stop
    # a stop token id: the output ends at its first occurrence, the token included (as vLLM returns it)
    stop_id = ids[3]
    first = ids.index(stop_id)
    by_id = client.completions.create(model=model, prompt="Count: 1, 2, 3, 4, 5,", max_tokens=24, temperature=0,
                                      extra_body={"return_token_ids": True, "ignore_eos": True,
                                                  "stop_token_ids": [stop_id]})
    data = by_id.model_dump()["choices"][0]
    assert data["token_ids"] == ids[:first + 1] and data["finish_reason"] == "stop"
    assert data["stop_reason"] == stop_id


def test_min_tokens_and_penalties_are_accepted_and_shape_the_output(client, model):
    answer = client.chat.completions.create(
        model=model, messages=QUESTION, max_tokens=12, temperature=0.7, top_p=0.9, presence_penalty=0.5,
        frequency_penalty=0.5, seed=7, extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.2,
                                                   "min_tokens": 10})
    assert answer.usage.completion_tokens >= 10


# ----------------------------------------------------------------------------- refused and ignored fields


@pytest.mark.parametrize(("extra", "field"), [
    ({"n": 2}, "n"),
    ({"logit_bias": {"42": 5}}, "logit_bias"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"use_beam_search": True}, "use_beam_search"),
    ({"echo": True}, "echo"),
    ({"temperature": "hot"}, "temperature"),
    ({"max_completion_tokens": 100_000}, "max_completion_tokens"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}]},
     "messages[0].content[0].type"),
])
def test_refused_chat_fields_are_400_naming_the_field(base_url, model, extra, field):
    status, body = http_json("POST", f"{base_url}/v1/chat/completions",
                             {"model": model, "messages": QUESTION, "max_tokens": 4, **extra})
    assert status == 400, body
    assert body["error"]["field"] == body["error"]["param"] == field, body


@pytest.mark.parametrize(("extra", "field"), [
    ({"suffix": "end"}, "suffix"),
    ({"echo": True, "logprobs": 1}, "echo"),
    ({"best_of": 3}, "best_of"),
    ({"prompt_logprobs": 1}, "prompt_logprobs"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"max_tokens": "4"}, "max_tokens"),
])
def test_refused_completion_fields_are_400_naming_the_field(base_url, model, extra, field):
    status, body = http_json("POST", f"{base_url}/v1/completions", {"model": model, "prompt": "Hi", "max_tokens": 4,
                                                                   **extra})
    assert status == 400, body
    assert body["error"]["field"] == field, body


def test_the_openai_client_sees_the_refused_field_as_param(client, model):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model, messages=QUESTION, max_tokens=4, n=2)
    assert info.value.status_code == 400 and info.value.param == "n"


def test_unknown_fields_are_ignored_as_vllm_ignores_them(base_url, model):
    status, body = http_json("POST", f"{base_url}/v1/chat/completions",
                             {"model": model, "messages": QUESTION, "max_tokens": 2, "no_such_field": [1, 2]})
    assert status == 200, body


# ----------------------------------------------------------------------------- the RAG hook (our extension)


def test_chat_with_a_collection_uses_the_token_cache_and_the_prefix_cache(client, model):
    messages = [{"role": "user", "content": "How do I reset my password?"}]
    extra = {"collection": "support_kb", "retrieval_top_k": 3, "cache_salt": salt(), "return_token_ids": True}
    first = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0,
                                           extra_body=extra).model_dump()
    second = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0,
                                            extra_body=extra).model_dump()
    assert first["rag"]["collection"] == "support_kb" and len(first["rag"]["sources"]) == 3
    assert second["rag"]["sources"] == first["rag"]["sources"]
    assert second["rag"]["cache"]["hits"] == 3  # the chunks' token IDs came from the token cache
    assert second["prompt_token_ids"] == first["prompt_token_ids"]
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    assert first["usage"]["prompt_tokens"] > 100  # the chunks are in the prompt


def test_chat_with_a_collection_streams(client, model):
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "How do I export a dashboard?"}], max_tokens=6,
        temperature=0, stream=True, stream_options={"include_usage": True},
        extra_body={"collection": "support_kb", "retrieval_top_k": 2})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert any(c.usage is not None for c in chunks)


def test_chat_with_an_unknown_collection_is_404_naming_collection(base_url, model):
    status, body = http_json("POST", f"{base_url}/v1/chat/completions",
                             {"model": model, "messages": QUESTION, "max_tokens": 2, "collection": "no_such_kb"})
    assert status == 404 and body["error"]["field"] == "collection", body
