"""Runs one agent's request through ``TokenCachedRAG`` and shapes the HTTP contract's answer."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from agents.base import Agent, AgentRequest, RetrievedSource
from cache.token_cached_rag import RAGRun, TokenCachedRAG

__all__ = ["AgentService"]


class AgentService:
    """One agent bound to its RAG pipeline; ``answer`` and ``answer_stream`` return contract-shaped dicts."""

    def __init__(self, agent: Agent, rag: TokenCachedRAG, decode: Callable[[Sequence[int]], str],
                 collection: str | None = None) -> None:
        self.agent = agent
        self.rag = rag
        self._decode = decode
        self.collection = collection or agent.collection

    def _kwargs(self, request: AgentRequest) -> dict[str, Any]:
        return {
            "system_prompt": self.agent.system_prompt,
            "collection": self.collection,
            "retrieval_query": self.agent.retrieval_query(request),
            "user_message": self.agent.user_message(request),
            "top_k": request.top_k,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "use_cache": request.use_cache,
            "prefix_cache": request.prefix_cache,
        }

    def _response(self, run: RAGRun, request: AgentRequest) -> dict[str, Any]:
        sources = [RetrievedSource(s.chunk_id, s.doc_id, s.title, s.text, s.score) for s in run.sources]
        return {
            "agent": self.agent.name,
            "output": self.agent.postprocess(run.text, sources, request),
            "sources": [s.chunk_id for s in run.sources],
            "usage": {
                "prompt_tokens": run.prompt_tokens,
                "prefix_cached_tokens": run.prefix_cached_tokens,
                "completion_tokens": run.completion_tokens,
            },
            "cache": {"hits": run.cache_hits, "misses": run.cache_misses, "hit_rate": round(run.cache_hit_rate, 4)},
            "latency_ms": run.latency_ms,
        }

    async def answer(self, request: AgentRequest) -> dict[str, Any]:
        run = await self.rag.run(**self._kwargs(request))
        return self._response(run, request)

    async def answer_stream(self, request: AgentRequest) -> AsyncIterator[str]:
        """Server-sent events: ``{"delta": text}`` as tokens arrive, then the full answer, then ``[DONE]``."""
        ids: list[int] = []
        sent = ""
        async for item in self.rag.run_stream(**self._kwargs(request)):
            if isinstance(item, RAGRun):
                yield _sse(self._response(item, request))
                continue
            ids.extend(item)
            # Decode the whole output each time: a token may complete a multi-byte character only later.
            text = self._decode(ids)
            if len(text) > len(sent) and text.startswith(sent):
                yield _sse({"delta": text[len(sent):]})
                sent = text
        yield "data: [DONE]\n\n"


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"
