"""The RAG pipeline (TokenCachedRAG) and AgentService end to end in one process: real store, index, token cache and prompt
assembly; only the embedder, the tokenizer and the engine are test doubles."""

from __future__ import annotations

import pytest

from agents.support import SupportAgent, SupportRequest
from cache import TokenCache, TokenCacheConfig
from cache.shard import CacheShard, LocalShardClient
from llm import LLMServer
from llm.prompt import ChatSegments, PromptAssembler
from rag.agent_service import AgentService
from rag.pipeline import RAGRequest, RAGResult, TokenCachedRAG, chunk_segment_text
from rag.sessions import SessionConfig, SessionStore
from retrieval.service import RetrievalService
from retrieval.models import Document
from retrieval.store import CollectionStore
from tests.fakes.fake_engine import FakeTokenEngine
from tests.fakes.fake_tokenizer import FakeTokenizer
from tests.fakes.hashing_embedder import HashingEmbedder

SEGMENTS = ChatSegments(before_system=(1,), system_to_user=(2,), after_user=(3,))
DOCS = [
    Document("reset-password", "# Reset password\n\nOpen the login page and click forgot password to reset it.", {}),
    Document("two-factor", "# Two factor\n\nTwo factor codes rotate every thirty seconds in the authenticator app.", {}),
    Document("billing-refund", "# Refunds\n\nRefunds for annual billing plans are prorated by the billing team.", {}),
    Document("export-data", "# Export\n\nExport dashboards as CSV from the share menu of any dashboard.", {}),
]


class Harness:
    def __init__(self, tmp_path, max_model_len: int = 4096) -> None:
        self.tokenizer = FakeTokenizer()
        self.engine = FakeTokenEngine()
        self.embedder = embedder = HashingEmbedder()
        store = CollectionStore(tmp_path / "store.sqlite3")
        store.create_collection("support_kb")
        store.upsert_documents("support_kb", DOCS, lambda text: [text], embedder.embed)
        self.retrieval = RetrievalService(store, embedder.aembed, lambda text: [text])
        self.shard = CacheShard(max_bytes=1 << 20)
        self.cache = TokenCache(self.tokenizer, [LocalShardClient(self.shard, "s0")], None,
                                TokenCacheConfig(max_cache_size_mb=1), agent="support")
        self.rag = TokenCachedRAG(
            search=self.retrieval.search,
            token_cache=self.cache,
            assembler=PromptAssembler(SEGMENTS, self.tokenizer.encode, max_model_len),
            llm=LLMServer(lambda: self.engine, max_model_len=max_model_len),
            encode=self.tokenizer.encode,
            decode=self.decode,
            plain_prompt_ids=self.plain_prompt_ids,
            agent="support",
        )

        self.plain_prompts = 0

    def plain_prompt_ids(self, system: str, texts: list[str], user: str, history: list[tuple[str, str]]) -> list[int]:
        self.plain_prompts += 1
        turns = " ".join(f"{u} {a}" for u, a in history)
        return self.tokenizer.encode(system + " " + "".join(texts) + " " + turns + " " + user)

    @staticmethod
    def decode(ids) -> str:  # the fake engine emits ids outside the fake tokenizer's vocabulary
        return " ".join(f"t{i}" for i in ids)

    async def run(self, query: str, **kwargs) -> RAGResult:
        args = {"system_prompt": "You answer support questions", "collection": "support_kb", "retrieval_query": query,
                "user_message": query, "top_k": 3, "max_tokens": 4, "temperature": 0.0, "use_cache": True}
        return await self.rag.run(RAGRequest(**{**args, **kwargs}))


@pytest.fixture
def harness(tmp_path) -> Harness:
    return Harness(tmp_path)


async def test_repeat_request_hits_token_cache_and_prefix_cache(harness):
    first = await harness.run("how do I reset my password")
    second = await harness.run("how do I reset my password")
    assert first.cache_misses == 3 and first.cache_hits == 0
    assert second.cache_hits == 3 and second.cache_misses == 0
    assert first.prefix_cached_tokens == 0 and second.prefix_cached_tokens > 0
    assert [s.chunk_id for s in first.sources] == [s.chunk_id for s in second.sources]
    assert set(first.latency_ms) == {"retrieve", "tokens", "ttft", "generate", "total"}


