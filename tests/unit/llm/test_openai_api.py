"""The OpenAI request bodies (issue 18): vLLM's fields accepted with vLLM's meaning, fields we do not serve
refused naming the field, fields neither knows ignored (as vLLM ignores them), strict JSON types."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from llm import InvalidRequestError
from llm.openai_api import ChatCompletionRequest, CompletionRequest

CHAT = {"messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {"prompt": "hi"}


def refused_field(model, body) -> str:
    """The field a refused body names over HTTP: InvalidRequestError's, or the gateway's reading of
    pydantic's error locations (``messages[0].content[0].type``)."""
    from deployments.gateway import _invalid_field

    try:
        model.model_validate_json(json.dumps(body))
    except InvalidRequestError as err:
        return err.field
    except ValidationError as err:
        return _invalid_field([{**e, "loc": ("body", *e["loc"])} for e in err.errors()])[0]
    raise AssertionError(f"accepted: {body}")


SHARED_ACCEPTED = [
    {"stream": True}, {"stream": True, "stream_options": {"include_usage": True}},
    {"stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}},
    {"n": 1}, {"temperature": 0}, {"temperature": 0.7}, {"top_p": 0.9}, {"top_k": 40}, {"top_k": -1}, {"min_p": 0.05},
    {"seed": 7}, {"stop": "\n"}, {"stop": ["a", "b"]}, {"stop": None}, {"stop_token_ids": [1, 2]},
    {"presence_penalty": 0.5}, {"frequency_penalty": -0.5}, {"repetition_penalty": 1.1}, {"ignore_eos": True},
    {"min_tokens": 2}, {"user": "u1"}, {"cache_salt": "tenant-a"}, {"return_token_ids": True},
    {"include_stop_str_in_output": True}, {"model": "m"}, {"stream": False, "stream_options": None},
    # vLLM fields we do not serve, with the values that mean "not used": accepted
    {"logit_bias": None}, {"logit_bias": {}}, {"use_beam_search": False}, {"best_of": 1}, {"response_format": None},
    {"response_format": {"type": "text"}}, {"bad_words": []}, {"priority": 0}, {"prompt_logprobs": None},
    {"skip_special_tokens": True}, {"spaces_between_special_tokens": True},
    # fields neither knows: ignored, as vLLM ignores them
    {"bogus": 1}, {"x_custom_field": {"a": [1]}},
]


@pytest.mark.parametrize("extra", SHARED_ACCEPTED + [
    {"max_tokens": 5}, {"max_tokens": None}, {"logprobs": 0}, {"logprobs": 5}, {"logprobs": None}, {"echo": True},
    {"echo": True, "max_tokens": 0}, {"add_special_tokens": False}, {"suffix": None},
])
def test_completion_fields_are_accepted(extra):
    request = CompletionRequest.model_validate_json(json.dumps({**COMPLETION, **extra}))
    assert request.prompt == "hi"


@pytest.mark.parametrize("extra", SHARED_ACCEPTED + [
    {"max_tokens": 5}, {"max_completion_tokens": 5}, {"logprobs": True}, {"logprobs": True, "top_logprobs": 3},
    {"top_logprobs": None}, {"tools": None}, {"tools": []}, {"tool_choice": "none"}, {"tool_choice": "auto"},
    {"parallel_tool_calls": True}, {"echo": False}, {"add_generation_prompt": False},
    {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
     "add_generation_prompt": False, "continue_final_message": True},
    {"collection": "support_kb"}, {"collection": "support_kb", "retrieval_top_k": 3},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]},
    {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u", "name": "bob"}]},
    {"messages": [{"role": "assistant", "content": None, "tool_calls": []}, {"role": "user", "content": "u"}]},
])
def test_chat_fields_are_accepted(extra):
    request = ChatCompletionRequest.model_validate_json(json.dumps({**CHAT, **extra}))
    assert request.messages


SHARED_REFUSED = [
    ({"n": 2}, "n"), ({"n": 0}, "n"), ({"logit_bias": {"5": 10}}, "logit_bias"), ({"use_beam_search": True}, "use_beam_search"),
    ({"best_of": 2}, "best_of"), ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"prompt_logprobs": 1}, "prompt_logprobs"), ({"bad_words": ["x"]}, "bad_words"), ({"priority": 1}, "priority"),
    ({"allowed_token_ids": [1]}, "allowed_token_ids"), ({"structured_outputs": {"json": {}}}, "structured_outputs"),
    ({"truncate_prompt_tokens": 5}, "truncate_prompt_tokens"), ({"skip_special_tokens": False}, "skip_special_tokens"),
    ({"stream_options": {"include_usage": True}}, "stream_options"), ({"temperature": -0.1}, "temperature"),
    ({"top_p": 0}, "top_p"), ({"top_k": -2}, "top_k"), ({"min_p": 1.5}, "min_p"), ({"presence_penalty": 3}, "presence_penalty"),
    ({"frequency_penalty": -3}, "frequency_penalty"), ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"min_tokens": -1}, "min_tokens"), ({"stop": ["a", "b", "c", "d", "e"]}, "stop"), ({"stop": [""]}, "stop"),
    ({"cache_salt": ""}, "cache_salt"), ({"cache_salt": "no spaces"}, "cache_salt"),
    # strict JSON types, as on every route of the app
    ({"temperature": "0.5"}, "temperature"), ({"top_k": 4.0}, "top_k"), ({"seed": "7"}, "seed"), ({"stream": "true"}, "stream"),
    ({"ignore_eos": 1}, "ignore_eos"), ({"stop_token_ids": [1, "2"]}, "stop_token_ids[1]"), ({"user": 5}, "user"),
    ({"return_token_ids": "yes"}, "return_token_ids"), ({"model": 1}, "model"),
]


