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
- plain RAG (``use_cache=False``, the benchmark baseline): chunks in retrieval order rendered as text,
  the whole prompt tokenized on this request, no token cache, and a fresh ``cache_salt`` so vLLM reuses
  no prefix.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cache import TokenCache, TokenLookup
from cache.keys import ChunkRef
from cache.stats import TokenCacheStats
from llm.prompt import PromptAssembler, canonical_order
from llm.types import GenerateRequest, GenerateResult, StreamDelta
from retrieval.models import Chunk, SearchHit

__all__ = ["LLMGenerator", "TokenCachedRAG", "RAGRequest", "RAGResult", "chunk_segment_text"]

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

    @property
    def cache_hit_rate(self) -> float:
        total = self.cache_hits + self.cache_misses
        return self.cache_hits / total if total else 0.0


@dataclass(frozen=True, slots=True)
class _Prepared:
    request: GenerateRequest
    sources: list[SearchHit]
    lookup: TokenLookup | None
    retrieve_ms: float
    tokens_ms: float


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
        plain_prompt_ids: Callable[[str, list[str], str], list[int]],
        *,
        agent: str,
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
        return await self._cache.invalidate(collection, doc_id)

    # ---------------------------------------------------------------- one request

    def _ref(self, chunk: Chunk) -> ChunkRef:
        return ChunkRef(collection=chunk.collection, doc_id=chunk.doc_id, chunk_id=chunk.chunk_id,
                        text=chunk_segment_text(chunk))

    async def _prepare(self, request: RAGRequest) -> _Prepared:
        started = self._clock()
        hits = list(await self._search(request.collection, request.retrieval_query, request.top_k))
        retrieved = self._clock()
        if not request.use_cache:
            texts = [chunk_segment_text(h.chunk) for h in hits]  # retrieval order, as plain RAG does
            # Render the chat template as text and tokenize all of it now, in a worker thread.
            prompt_ids = await asyncio.to_thread(self._plain_prompt_ids, request.system_prompt, texts,
                                                 request.user_message)
            generate = GenerateRequest(prompt_token_ids=prompt_ids, max_tokens=request.max_tokens,
                                       temperature=request.temperature, cache_salt=uuid.uuid4().hex)
            return _Prepared(generate, hits, None,
                             (retrieved - started) * 1e3, (self._clock() - retrieved) * 1e3)
        order = canonical_order([(h.chunk.doc_id, h.chunk.position) for h in hits])
        ordered = [hits[i] for i in order]
        lookup = await self._cache.get_tokens([self._ref(h.chunk) for h in ordered])
        user_ids = self._encode(request.user_message)
        prompt = self._assembler.assemble(request.system_prompt, lookup.token_ids, [h.score for h in ordered],
                                          user_ids, request.max_tokens)
        # Chunks dropped for length are not sources: report only what the model saw, in prompt order.
        kept = [ordered[i] for i in prompt.kept]
        generate = GenerateRequest(prompt_token_ids=prompt.token_ids, max_tokens=request.max_tokens,
                                   temperature=request.temperature, prefix_len=prompt.prefix_len,
                                   cache_salt=None if request.prefix_cache else uuid.uuid4().hex)
        return _Prepared(generate, kept, lookup,
                         (retrieved - started) * 1e3, (self._clock() - retrieved) * 1e3)

    def _finish(self, prepared: _Prepared, result: GenerateResult, started: float, first_token_at: float | None) -> RAGResult:
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
        prepared = await self._prepare(request)
        result = await self._llm.generate(prepared.request)
        return self._finish(prepared, result, started, None)

    async def run_stream(self, request: RAGRequest) -> AsyncIterator[list[int] | RAGResult]:
        """Yield lists of new output token IDs as they come, then the finished ``RAGResult``."""
        started = self._clock()
        prepared = await self._prepare(request)
        first_token_at: float | None = None
        async for delta in self._llm.generate_stream(prepared.request):
            if delta.token_ids and first_token_at is None:
                first_token_at = self._clock()
            if delta.token_ids:
                yield list(delta.token_ids)
            if delta.result is not None:
                yield self._finish(prepared, delta.result, started, first_token_at)
