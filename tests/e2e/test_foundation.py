"""The foundation through HTTP: health, models, OpenAI-compatible completions with prefix caching."""

import pytest

from testbed.app_process import http_json

pytestmark = pytest.mark.e2e


def test_healthz_reports_every_deployment_healthy(base_url):
    status, body = http_json("GET", f"{base_url}/healthz")
    assert status == 200 and body["status"] == "ok"
    assert body["deployments"] and set(body["deployments"].values()) == {"HEALTHY"}
    assert "llm" in body["deployments"]


def test_models_lists_the_served_model(base_url):
    status, body = http_json("GET", f"{base_url}/v1/models")
    assert status == 200
    assert body["data"][0]["id"] == "SmolLM2-135M-Instruct"


def test_repeated_long_token_prompt_hits_prefix_cache_and_is_deterministic(base_url):
    prompt = [(i * 131) % 40000 + 300 for i in range(1100)]
    body = {"prompt": prompt, "max_tokens": 8, "temperature": 0, "return_token_ids": True}
    first_status, first = http_json("POST", f"{base_url}/v1/completions", body)
    second_status, second = http_json("POST", f"{base_url}/v1/completions", body)
    assert first_status == second_status == 200
    assert first["choices"][0]["prompt_token_ids"] == prompt
    assert len(first["choices"][0]["token_ids"]) == first["usage"]["completion_tokens"] > 0
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    assert second["choices"][0]["token_ids"] == first["choices"][0]["token_ids"]


def test_text_prompt_generates_text(base_url):
    status, body = http_json("POST", f"{base_url}/v1/completions",
                             {"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0})
    assert status == 200
    assert body["usage"]["prompt_tokens"] > 0 and body["usage"]["completion_tokens"] > 0
    assert body["choices"][0]["finish_reason"] in {"stop", "length"}
    assert "<|im_end|>" not in body["choices"][0]["text"]


def test_openai_client_can_use_the_pool(base_url):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused")
    completion = client.completions.create(model="SmolLM2-135M-Instruct", prompt="Hello", max_tokens=4, temperature=0)
    assert completion.usage.completion_tokens > 0


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [({"prompt": "x", "max_tokens": 0}, 400, "max_tokens"), ({"max_tokens": 3}, 400, "prompt"),
     ({"prompt": [1, 2, 10**9]}, 400, "prompt[2]"), ({"prompt": "x", "model": "nope"}, 400, "model"),
     ({"prompt": [5] * 4000, "max_tokens": 200}, 400, "max_tokens")],
)
def test_bad_completion_bodies_answer_4xx_naming_the_field(base_url, body, status, field):
    got_status, got = http_json("POST", f"{base_url}/v1/completions", body)
    assert got_status == status
    assert got["error"]["field"] == field


def test_malformed_json_is_a_400(base_url):
    import urllib.request, urllib.error
    request = urllib.request.Request(f"{base_url}/v1/completions", data=b"{not json", method="POST",
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=30)
    assert info.value.code == 400
