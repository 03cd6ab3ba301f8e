"""One agent bound to its pipeline: agent request in, the HTTP contract's answer out (post-processing included)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from agents.base import Agent, AgentRequest
from llm.exceptions import InvalidRequestError
from rag.pipeline import RAGRequest, RAGResult, TokenCachedRAG
from rag.sessions import Session, SessionStore, SessionTurn
from retrieval.service import RetrievalService

__all__ = ["AgentService"]

logger = logging.getLogger(__name__)


class AgentService:
    """One agent bound to its RAG pipeline; ``answer`` and ``answer_stream`` return contract-shaped dicts."""

    def __init__(self, agent: Agent, rag: TokenCachedRAG, retrieval: RetrievalService, sessions: SessionStore,
                 collection: str | None = None, clock: Callable[[], float] = time.perf_counter) -> None:
        self.agent = agent
        self.rag = rag
        self.retrieval = retrieval
        self.sessions = sessions
        self.collection = collection or agent.collection
        self._clock = clock
        self.warmup_status: dict[str, Any] = {"state": "pending", "done": 0, "total": 0, "seconds": 0.0}

    async def warmup(self) -> dict[str, Any]:
        """Tokenize the agent's whole collection into the cache; an optimisation, so failures only log."""
        started = self._clock()
        status = self.warmup_status
        status["state"] = "running"
        try:
            chunks, _ = await asyncio.to_thread(self.retrieval.store.load, self.collection)
            status["total"] = len(chunks)

            def progress(done: int, total: int) -> None:
                status.update(done=done, total=total)

            await self.rag.warmup(chunks, progress=progress)
            status["state"] = "done"
        except Exception as err:  # the agent serves without a warm cache
            status["state"] = f"failed: {err}"
            logger.warning("warm-up of %s failed: %s", self.collection, err)
        status["seconds"] = round(self._clock() - started, 3)
        logger.info("agent=%s warm-up %s: %s chunks in %.1f s", self.agent.name, status["state"], status["total"],
                    status["seconds"])
        return dict(status)

    def cache_stats(self) -> dict[str, Any]:
        cache = self.rag.token_cache
        return {"agent": self.agent.name, "collection": self.collection, "tiers": cache.stats(),
                "summary": cache.token_cache_stats().to_dict(), "warmup": dict(self.warmup_status)}

    def rag_request(self, request: AgentRequest, session: Session | None = None) -> RAGRequest:
        """The pipeline's view of an agent request: the agent supplies the prompt parts."""
        return RAGRequest(
            system_prompt=self.agent.system_prompt,
            collection=self.collection,
            retrieval_query=self.agent.retrieval_query(request),
            user_message=self.agent.user_message(request),
            top_k=request.top_k,
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            use_cache=request.use_cache,
            prefix_cache=request.prefix_cache,
            cache_salt=request.cache_salt,
            history=tuple(session.turns) if session else (),
        )

    async def _session(self, request: AgentRequest) -> Session | None:
        """The conversation this request continues (a new one for an unknown id), or None without an id."""
        if request.session_id is None:
            return None
        session = await self.sessions.get(request.session_id)
        if session is None:
            return Session(request.session_id, self.agent.name)
        if session.agent != self.agent.name:
            raise InvalidRequestError("session_id", f"session {request.session_id!r} belongs to the "
                                      f"{session.agent} agent, not {self.agent.name}")
        return session

    async def _record(self, session: Session | None, rag_request: RAGRequest, run: RAGResult) -> dict[str, Any] | None:
        """Append this turn (its exact prompt and output IDs) to the conversation and store it."""
        if session is None:
            return None
        kept = session.turns[run.dropped_turns:]
        session.dropped_turns += run.dropped_turns
        session.turns = [*kept, SessionTurn(
            prompt_token_ids=run.prompt_token_ids, response_token_ids=run.output_token_ids, user_ids=run.user_ids,
            user_text=rag_request.user_message, response_text=run.text, sources=[h.chunk_id for h in run.sources],
            plain=not rag_request.use_cache)]
        await self.sessions.put(session)
        return {"session_id": session.session_id, "turn": session.dropped_turns + len(session.turns) - 1,
                "dropped_turns": run.dropped_turns, "history_rebuilt": run.history_rebuilt}

    def _response(self, run: RAGResult, request: AgentRequest, session: dict[str, Any] | None = None) -> dict[str, Any]:
        processed = self.agent.postprocess(run.text, run.sources, request)
        body = {
            "agent": self.agent.name,
            "output": processed.output,
            # Always present: true, with one warning per part, when any of the output was filled in
            # (a template section, a skeleton test, a source's opening) rather than generated.
            "fallback": processed.fallback,
            "warnings": list(processed.warnings),
            "sources": [s.chunk_id for s in run.sources],
            "usage": {
                "prompt_tokens": run.prompt_tokens,
                "prefix_cached_tokens": run.prefix_cached_tokens,
                "completion_tokens": run.completion_tokens,
            },
            "cache": {"hits": run.cache_hits, "misses": run.cache_misses, "hit_rate": round(run.cache_hit_rate, 4)},
            "latency_ms": run.latency_ms,
        }
        if session is not None:
            body["session"] = session
        return body

    async def answer(self, request: AgentRequest) -> dict[str, Any]:
        session = await self._session(request)
        rag_request = self.rag_request(request, session)
        run = await self.rag.run(rag_request)
        return self._response(run, request, await self._record(session, rag_request, run))

    async def answer_stream(self, request: AgentRequest) -> AsyncIterator[str]:
        """Server-sent events: ``{"delta": text}`` as tokens arrive, then the full answer, then ``[DONE]``."""
        session = await self._session(request)
        rag_request = self.rag_request(request, session)
        ids: list[int] = []
        sent = ""
        async for item in self.rag.run_stream(rag_request):
            if isinstance(item, RAGResult):
                yield _sse(self._response(item, request, await self._record(session, rag_request, item)))
                continue
            ids.extend(item)
            # Decode the whole output each time: a token may complete a multi-byte character only later.
            text = self.rag.decode(ids)
            if len(text) > len(sent) and text.startswith(sent):
                yield _sse({"delta": text[len(sent):]})
                sent = text
        yield "data: [DONE]\n\n"

    async def get_session(self, session_id: str) -> dict[str, Any] | None:
        session = await self.sessions.get(session_id)
        return session.public() if session is not None and session.agent == self.agent.name else None

    async def delete_session(self, session_id: str) -> bool:
        session = await self.sessions.get(session_id)
        if session is None or session.agent != self.agent.name:
            return False
        return await self.sessions.delete(session_id)


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"
