"""prefix_key and extract_prompt_tokens: block alignment, context_end, request shapes."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from routing.prefix_affinity import PromptTokens, extract_prompt_tokens, prefix_key

CONTEXT = list(range(1000, 1000 + 160))  # 10 whole blocks of 16


def test_shorter_than_one_block_has_no_key() -> None:
    assert prefix_key([]) is None
    assert prefix_key(list(range(15))) is None
    assert prefix_key(list(range(16))) is not None


def test_same_tokens_same_key_and_key_is_a_string() -> None:
    key = prefix_key(CONTEXT)
    assert isinstance(key, str)
    assert prefix_key(list(CONTEXT)) == key
    assert prefix_key(tuple(CONTEXT)) == key


def test_stable_across_partial_trailing_block() -> None:
    # Tokens after the last whole block cannot be reused from the prefix cache, so they must not
    # change the key.
    base = prefix_key(CONTEXT)
    for tail_len in range(1, 16):
        assert prefix_key(CONTEXT + [7] * tail_len) == base
    assert prefix_key(CONTEXT + [7] * 16) != base


def test_tokens_after_context_end_do_not_matter() -> None:
    end = len(CONTEXT)
    a = prefix_key(CONTEXT + list(range(5, 105)), context_end=end)
    b = prefix_key(CONTEXT + list(range(9, 300)), context_end=end)
    assert a == b == prefix_key(CONTEXT)


def test_context_end_rounds_down_to_whole_blocks() -> None:
    # A context ending mid-block keys on its whole blocks only: the partial block is recomputed.
    prompt = CONTEXT + list(range(50))
    assert prefix_key(prompt, context_end=len(CONTEXT) + 5) == prefix_key(CONTEXT)
    assert prefix_key(prompt, context_end=10) is None
    assert prefix_key(prompt, context_end=0) is None
    # Past the end of the prompt it is clamped to the prompt.
    assert prefix_key(CONTEXT, context_end=10_000) == prefix_key(CONTEXT)


def test_different_leading_block_different_key() -> None:
    other = [CONTEXT[0] + 1] + CONTEXT[1:]
    assert prefix_key(other) != prefix_key(CONTEXT)


def test_max_blocks_caps_the_hashed_prefix() -> None:
    a = CONTEXT + [1] * 64
    b = CONTEXT + [2] * 64
    assert prefix_key(a, max_blocks=10) == prefix_key(b, max_blocks=10)
    assert prefix_key(a, max_blocks=11) != prefix_key(b, max_blocks=11)


def test_block_size_is_respected() -> None:
    tokens = list(range(40))
    assert prefix_key(tokens, block_size=32) == prefix_key(tokens[:32] + [0] * 7, block_size=32)
    assert prefix_key(tokens, block_size=64) is None


def test_bad_tokens_and_bad_parameters_raise_value_error() -> None:
    with pytest.raises(ValueError):
        prefix_key([1.5] * 16)  # type: ignore[list-item]
    with pytest.raises(ValueError):
        prefix_key([-1] * 16)
    with pytest.raises(ValueError):
        prefix_key(CONTEXT, block_size=0)
    with pytest.raises(ValueError):
        prefix_key(CONTEXT, max_blocks=0)


@dataclass
class _FakeGenerateRequest:
    prompt_token_ids: list[int]
    prefix_len: int | None = None
    cache_salt: str | None = None


def test_cache_salt_separates_keys() -> None:
    base = prefix_key(CONTEXT)
    assert prefix_key(CONTEXT, cache_salt=None) == base
    assert prefix_key(CONTEXT, cache_salt="") == base
    assert prefix_key(CONTEXT, cache_salt="tenant-a") == prefix_key(CONTEXT, cache_salt="tenant-a")
    salted = prefix_key(CONTEXT, cache_salt="tenant-a")
    assert salted not in {base, prefix_key(CONTEXT, cache_salt="tenant-b")}
    # Still no key without a whole block, salt or not.
    assert prefix_key([1, 2], cache_salt="tenant-a") is None


def test_extract_prompt_tokens_from_the_accepted_shapes() -> None:
    assert extract_prompt_tokens([1, 2, 3]) == PromptTokens([1, 2, 3])
    assert extract_prompt_tokens({"prompt_token_ids": [1, 2], "prefix_len": 1}) == (
        PromptTokens([1, 2], 1)
    )
    assert extract_prompt_tokens({"prompt_token_ids": [1, 2]}) == PromptTokens([1, 2])
    assert extract_prompt_tokens({"prompt_token_ids": [1], "cache_salt": "s"}) == PromptTokens(
        [1], None, "s"
    )
    assert extract_prompt_tokens(_FakeGenerateRequest([4, 5], prefix_len=2, cache_salt="t")) == (
        PromptTokens([4, 5], 2, "t")
    )
    assert extract_prompt_tokens(_FakeGenerateRequest([4, 5])) == PromptTokens([4, 5])


def test_extract_prompt_tokens_reads_the_llm_generate_request() -> None:
    types = pytest.importorskip("llm.types")
    request = types.GenerateRequest(prompt_token_ids=[1, 2, 3], prefix_len=2, cache_salt="x")
    assert extract_prompt_tokens(request) == PromptTokens([1, 2, 3], 2, "x")


def test_extract_prompt_tokens_rejects_other_shapes() -> None:
    assert extract_prompt_tokens("some text") is None
    assert extract_prompt_tokens(None) is None
    assert extract_prompt_tokens({"prompt": "text"}) is None
    assert extract_prompt_tokens({"prompt_token_ids": "text"}) is None
    # Ill-typed optional fields are ignored rather than trusted.
    assert extract_prompt_tokens({"prompt_token_ids": [1], "prefix_len": "3"}) == PromptTokens([1])
    assert extract_prompt_tokens({"prompt_token_ids": [1], "prefix_len": True}) == PromptTokens([1])
    assert extract_prompt_tokens({"prompt_token_ids": [1], "cache_salt": 5}) == PromptTokens([1])
