"""The chat completions RAG hook (issue 18): a chat prompt assembled by the agents' pipeline, with the
retrieved chunks' cached token IDs in the system turn, in the reuse planner's order."""

from __future__ import annotations

import pytest

from llm import InvalidRequestError
from rag.chat import DEFAULT_CHAT_SYSTEM_PROMPT, RAGChatContext
from rag.pipeline import chunk_segment_text
from tests.unit.rag.test_pipeline import SEGMENTS, Harness


@pytest.fixture
def harness(tmp_path) -> Harness:
    return Harness(tmp_path)


async def ask(context: RAGChatContext, user: str, **kwargs):
    args = {"collection": "support_kb", "top_k": 3, "system": "sys prompt", "turns": [], "user": user,
            "max_tokens": 16, "cache_salt": None}
    return await context.prompt(**{**args, **kwargs})


async def test_chunks_go_into_the_system_turn_as_cached_token_ids(harness):
    context = RAGChatContext(harness.rag)
    first = await ask(context, "how do I reset my password")
    second = await ask(context, "how do I reset my password")
    assert (first.cache_hits, first.cache_misses) == (0, 3) and (second.cache_hits, second.cache_misses) == (3, 0)
    assert first.token_ids == second.token_ids and len(first.sources) == 3
    ids = first.token_ids
    system = harness.tokenizer.encode("sys prompt")
    assert ids[: 1 + len(system)] == [*SEGMENTS.before_system, *system]
    # each source's cached segment sits inside the shared prefix, which ends before the user turn
    prefix = ids[: first.prefix_len]
    for chunk_id in first.sources:
        hit = next(h for h in await harness.retrieval.search("support_kb", "how do I reset my password", 3)
                   if h.chunk_id == chunk_id)
        segment = harness.tokenizer.encode(chunk_segment_text(hit.chunk))
        assert any(prefix[i:i + len(segment)] == segment for i in range(len(prefix)))
    assert ids[first.prefix_len:] == [*SEGMENTS.system_to_user, *harness.tokenizer.encode("how do I reset my password"),
                                      *SEGMENTS.after_user]


async def test_earlier_turns_follow_the_context_and_the_default_system_prompt_is_used(harness):
    context = RAGChatContext(harness.rag)
    prompt = await ask(context, "and billing refunds", system=None, turns=[("q one", "a one")])
    enc = harness.tokenizer.encode
    system = enc(DEFAULT_CHAT_SYSTEM_PROMPT)
    assert prompt.token_ids[1:1 + len(system)] == system
    turn = [*SEGMENTS.system_to_user, *enc("q one"), *SEGMENTS.after_user, *enc("a one")]
    assert prompt.token_ids[prompt.prefix_len - len(turn):prompt.prefix_len] == turn


async def test_a_recent_context_is_reused_whole_in_its_order_as_for_the_agents(harness):
    context = RAGChatContext(harness.rag)
    first = await ask(context, "reset password login page", top_k=2)
    second = await ask(context, "login page password reset forgot", top_k=2)
    if set(first.sources) == set(second.sources):
        assert second.sources == first.sources
        assert second.token_ids[: first.prefix_len] == first.token_ids[: first.prefix_len]


async def test_retrieval_top_k_and_an_empty_question_are_refused_naming_the_field(harness):
    context = RAGChatContext(harness.rag)
    with pytest.raises(InvalidRequestError) as info:
        await ask(context, "x", top_k=21)
    assert info.value.field == "retrieval_top_k"
    with pytest.raises(InvalidRequestError) as info:
        await ask(context, "   ")
    assert info.value.field == "messages"
