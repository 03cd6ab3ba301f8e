"""Conversations: a follow-up extends the previous turn's exact token IDs; limits drop the oldest turns;
the store keeps sessions in Redis with a local fallback. Real pipeline, store, token cache and prompt
assembly; the embedder, tokenizer, engine and Redis client are test doubles."""

from __future__ import annotations

import pytest

from agents.support import SupportAgent, SupportRequest
from cache.redis_tier import RedisTier
from llm.exceptions import InvalidRequestError
from rag.agent_service import AgentService
from rag.sessions import Session, SessionConfig, SessionStore, SessionTurn
from tests.fakes.fake_redis_client import FakeRedisClient
from tests.unit.rag.test_pipeline import Harness

EOS = 999


class ConversationHarness(Harness):
    def __init__(self, tmp_path, sessions: SessionConfig | None = None, redis: FakeRedisClient | None = None) -> None:
        super().__init__(tmp_path)
        self.sessions_config = sessions or SessionConfig()
        self.rag._eos = frozenset({EOS})
        self.rag._sessions = self.sessions_config
        tier = RedisTier(redis, ttl_s=None, timeout_s=1.0) if redis is not None else None
        self.store = SessionStore(self.sessions_config, tier)
        self.service = AgentService(SupportAgent(), self.rag, self.retrieval, self.store)

    async def ask(self, query: str, session_id: str = "s1", **kwargs) -> dict:
        body = {"query": query, "top_k": 2, "max_tokens": 4, "session_id": session_id, **kwargs}
        return await self.service.answer(SupportRequest(**body))


@pytest.fixture
def convo(tmp_path) -> ConversationHarness:
    return ConversationHarness(tmp_path)