@pytest.mark.parametrize(("extra", "field"), SHARED_REFUSED + [
    ({"max_tokens": 0}, "max_tokens"), ({"max_tokens": -1}, "max_tokens"), ({"max_tokens": "16"}, "max_tokens"),
    ({"logprobs": 21}, "logprobs"), ({"logprobs": True}, "logprobs"), ({"echo": True, "logprobs": 1}, "echo"),
    ({"suffix": "tail"}, "suffix"), ({"min_tokens": 20, "max_tokens": 10}, "min_tokens"), ({"prompt": ""}, "prompt"),
    ({"prompt": [1, "2"]}, "prompt[1]"), ({"prompt": 5}, "prompt"), ({"add_special_tokens": "no"}, "add_special_tokens"),
])
def test_completion_refusals_name_the_field(extra, field):
    assert refused_field(CompletionRequest, {**COMPLETION, **extra}) == field


@pytest.mark.parametrize(("extra", "field"), SHARED_REFUSED + [
    ({"max_completion_tokens": 0}, "max_completion_tokens"), ({"max_tokens": 0}, "max_tokens"),
    ({"logprobs": 1}, "logprobs"), ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"), ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"tool_choice": "required"}, "tool_choice"), ({"echo": True}, "echo"), ({"chat_template": "{{x}}"}, "chat_template"),
    ({"response_format": {"type": "json_schema", "json_schema": {}}}, "response_format"),
    ({"messages": []}, "messages"), ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content[0].type"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"id": "1"}]}]}, "messages[0].tool_calls"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"continue_final_message": True}, "continue_final_message"),
    ({"continue_final_message": True, "add_generation_prompt": False}, "continue_final_message"),
    ({"retrieval_top_k": 3}, "retrieval_top_k"), ({"collection": ""}, "collection"),
    ({"collection": "kb", "retrieval_top_k": 0}, "retrieval_top_k"),
    ({"min_tokens": 20, "max_completion_tokens": 10}, "min_tokens"),
])
def test_chat_refusals_name_the_field(extra, field):
    assert refused_field(ChatCompletionRequest, {**CHAT, **extra}) == field


def test_sampling_defaults_are_vllms():
    """Unset fields take vLLM's defaults for the API: temperature 1.0 (an OpenAI client samples), all
    penalties off, top_k 0 (all tokens); completions' max_tokens 16, chat's: what the context leaves."""
    completion = CompletionRequest.model_validate(COMPLETION)
    assert completion.sampling() == {
        "temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
        "repetition_penalty": 1.0, "min_tokens": 0, "ignore_eos": False, "seed": None, "stop_token_ids": [],
        "cache_salt": None}
    assert completion.output_budget == 16
    chat = ChatCompletionRequest.model_validate(CHAT)
    assert chat.output_budget is None and chat.logprobs_k is None


def test_chat_budget_prefers_max_completion_tokens_and_logprobs_ask_for_alternatives():
    chat = ChatCompletionRequest.model_validate({**CHAT, "max_tokens": 9, "max_completion_tokens": 5,
                                                 "logprobs": True, "top_logprobs": 3})
    assert chat.output_budget == 5 and chat.logprobs_k == 3
    assert ChatCompletionRequest.model_validate({**CHAT, "logprobs": True}).logprobs_k == 0


def test_message_text_joins_text_parts_with_newlines_as_vllm_does():
    chat = ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]})
    assert chat.messages[0].template_dict() == {"role": "user", "content": "a\nb"}


def test_the_vllm_bench_clients_bodies_are_accepted():
    """What `vllm bench serve --backend openai` and `--backend openai-chat` send (vllm/benchmarks/lib/
    endpoint_request_func.py), which failed with 422 before issue 18."""
    completion = CompletionRequest.model_validate_json(json.dumps({
        "model": "m", "prompt": "hello there", "repetition_penalty": 1.0, "max_tokens": 8, "logprobs": None,
        "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}))
    assert completion.include_usage and completion.ignore_eos
    chat = ChatCompletionRequest.model_validate_json(json.dumps({
        "model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
        "max_completion_tokens": 8, "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}))
    assert chat.output_budget == 8 and chat.include_usage
