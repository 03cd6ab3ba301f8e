"""``TokenCachedRAG``: retrieve, fetch cached token IDs, assemble, generate, for one agent replica.

The request pipeline sits above the libraries it joins (``retrieval``, ``cache``, ``llm``): a typed
``RAGRequest`` in, a typed ``RAGResult`` out.

The original plan's pattern, kept as its public API::

    token_ids, stats = await rag.retrieve_tokens(query, collection_name="support_kb", top_k=5)
    result = await rag.generate_with_rag(query, context_token_ids=token_ids, max_tokens=500)

``run``/``run_stream`` serve one ``RAGRequest`` in either mode and return what the HTTP contract reports:

- cached (``use_cache=True``): chunks in canonical order, their token IDs from the token cache (never
  re-tokenized), the prompt assembled as token IDs with ``prefix_len`` for the router, vLLM prefix
  cache allowed.
- plain RAG (``use_cache=False``, the peer every benchmark compares with): chunks in retrieval order
  rendered as text, the whole prompt tokenized on this request, no token cache, vLLM's prefix cache on
  (as vLLM runs by default).

``prefix_cache=False`` adds a fresh ``cache_salt`` per request in either mode, so vLLM reuses no KV (a
reference point); otherwise the request's own ``cache_salt`` (a tenant, a benchmark mode) is passed on.

A request with ``history`` (the earlier turns of a conversation) continues it: cached mode extends the
previous turn's exact prompt and output token IDs with a new user turn holding only the newly retrieved
chunks; when the history outgrows its limits, the oldest turns are dropped and the prompt is rebuilt
around the ones kept. Plain mode re-sends the history as text, as chat clients do.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cache import TokenCache, TokenLookup
from cache.keys import ChunkRef
from cache.stats import TokenCacheStats
from llm.prompt import PromptAssembler, canonical_order
from llm.types import GenerateRequest, GenerateResult, StreamDelta
from rag.reuse import ContextPlan, ReuseConfig, ReusePlanner
from rag.sessions import SessionConfig, SessionTurn
from retrieval.models import Chunk, SearchHit

__all__ = ["LLMGenerator", "PreparedRequest", "TokenCachedRAG", "RAGRequest", "RAGResult", "chunk_segment_text"]

logger = logging.getLogger(__name__)


class LLMGenerator(Protocol):
    """The LLM pool as the pipeline calls it (the Serve pool client, a fallback wrapper, a test double)."""

    async def generate(self, request: GenerateRequest) -> GenerateResult: ...

    def generate_stream(self, request: GenerateRequest) -> AsyncIterator[StreamDelta]: ...


SearchFn = Callable[[str, str, int], Awaitable[Sequence[SearchHit]]]  # (collection, query, top_k) -> hits


def chunk_segment_text(chunk: Chunk) -> str:
    """The exact text a chunk contributes to a prompt; its token IDs are what the cache stores.

    The source label is part of the cached segment so that the model can cite it and so that the
    whole context is cached tokens, with nothing tokenized per request between chunks.
    """
    return f"[{chunk.chunk_id}]\n{chunk.text.strip()}\n\n"


@dataclass(frozen=True, slots=True)
class RAGRequest:
    """One agent request as the pipeline sees it: what to retrieve, what to ask, and in which mode."""

    system_prompt: str
    collection: str
    retrieval_query: str
    user_message: str
    top_k: int = 5
    max_tokens: int = 128
    temperature: float = 0.0
    use_cache: bool = True
    prefix_cache: bool = True
    cache_salt: str | None = None
    history: tuple[SessionTurn, ...] = ()  # earlier turns of the conversation, oldest first
    # Earlier (user, assistant) texts of a conversation the client keeps itself (chat completions): placed
    # between the context and the user message, all of them, as the agents place a session's kept turns.
    turns: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class RAGResult:
    """One request's outcome in the units of the HTTP contract (milliseconds, token counts).

    ``sources`` are the chunks the model saw, in prompt order.
    """

    sources: list[SearchHit]
    output_token_ids: list[int]
    text: str
    prompt_tokens: int
    prefix_cached_tokens: int
    completion_tokens: int
    cache_hits: int
    cache_misses: int
    latency_ms: dict[str, float] = field(default_factory=dict)
    finish_reason: str | None = None
    replica_id: str = ""
    prompt_token_ids: list[int] = field(default_factory=list)
    user_ids: list[int] = field(default_factory=list)  # this turn's user content, as placed in the prompt
    dropped_turns: int = 0  # history turns left out of this prompt
    history_rebuilt: bool = False  # the conversation's prompt was rebuilt instead of extended

    @property
    def cache_hit_rate(self) -> float:
        total = self.cache_hits + self.cache_misses
        return self.cache_hits / total if total else 0.0


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    """A request ready for the pool: the ``GenerateRequest`` and what the answer reports about it."""

    request: GenerateRequest
    sources: list[SearchHit]
    lookup: TokenLookup | None
    retrieve_ms: float
    tokens_ms: float
    user_ids: list[int] = field(default_factory=list)
    dropped_turns: int = 0
    history_rebuilt: bool = False


@dataclass(frozen=True, slots=True)
class _Prompt:
    token_ids: list[int]
    prefix_len: int
    sources: list[SearchHit]
    lookup: TokenLookup
    user_ids: list[int]
    dropped_turns: int
    extended: bool = False  # a follow-up on top of the previous turn's exact tokens


class TokenCachedRAG:
    """Retrieval plus token cache plus prompt assembly plus the LLM pool, for one agent."""

    def __init__(
        self,
        search: SearchFn,
        token_cache: TokenCache,
        assembler: PromptAssembler,
        llm: LLMGenerator,
        encode: Callable[[str], list[int]],
        decode: Callable[[Sequence[int]], str],
        plain_prompt_ids: Callable[[str, list[str], str, list[tuple[str, str]]], list[int]],
        *,
        agent: str,
        eos_token_ids: Sequence[int] = (),
        sessions: SessionConfig | None = None,
        reuse: ReuseConfig | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._search = search
        self._cache = token_cache
        self._assembler = assembler
        self._llm = llm
        self._encode = encode
        self._decode = decode
        self._plain_prompt_ids = plain_prompt_ids
        self._agent = agent
        self._eos = frozenset(eos_token_ids)
        self._sessions = sessions or SessionConfig()
        self._reuse_config = reuse or ReuseConfig()
        # One planner per KV namespace (cache salt): an order only pays where its KV lives.
        self._planners: OrderedDict[str, ReusePlanner[SearchHit]] = OrderedDict()
        self._clock = clock

    @property
    def token_cache(self) -> TokenCache:
        return self._cache

    def decode(self, token_ids: Sequence[int]) -> str:
        return self._decode(token_ids)

    # ---------------------------------------------------------------- the plan's API

    async def retrieve_tokens(self, query: str, collection_name: str, top_k: int = 5) -> tuple[list[int], TokenCacheStats]:
        """Context token IDs (canonical order, concatenated) and this agent's cache stats."""
        hits = await self._search(collection_name, query, top_k)
        ordered = [hits[i] for i in canonical_order([(h.chunk.doc_id, h.chunk.position) for h in hits])]
        lookup = await self._cache.get_tokens([self._ref(h.chunk) for h in ordered])
        return [t for ids in lookup.token_ids for t in ids], self._cache.token_cache_stats()

    async def generate_with_rag(self, query: str, context_token_ids: list[int], max_tokens: int = 256,
                                temperature: float = 0.0, system_prompt: str = "") -> GenerateResult:
        """Generate from context token IDs without re-tokenizing them."""
        prompt = self._assembler.assemble(system_prompt, [context_token_ids], [1.0],
                                          self._encode(query), max_tokens)
        return await self._llm.generate(GenerateRequest(
            prompt_token_ids=prompt.token_ids, max_tokens=max_tokens, temperature=temperature,
            prefix_len=prompt.prefix_len))

    async def warmup(self, chunks: Sequence[Chunk], progress: Callable[[int, int], None] | None = None) -> int:
        return await self._cache.warmup([self._ref(c) for c in chunks], progress=progress)

    async def invalidate(self, collection: str, doc_id: str | None = None) -> dict[str, int]:
        """Drop a document's (or a collection's) entries, and the remembered contexts that hold them."""
        if doc_id is None:
            self._planners.clear()
        else:
            for planner in self._planners.values():
                planner.forget(doc_id, doc_of=lambda h: h.doc_id)
        return await self._cache.invalidate(collection, doc_id)

    # ---------------------------------------------------------------- one request

    def _ref(self, chunk: Chunk) -> ChunkRef:
        return ChunkRef(collection=chunk.collection, doc_id=chunk.doc_id, chunk_id=chunk.chunk_id,
                        text=chunk_segment_text(chunk))

    async def prepare(self, request: RAGRequest) -> PreparedRequest:
        """Retrieve, fetch the chunks' token IDs and assemble the prompt, without generating: ``run`` and
        ``run_stream`` send the result to the pool; the chat completions route sends it with its own
        sampling fields."""
        started = self._clock()
        hits = list(await self._search(request.collection, request.retrieval_query, request.top_k))
        retrieved = self._clock()
        salt = request.cache_salt if request.prefix_cache else uuid.uuid4().hex
        if not request.use_cache:
            prompt_ids, dropped = await asyncio.to_thread(self._plain_prompt, request, hits)
            generate = GenerateRequest(prompt_token_ids=prompt_ids, max_tokens=request.max_tokens,
                                       temperature=request.temperature, cache_salt=salt)
            return PreparedRequest(generate, hits, None, (retrieved - started) * 1e3, (self._clock() - retrieved) * 1e3,
                             dropped_turns=dropped)
        ordered = [hits[i] for i in canonical_order([(h.chunk.doc_id, h.chunk.position) for h in hits])]
        user_ids = self._encode(request.user_message)
        prompt = None
        if request.history and self._history_fits(request.history):
            prompt = await self._follow_up(request, ordered, user_ids)
        if prompt is None:
            prompt = await self._fresh(request, ordered, user_ids)
        generate = GenerateRequest(prompt_token_ids=prompt.token_ids, max_tokens=request.max_tokens,
                                   temperature=request.temperature, prefix_len=prompt.prefix_len, cache_salt=salt)
        return PreparedRequest(generate, prompt.sources, prompt.lookup, (retrieved - started) * 1e3,
                         (self._clock() - retrieved) * 1e3, prompt.user_ids, prompt.dropped_turns,
                         history_rebuilt=bool(request.history) and not prompt.extended)

    def _plain_prompt(self, request: RAGRequest, hits: list[SearchHit]) -> tuple[list[int], int]:
        """Plain RAG: render this turn's chunks (retrieval order) and the history as text, tokenize it all.
        The oldest turns go first when the conversation outgrows its limits."""
        texts = [chunk_segment_text(h.chunk) for h in hits]
        history = [(t.user_text, t.response_text) for t in request.history]
        keep = self._sessions.max_turns - 1
        history = history[max(0, len(history) - keep):] if keep > 0 else []
        dropped = len(request.history) - len(history)
        while True:
            ids = self._plain_prompt_ids(request.system_prompt, texts, request.user_message, history)
            if not history or len(ids) + request.max_tokens <= self._assembler.max_model_len:
                return ids, dropped
            history, dropped = history[1:], dropped + 1

    def _history_fits(self, history: Sequence[SessionTurn]) -> bool:
        last = history[-1]
        return (len(history) < self._sessions.max_turns
                and len(last.prompt_token_ids) + len(last.response_token_ids) <= self._sessions.max_history_tokens)

    def _strip_eos(self, ids: Sequence[int]) -> list[int]:
        """The output without its end-of-turn token: the template's turn separator puts it back."""
        out = list(ids)
        while out and out[-1] in self._eos:
            out.pop()
        return out

    async def _follow_up(self, request: RAGRequest, ordered: list[SearchHit], user_ids: list[int]) -> _Prompt | None:
        """The next turn on top of the previous turn's exact prompt and output; None when it does not fit."""
        last = request.history[-1]
        seen = {chunk_id for turn in request.history for chunk_id in turn.sources}
        new = [h for h in ordered if h.chunk_id not in seen]
        lookup = await self._cache.get_tokens([self._ref(h.chunk) for h in new])
        history_ids = [*last.prompt_token_ids, *self._strip_eos(last.response_token_ids)]
        prompt = self._assembler.follow_up(history_ids, lookup.token_ids, [h.score for h in new], user_ids,
                                           request.max_tokens)
        if prompt is None:
            return None
        kept_new = {new[i].chunk_id for i in prompt.kept}
        sources = [h for h in ordered if h.chunk_id in seen or h.chunk_id in kept_new]
        user_start = prompt.prefix_len + len(self._assembler.segments.system_to_user)
        user_end = len(prompt.token_ids) - len(self._assembler.segments.after_user)
        return _Prompt(prompt.token_ids, prompt.prefix_len, sources, lookup, prompt.token_ids[user_start:user_end], 0,
                       extended=True)

    async def _fresh(self, request: RAGRequest, ordered: list[SearchHit], user_ids: list[int]) -> _Prompt:
        """A first turn, or a conversation rebuilt around its most recent turns that fit the limits.

        The context order comes from the reuse planner: a recent context that shares enough chunks goes
        first whole, else the longest path of the ordering tree (see ``rag.reuse``)."""
        planner = self._planner(request.cache_salt) if request.prefix_cache else None
        plan = planner.plan(ordered) if planner else ContextPlan(list(ordered), [], "canonical")
        context = plan.order
        lookup = await self._cache.get_tokens([self._ref(h.chunk) for h in context])
        # Chunks the request did not retrieve are the first to go if the prompt must be cut.
        floor = min((h.score for h in ordered), default=0.0) - 1.0
        extra = {h.chunk_id for h in plan.extra}
        scores = [floor if h.chunk_id in extra else h.score for h in context]
        if request.turns:
            turns = [(self._encode(user), self._encode(answer)) for user, answer in request.turns]
        else:
            turns = self._kept_turns(request.history)
        prompt = self._assembler.assemble(request.system_prompt, lookup.token_ids, scores, user_ids,
                                          request.max_tokens, turns)
        # Chunks dropped for length are not sources: report only what the model saw, in prompt order.
        kept = [context[i] for i in prompt.kept]
        if planner is not None:  # without KV reuse (a fresh salt) no order can pay off later
            planner.record(kept)
        return _Prompt(prompt.token_ids, prompt.prefix_len, kept, lookup, list(user_ids),
                       0 if request.turns else len(request.history) - len(turns))

    def _planner(self, salt: str | None) -> ReusePlanner[SearchHit]:
        """The reuse planner of one KV namespace; the least recently used namespace goes past the bound."""
        key = salt or ""
        planner = self._planners.get(key)
        if planner is None:
            planner = self._planners[key] = ReusePlanner(self._reuse_config, key=lambda h: h.chunk_id)
            while len(self._planners) > self._reuse_config.max_namespaces:
                self._planners.popitem(last=False)
        self._planners.move_to_end(key)
        return planner

    def _kept_turns(self, history: Sequence[SessionTurn]) -> list[tuple[list[int], list[int]]]:
        """The most recent turns (user content, output) within half the history budget and the turn cap."""
        kept: list[tuple[list[int], list[int]]] = []
        budget = self._sessions.max_history_tokens // 2
        for turn in reversed(history):
            response = self._strip_eos(turn.response_token_ids)
            size = len(turn.user_ids) + len(response)
            if len(kept) + 1 >= self._sessions.max_turns or size > budget:
                break
            kept.append((list(turn.user_ids), response))
            budget -= size
        return kept[::-1]

    def _finish(self, prepared: PreparedRequest, result: GenerateResult, started: float, first_token_at: float | None) -> RAGResult:
        now = self._clock()
        pre_ms = prepared.retrieve_ms + prepared.tokens_ms
        if first_token_at is not None:
            ttft_ms = (first_token_at - started) * 1e3
        else:  # not streamed: the replica measured its own time to first token
            ttft_ms = pre_ms + result.ttft_s * 1e3
        lookup = prepared.lookup
        run = RAGResult(
            sources=prepared.sources,
            output_token_ids=list(result.token_ids),
            text=self._decode(result.token_ids),
            prompt_tokens=result.prompt_tokens,
            prefix_cached_tokens=result.num_cached_tokens,
            completion_tokens=result.completion_tokens,
            cache_hits=lookup.hits if lookup else 0,
            cache_misses=lookup.misses if lookup else 0,
            latency_ms={
                "retrieve": round(prepared.retrieve_ms, 3),
                "tokens": round(prepared.tokens_ms, 3),
                "ttft": round(ttft_ms, 3),
                "generate": round((now - started) * 1e3 - pre_ms, 3),
                "total": round((now - started) * 1e3, 3),
            },
            finish_reason=result.finish_reason,
            replica_id=result.replica_id,
            prompt_token_ids=list(prepared.request.prompt_token_ids),
            user_ids=prepared.user_ids,
            dropped_turns=prepared.dropped_turns,
            history_rebuilt=prepared.history_rebuilt,
        )
        logger.info(
            "agent=%s cache_hit_rate=%.1f%% hits=%d misses=%d prefix_cached=%d/%d ttft_ms=%.0f total_ms=%.0f",
            self._agent, run.cache_hit_rate * 100, run.cache_hits, run.cache_misses, run.prefix_cached_tokens,
            run.prompt_tokens, run.latency_ms["ttft"], run.latency_ms["total"],
        )
        return run

    async def run(self, request: RAGRequest) -> RAGResult:
        """Serve one request to completion."""
        started = self._clock()
        prepared = await self.prepare(request)
        result = await self._llm.generate(prepared.request)
        return self._finish(prepared, result, started, None)

    async def run_stream(self, request: RAGRequest) -> AsyncIterator[list[int] | RAGResult]:
        """Yield lists of new output token IDs as they come, then the finished ``RAGResult``."""
        started = self._clock()
        prepared = await self.prepare(request)
        first_token_at: float | None = None
        async for delta in self._llm.generate_stream(prepared.request):
            if delta.token_ids and first_token_at is None:
                first_token_at = self._clock()
            if delta.token_ids:
                yield list(delta.token_ids)
            if delta.result is not None:
                yield self._finish(prepared, delta.result, started, first_token_at)