async def test_follow_up_prompt_starts_with_the_previous_prompt_and_output_exactly(convo):
    first = await convo.ask("how do I reset my password")
    second = await convo.ask("and what if I no longer have the email?")
    turns = (await convo.service.get_session("s1"))["turns"]
    assert [first["session"]["turn"], second["session"]["turn"]] == [0, 1]
    turn1, turn2 = turns
    history = turn1["prompt_token_ids"] + turn1["response_token_ids"]
    assert turn2["prompt_token_ids"][: len(history)] == history
    request = convo.engine.requests[-1]
    assert request.prefix_len == len(history)  # the router keys on the conversation so far
    assert second["usage"]["prefix_cached_tokens"] >= (len(turn1["prompt_token_ids"]) // 16) * 16


async def test_follow_up_adds_only_chunks_the_conversation_has_not_seen(convo):
    await convo.ask("refund annual billing plan")
    await convo.ask("refund annual billing plan please")  # the same chunks again
    turn1, turn2 = (await convo.service.get_session("s1"))["turns"]
    new_part = turn2["prompt_token_ids"][len(turn1["prompt_token_ids"]) + len(turn1["response_token_ids"]):]
    header = convo.tokenizer.encode("\n\nContext:\n")
    assert header != new_part[1: 1 + len(header)]  # no context header: nothing new to add
    assert set(turn2["sources"]) == set(turn1["sources"])


async def test_end_of_turn_token_is_not_doubled(convo):
    # The template's turn separator starts with the end-of-turn token; a response ending in it is stripped.
    session = Session("s2", "support", [SessionTurn([5, 6, 7], [8, EOS], [6], "u", "r", [])])
    await convo.store.put(session)
    await convo.ask("two factor", session_id="s2")
    prompt = convo.engine.requests[-1].prompt_token_ids
    assert prompt[:5] == [5, 6, 7, 8, 2]  # history, then system_to_user (2) without EOS before it


async def test_turn_limit_drops_the_oldest_turns_and_rebuilds_the_prompt(tmp_path):
    convo = ConversationHarness(tmp_path, SessionConfig(max_turns=2))
    await convo.ask("reset password")
    await convo.ask("two factor codes")
    third = await convo.ask("export dashboards")
    assert third["session"]["history_rebuilt"] and third["session"]["dropped_turns"] == 1
    session = await convo.service.get_session("s1")
    assert session["dropped_turns"] == 1 and len(session["turns"]) == 2
    kept, rebuilt = session["turns"]
    prompt = rebuilt["prompt_token_ids"]
    # The kept turn's own user content and output are in the rebuilt prompt, as the same token IDs.
    assert _contains(prompt, kept["response_token_ids"][:-1] if kept["response_token_ids"][-1] == EOS
                     else kept["response_token_ids"])
    assert prompt[0] == 1  # starts over from the chat template's system header


async def test_history_token_limit_rebuilds_too(tmp_path):
    convo = ConversationHarness(tmp_path, SessionConfig(max_history_tokens=64))
    await convo.ask("reset password")
    second = await convo.ask("two factor")
    assert second["session"]["history_rebuilt"]


async def test_plain_mode_resends_the_history_as_text(convo):
    await convo.ask("reset password", use_cache=False)
    await convo.ask("what about two factor", use_cache=False)
    assert convo.plain_prompts == 2
    turn1, turn2 = (await convo.service.get_session("s1"))["turns"]
    assert turn2["mode"] == "plain_rag"
    text = convo.tokenizer.decode(turn2["prompt_token_ids"])
    assert turn1["user_text"] in text and "two factor" in text


async def test_a_session_belongs_to_one_agent(convo):
    await convo.store.put(Session("s3", "documentation"))
    with pytest.raises(InvalidRequestError) as err:
        await convo.ask("reset password", session_id="s3")
    assert err.value.field == "session_id"
    assert await convo.service.get_session("s3") is None


async def test_delete_ends_the_session(convo):
    await convo.ask("reset password")
    assert await convo.service.delete_session("s1") is True
    assert await convo.service.get_session("s1") is None
    assert await convo.service.delete_session("s1") is False
    again = await convo.ask("reset password")
    assert again["session"]["turn"] == 0


async def test_store_expires_local_sessions_on_an_injected_clock():
    now = [1000.0]
    store = SessionStore(SessionConfig(ttl_s=10), clock=lambda: now[0])
    await store.put(Session("a", "support"))
    now[0] += 9
    assert await store.get("a") is not None
    now[0] += 11
    assert await store.get("a") is None


async def test_store_bounds_the_local_sessions():
    store = SessionStore(SessionConfig(max_local_sessions=2))
    for name in ("a", "b", "c"):
        await store.put(Session(name, "support"))
    assert await store.get("a") is None
    assert await store.get("b") is not None and await store.get("c") is not None


async def test_store_shares_through_redis_and_falls_back_to_local_when_it_is_down():
    client = FakeRedisClient()
    writer = SessionStore(SessionConfig(), RedisTier(client, timeout_s=1.0))
    reader = SessionStore(SessionConfig(), RedisTier(client, timeout_s=1.0))  # another replica
    await writer.put(Session("a", "support", [SessionTurn([1], [2], [1], "u", "r", ["d#0"])]))
    seen = await reader.get("a")
    assert seen is not None and seen.turns[0].prompt_token_ids == [1]
    client.down = True
    await writer.put(Session("b", "support"))  # Redis down: kept on this replica
    assert await writer.get("b") is not None
    assert await reader.get("b") is None


def _contains(seq: list[int], sub: list[int]) -> bool:
    n = len(sub)
    return any(seq[i:i + n] == sub for i in range(len(seq) - n + 1))


async def test_delete_removes_the_session_from_redis_for_every_replica():
    client = FakeRedisClient()
    writer = SessionStore(SessionConfig(), RedisTier(client, timeout_s=1.0))
    reader = SessionStore(SessionConfig(), RedisTier(client, timeout_s=1.0))
    await writer.put(Session("a", "support"))
    assert await reader.delete("a") is True  # not in the reader's local tier, but in Redis
    assert await writer._redis.get_many(["tcrag:session:a"]) == {}
    client.down = True
    assert await reader.delete("a") is False  # Redis down: nothing known locally, nothing removed
