"""Agent request bodies are strict (issue 16): a value of the wrong JSON type is refused with an error located
at the field, never coerced. Only an integer is accepted where a float is due (JSON has one number type)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from agents.registry import AGENTS

VALID = {
    "support": {"query": "How do I reset my password?"},
    "documentation": {"query": "cursor pagination"},
    "business": {"brief": "A tea subscription for offices"},
    "qa": {"code": "def add(a, b):\n    return a + b", "test_type": "unit"},
    "code-review": {"code": "def add(a, b):\n    return a + b", "language": "python"},
    "se-darwin": {"task": "make it faster", "candidate": "def fib(n):\n    return n"},
}

WRONG_TYPES = [
    ("top_k", "5"), ("top_k", 5.0), ("top_k", True),
    ("max_tokens", "64"), ("max_tokens", 64.0),
    ("temperature", "0.5"), ("temperature", True),
    ("stream", "true"), ("stream", 1), ("use_cache", "false"), ("use_cache", 0), ("prefix_cache", "true"),
    ("cache_salt", 1), ("session_id", 42),
]


def test_every_agent_has_a_valid_body():
    assert set(VALID) == {cls.name for cls in AGENTS}


@pytest.mark.parametrize("agent_cls", AGENTS, ids=lambda cls: cls.name)
@pytest.mark.parametrize(("field", "value"), WRONG_TYPES, ids=[f"{f}={v!r}" for f, v in WRONG_TYPES])
def test_common_fields_refuse_wrong_json_types(agent_cls, field, value):
    body = {**VALID[agent_cls.name], field: value}
    for validate in (agent_cls.request_model.model_validate, lambda b: agent_cls.request_model.model_validate_json(
            json.dumps(b))):
        with pytest.raises(ValidationError) as err:
            validate(body)
        assert [e["loc"][0] for e in err.value.errors()] == [field], err.value.errors()


@pytest.mark.parametrize("agent_cls", AGENTS, ids=lambda cls: cls.name)
def test_own_text_fields_refuse_numbers_and_lists(agent_cls):
    for field in VALID[agent_cls.name]:
        for value in (5, 1.5, True, ["text"], {"text": "x"}):
            with pytest.raises(ValidationError) as err:
                agent_cls.request_model.model_validate({**VALID[agent_cls.name], field: value})
            assert err.value.errors()[0]["loc"][0] == field


@pytest.mark.parametrize("agent_cls", AGENTS, ids=lambda cls: cls.name)
def test_right_types_still_pass_and_an_integer_is_a_valid_float(agent_cls):
    body = {**VALID[agent_cls.name], "top_k": 3, "max_tokens": 8, "temperature": 1, "stream": False,
            "use_cache": False, "prefix_cache": True, "cache_salt": "tenant-a", "session_id": "s.1"}
    for request in (agent_cls.request_model.model_validate(body),
                    agent_cls.request_model.model_validate_json(json.dumps(body))):
        assert request.temperature == 1.0 and isinstance(request.temperature, float)
        assert (request.top_k, request.max_tokens, request.use_cache) == (3, 8, False)


def test_normalising_validators_still_apply_under_strict_mode():
    qa = next(cls for cls in AGENTS if cls.name == "qa")
    review = next(cls for cls in AGENTS if cls.name == "code-review")
    assert qa.request_model.model_validate({**VALID["qa"], "test_type": "Unit-Tests"}).test_type == "unit"
    assert review.request_model.model_validate({**VALID["code-review"], "language": "py"}).language == "python"