async def test_chunks_are_tokenized_once_and_never_again(harness):
    await harness.run("reset password")
    encoded_before = harness.tokenizer.texts_encoded
    await harness.run("reset password")
    # No chunk goes through the tokenizer's batch path again: the context comes from the cache.
    assert encoded_before == 3
    assert harness.tokenizer.texts_encoded == encoded_before


async def test_context_is_in_canonical_order_so_rankings_share_a_prefix(harness):
    a = await harness.run("password reset login page")
    b = await harness.run("login page password reset please")
    ids = [s.chunk_id for s in a.sources]
    assert ids == sorted(ids)  # (doc id, position) order, not score order
    if set(ids) == {s.chunk_id for s in b.sources}:
        first, second = harness.engine.requests[0], harness.engine.requests[1]
        assert first.prefix_len == second.prefix_len
        assert first.prompt_token_ids[: first.prefix_len] == second.prompt_token_ids[: second.prefix_len]


async def test_prompt_is_segments_system_context_query_in_that_order(harness):
    run = await harness.run("refund for annual billing")
    request = harness.engine.requests[-1]
    ids = request.prompt_token_ids
    tok = harness.tokenizer
    system = tok.encode("You answer support questions")
    assert ids[0] == 1 and ids[1 : 1 + len(system)] == system
    assert ids[request.prefix_len] == 2  # system_to_user starts right after the shared prefix
    assert ids[-1] == 3
    assert ids[request.prefix_len + 1 : -1] == tok.encode("refund for annual billing")
    context = []
    for source in run.sources:
        context.extend(tok.encode(chunk_segment_text(_chunk(harness, source.chunk_id))))
    assert ids[1 + len(system) : request.prefix_len][-len(context):] == context


def _chunk(harness, chunk_id):
    chunks, _ = harness.retrieval.store.load("support_kb")
    return next(c for c in chunks if c.chunk_id == chunk_id)


async def test_plain_rag_tokenizes_per_request_with_no_token_cache_and_keeps_the_prefix_cache(harness):
    await harness.run("export dashboards csv")
    plain1 = await harness.run("export dashboards csv", use_cache=False)
    plain2 = await harness.run("export dashboards csv", use_cache=False)
    assert plain1.cache_hits == plain1.cache_misses == 0
    assert [r.cache_salt for r in harness.engine.requests[-2:]] == [None, None]  # vLLM's default: reuse on
    assert plain2.prefix_cached_tokens > 0  # the verbatim repeat reuses the first one's KV
    assert harness.plain_prompts == 2  # the whole prompt rendered and tokenized on each request
    ids = [s.chunk_id for s in plain1.sources]
    assert ids == [s.chunk_id for s in plain2.sources]


async def test_prefix_cache_false_in_plain_mode_gives_a_fresh_salt_per_request(harness):
    await harness.run("export dashboards csv", use_cache=False, prefix_cache=False)
    run = await harness.run("export dashboards csv", use_cache=False, prefix_cache=False)
    salts = [r.cache_salt for r in harness.engine.requests[-2:]]
    assert all(salts) and salts[0] != salts[1]
    assert run.prefix_cached_tokens == 0


async def test_cache_salt_is_passed_on_and_separates_kv(harness):
    await harness.run("two factor codes", cache_salt="tenant-a")
    same = await harness.run("two factor codes", cache_salt="tenant-a")
    other = await harness.run("two factor codes", cache_salt="tenant-b")
    assert [r.cache_salt for r in harness.engine.requests[-3:]] == ["tenant-a", "tenant-a", "tenant-b"]
    assert same.prefix_cached_tokens > 0 and other.prefix_cached_tokens == 0


async def test_prefix_cache_false_keeps_token_cache_hits_but_no_kv_reuse(harness):
    await harness.run("two factor codes")
    run = await harness.run("two factor codes", prefix_cache=False)
    assert run.cache_hits == 3 and run.prefix_cached_tokens == 0
    assert harness.engine.requests[-1].cache_salt


