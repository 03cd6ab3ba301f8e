"""The OpenAI routes over HTTP without Ray (issue 18): the official ``openai`` client talks to the gateway's
FastAPI app through Starlette's TestClient (an httpx client), so its own SSE parser reads our streams and
its own error type reads our 400s. The completions service is real; the pool is a scripted test double."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from deployments import gateway
from llm.completions import CompletionsService
from tests.fakes.fake_hf_tokenizer import build_chatml_tokenizer
from tests.fakes.scripted_pool import ScriptedPool

openai = pytest.importorskip("openai")


class GatewayInstance(gateway.Gateway.func_or_class):
    def __del__(self) -> None:
        pass


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return build_chatml_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture
def pool(tok) -> ScriptedPool:
    return ScriptedPool(tok.encode("the token cache keeps chunk token ids"), cached=16, per_delta=2)


@pytest.fixture
def http(tok, pool, monkeypatch) -> TestClient:
    monkeypatch.delenv(gateway.API_KEY_ENV, raising=False)
    self = object.__new__(GatewayInstance)
    self.config = SimpleNamespace(protect_reads=False)
    self._completions = CompletionsService(tokenizer=tok, llm=pool, model_name="m", max_model_len=512)
    monkeypatch.setattr(gateway.serve, "get_replica_context", lambda: SimpleNamespace(servable_object=self))
    return TestClient(gateway.app, raise_server_exceptions=False)


@pytest.fixture
def client(http):
    return openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0)


def test_models_lists_the_model_with_its_max_length(http):
    body = http.get("/v1/models").json()
    assert body["object"] == "list"
    assert body["data"][0]["id"] == "m" and body["data"][0]["max_model_len"] == 512


def test_openai_client_chat_without_and_with_stream(client, pool, tok):
    answer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=32)
    assert answer.choices[0].message.content == "the token cache keeps chunk token ids"
    assert answer.usage.prompt_tokens_details.cached_tokens == 16
    stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=32,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == answer.usage.completion_tokens


def test_openai_client_return_token_ids_decode_to_the_text(client, tok):
    answer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=32,
                                            extra_body={"return_token_ids": True})
    data = answer.model_dump()
    assert tok.decode(data["choices"][0]["token_ids"]) == answer.choices[0].message.content
    assert tok.decode(data["prompt_token_ids"]).endswith("<|im_start|>user\nhi\n<|im_start|>assistant\n")


def test_openai_client_completions_stream_and_echo(client):
    stream = client.completions.create(model="m", prompt="hello", max_tokens=32, stream=True, echo=True,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == "hellothe token cache keeps chunk token ids"
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 16


def test_openai_client_logprobs(client):
    answer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                            logprobs=True, top_logprobs=2)
    content = answer.choices[0].logprobs.content
    assert len(content) == 4 and all(len(c.top_logprobs) == 2 for c in content)


@pytest.mark.parametrize(("route", "body", "field"), [
    ("/v1/chat/completions", {"n": 2}, "n"),
    ("/v1/chat/completions", {"logit_bias": {"1": 3}}, "logit_bias"),
    ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ("/v1/chat/completions", {"temperature": "1"}, "temperature"),
    ("/v1/chat/completions", {"max_completion_tokens": 10_000}, "max_completion_tokens"),
    ("/v1/chat/completions", {"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ("/v1/completions", {"prompt": "x", "suffix": "y"}, "suffix"),
    ("/v1/completions", {"prompt": "x", "echo": True, "logprobs": 1}, "echo"),
    ("/v1/completions", {"prompt": "x", "max_tokens": "16"}, "max_tokens"),
    ("/v1/completions", {"prompt": [1, "2"]}, "prompt[1]"),
    ("/v1/completions", {"prompt": "x", "model": "other"}, "model"),
])
def test_refused_fields_are_400_naming_the_field(http, client, route, body, field):
    full = {"messages": [{"role": "user", "content": "hi"}], **body} if "chat" in route else body
    response = http.post(route, json=full)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["field"] == error["param"] == field
    if "chat" in route:  # the openai client sees the field as the error's param
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="m", **{"messages": full["messages"]},
                                           extra_body={k: v for k, v in full.items() if k != "messages"})
        assert info.value.param == field


def test_unknown_fields_are_ignored_as_vllm_ignores_them(http):
    response = http.post("/v1/completions", json={"prompt": "x", "max_tokens": 2, "surprise": {"a": 1}})
    assert response.status_code == 200, response.text


def test_sse_framing_is_strict(http):
    with http.stream("POST", "/v1/completions", json={"prompt": "x", "max_tokens": 4, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = "".join(response.iter_text())
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: {") and "\n" not in e for e in events[:-2])
