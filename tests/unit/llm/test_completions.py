import pytest
from pydantic import ValidationError

from llm import GenerateRequest, GenerateResult, InvalidRequestError
from llm.completions import CompletionRequest, CompletionsService
from tests.fakes.fake_tokenizer import FakeTokenizer


class RecordingPool:
    def __init__(self, output: list[int], cached: int = 0, finish_reason: str = "length") -> None:
        self.output = output
        self.cached = cached
        self.finish_reason = finish_reason
        self.requests: list[GenerateRequest] = []

    async def generate(self, request: GenerateRequest) -> GenerateResult:
        self.requests.append(request)
        return GenerateResult(
            token_ids=self.output, prompt_tokens=len(request.prompt_token_ids), num_cached_tokens=self.cached,
            completion_tokens=len(self.output), finish_reason=self.finish_reason, ttft_s=0.1, total_s=0.2,
        )


def make_service(tokenizer: FakeTokenizer, pool: RecordingPool) -> CompletionsService:
    return CompletionsService(tokenizer=tokenizer, generate=pool.generate, model_name="m", clock=lambda: 1000.0)


async def test_token_prompt_passes_through_and_returns_ids():
    tok = FakeTokenizer()
    out_ids = tok.encode("alpha beta gamma")
    pool = RecordingPool(out_ids, cached=32)
    service = make_service(tok, pool)
    body = await service.complete(CompletionRequest(prompt=[2, 1, 0], max_tokens=3, temperature=0, return_token_ids=True))
    assert pool.requests[0].prompt_token_ids == [2, 1, 0]
    assert pool.requests[0].temperature == 0
    choice = body["choices"][0]
    assert choice["text"] == "alpha beta gamma"
    assert choice["prompt_token_ids"] == [2, 1, 0] and choice["token_ids"] == out_ids
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6,
                             "prompt_tokens_details": {"cached_tokens": 32}}
    assert body["object"] == "text_completion" and body["model"] == "m"


async def test_text_prompt_is_tokenized_and_stop_string_cuts_text():
    tok = FakeTokenizer()
    pool = RecordingPool(tok.encode("one two STOP three"))
    body = await make_service(tok, pool).complete(CompletionRequest(prompt="hello world", stop=["STOP"]))
    assert pool.requests[0].prompt_token_ids == tok.encode("hello world")
    assert body["choices"][0]["text"] == "one two "
    assert body["choices"][0]["finish_reason"] == "stop"
    assert "token_ids" not in body["choices"][0]


async def test_out_of_vocabulary_token_names_its_index():
    tok = FakeTokenizer()
    tok.encode("a b c")
    with pytest.raises(InvalidRequestError) as info:
        await make_service(tok, RecordingPool([])).complete(CompletionRequest(prompt=[0, 10**9]))
    assert info.value.field == "prompt[1]"


async def test_unknown_model_is_refused():
    with pytest.raises(InvalidRequestError) as info:
        await make_service(FakeTokenizer(), RecordingPool([])).complete(CompletionRequest(model="other", prompt="x"))
    assert info.value.field == "model"


@pytest.mark.parametrize(
    ("body", "field"),
    [({"prompt": ""}, "prompt"), ({"prompt": []}, "prompt"), ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
     ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"), ({"prompt": "x", "bogus": 1}, "bogus"),
     ({"prompt": "x", "temperature": -1}, "temperature")],
)
def test_request_validation_names_the_field(body, field):
    with pytest.raises(ValidationError) as info:
        CompletionRequest.model_validate(body)
    assert info.value.errors()[0]["loc"][0] == field


@pytest.mark.parametrize(
    ("body", "field"),
    [({"prompt": 5}, "prompt"), ({"prompt": [1, "2"]}, "prompt"), ({"prompt": [1, 2.0]}, "prompt"),
     ({"prompt": [True]}, "prompt"), ({"prompt": "x", "max_tokens": "16"}, "max_tokens"),
     ({"prompt": "x", "max_tokens": 16.0}, "max_tokens"), ({"prompt": "x", "temperature": "0.5"}, "temperature"),
     ({"prompt": "x", "top_p": "1"}, "top_p"), ({"prompt": "x", "seed": "7"}, "seed"),
     ({"prompt": "x", "return_token_ids": "true"}, "return_token_ids"),
     ({"prompt": "x", "return_token_ids": 1}, "return_token_ids"), ({"prompt": "x", "stop": 5}, "stop"),
     ({"prompt": "x", "model": 1}, "model"), ({"prompt": "x", "user": 1}, "user"),
     ({"prompt": "x", "cache_salt": 1}, "cache_salt")],
)
def test_wrong_json_types_are_refused_not_coerced(body, field):
    """Issue 16: strict types; for the JSON route as well as in Python."""
    import json

    for validate in (CompletionRequest.model_validate, lambda b: CompletionRequest.model_validate_json(json.dumps(b))):
        with pytest.raises(ValidationError) as info:
            validate(body)
        assert {e["loc"][0] for e in info.value.errors()} == {field}


def test_integers_are_valid_floats():
    import json

    for request in (CompletionRequest.model_validate({"prompt": "x", "temperature": 1, "top_p": 1}),
                    CompletionRequest.model_validate_json(json.dumps({"prompt": [1, 2], "temperature": 0}))):
        assert isinstance(request.temperature, float) and isinstance(request.top_p, float)