async def test_context_budget_drops_lowest_scoring_whole_chunks(tmp_path):
    small = Harness(tmp_path, max_model_len=40)
    run = await small.run("reset password login page", top_k=4)
    request = small.engine.requests[-1]
    assert len(request.prompt_token_ids) + 4 <= 40
    assert 0 < len(run.sources) < 4  # some chunks were cut, and they are not reported as sources


async def test_stream_yields_tokens_then_the_run(harness):
    items = [item async for item in harness.rag.run_stream(RAGRequest(
        system_prompt="s", collection="support_kb", retrieval_query="refund", user_message="refund",
        top_k=2, max_tokens=3, temperature=0.0, use_cache=True))]
    assert isinstance(items[-1], RAGResult)
    streamed = [t for item in items[:-1] for t in item]
    assert streamed == items[-1].output_token_ids
    assert items[-1].latency_ms["ttft"] <= items[-1].latency_ms["total"]


async def test_plan_api_retrieve_tokens_then_generate(harness):
    token_ids, stats = await harness.rag.retrieve_tokens("reset password", "support_kb", top_k=2)
    assert token_ids and stats.cache_misses == 2
    token_ids_again, stats = await harness.rag.retrieve_tokens("reset password", "support_kb", top_k=2)
    assert token_ids_again == token_ids and stats.cache_hits == 2 and stats.hit_rate == 0.5
    result = await harness.rag.generate_with_rag("reset password", token_ids, max_tokens=3)
    assert result.completion_tokens == 3


async def test_agent_service_answers_in_the_contract_shape(harness):
    service = AgentService(SupportAgent(), harness.rag, harness.retrieval, SessionStore(SessionConfig()))
    body = await service.answer(SupportRequest(query="how do refunds work", top_k=2, max_tokens=4))
    assert body["agent"] == "support"
    assert body["sources"] and all("#" in s for s in body["sources"])
    assert set(body["usage"]) == {"prompt_tokens", "prefix_cached_tokens", "completion_tokens"}
    assert body["cache"] == {"hits": 0, "misses": 2, "hit_rate": 0.0}
    assert "answer" in body["output"] and "citations" in body["output"]
    events = [e async for e in service.answer_stream(SupportRequest(query="how do refunds work", top_k=2, max_tokens=4))]
    assert events[-1] == "data: [DONE]\n\n"
    assert '"agent": "support"' in events[-2]


async def test_an_overlapping_set_is_sent_after_the_context_it_shares_so_its_kv_is_reused(harness):
    # {export, reset, two-factor} first, then {billing, reset, two-factor}: two of three chunks shared.
    first = await harness.run("two factor codes rotate", top_k=3)
    first_request = harness.engine.requests[-1]
    second = await harness.run("billing refund password", top_k=3)
    request = harness.engine.requests[-1]
    assert {s.chunk_id for s in first.sources} == {"export-data#0", "reset-password#0", "two-factor#0"}
    # The first context, whole and in its order, is the prefix; the new chunk comes after it.
    assert request.prompt_token_ids[: first_request.prefix_len] == first_request.prompt_token_ids[: first_request.prefix_len]
    assert [s.chunk_id for s in second.sources][:3] == [s.chunk_id for s in first.sources]
    assert [s.chunk_id for s in second.sources][3:] == ["billing-refund#0"]
    assert second.prefix_cached_tokens >= (first_request.prefix_len // 16) * 16


async def test_reuse_is_planned_per_kv_namespace_and_not_without_kv_reuse(harness):
    await harness.run("two factor codes rotate", top_k=3, cache_salt="a")  # remembered under salt "a"
    other_salt = await harness.run("billing refund password", top_k=3, cache_salt="b")
    no_reuse = await harness.run("billing refund password", top_k=3, cache_salt="a", prefix_cache=False)
    canonical = sorted(["billing-refund#0", "reset-password#0", "two-factor#0"])
    assert [s.chunk_id for s in other_salt.sources] == canonical  # salt "b" has no KV of salt "a"'s context
    assert [s.chunk_id for s in no_reuse.sources] == canonical  # a fresh salt: no order can pay off
    reused = await harness.run("billing refund password", top_k=3, cache_salt="a")
    assert [s.chunk_id for s in reused.sources][3:] == ["billing-refund#0"]  # salt "a" still reuses its own
