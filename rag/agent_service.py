"""One agent bound to its pipeline: agent request in, the HTTP contract's answer out (post-processing included).

An ``EvolvingAgent`` (SE-Darwin) may ask for several rounds (``generations``); ``AgentService`` runs them
as a conversation, each round's prompt extending the previous round's exact prompt and output tokens (see
``_rounds``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from agents.base import Agent, AgentOutput, AgentRequest, EvolvingAgent
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

    @staticmethod
    def _append_turn(session: Session, rag_request: RAGRequest, run: RAGResult) -> None:
        """Add this turn (its exact prompt and output IDs) to the conversation, in memory only."""
        kept = session.turns[run.dropped_turns:]
        session.dropped_turns += run.dropped_turns
        session.turns = [*kept, SessionTurn(
            prompt_token_ids=run.prompt_token_ids, response_token_ids=run.output_token_ids, user_ids=run.user_ids,
            user_text=rag_request.user_message, response_text=run.text, sources=[h.chunk_id for h in run.sources],
            plain=not rag_request.use_cache)]

    async def _record(self, session: Session | None, rag_request: RAGRequest, run: RAGResult) -> dict[str, Any] | None:
        """Append this turn to the conversation and store it."""
        if session is None:
            return None
        self._append_turn(session, rag_request, run)
        await self.sessions.put(session)
        return {"session_id": session.session_id, "turn": session.dropped_turns + len(session.turns) - 1,
                "dropped_turns": run.dropped_turns, "history_rebuilt": run.history_rebuilt}

    def _response(self, runs: Sequence[RAGResult], processed: AgentOutput,
                  session: dict[str, Any] | None = None) -> dict[str, Any]:
        """The contract's answer for one or more rounds.

        Over several rounds (``generations``): ``usage`` and ``cache`` counts are sums over the rounds
        (``hit_rate`` recomputed from the sums); ``latency_ms`` sums ``retrieve``, ``tokens``, ``generate``
        and ``total`` (so ``total`` is the rounds' time end to end, post-processing between rounds aside),
        while ``ttft`` is the first round's (when the client sees the first token). ``sources`` are the
        last round's (a follow-up round keeps every chunk the conversation holds). ``processed`` holds the
        output and the warnings of every round (see ``_rounds``)."""
        last = runs[-1]
        hits, misses = sum(r.cache_hits for r in runs), sum(r.cache_misses for r in runs)

        def summed(key: str) -> float:
            return round(sum(r.latency_ms.get(key, 0.0) for r in runs), 3)

        latency = {"retrieve": summed("retrieve"), "tokens": summed("tokens"),
                   "ttft": runs[0].latency_ms.get("ttft", 0.0), "generate": summed("generate"), "total": summed("total")}
        body = {
            "agent": self.agent.name,
            "output": processed.output,
            # Always present: true, with one warning per part, when any of the output was filled in
            # (a template section, a skeleton test, a source's opening) rather than generated.
            "fallback": processed.fallback,
            "warnings": list(processed.warnings),
            "sources": [s.chunk_id for s in last.sources],
            "usage": _usage(runs),
            "cache": {"hits": hits, "misses": misses, "hit_rate": round(hits / (hits + misses), 4) if hits + misses else 0.0},
            "latency_ms": latency,
        }
        if session is not None:
            body["session"] = session
        return body

    async def answer(self, request: AgentRequest) -> dict[str, Any]:
        if isinstance(self.agent, EvolvingAgent):
            body: dict[str, Any] = {}
            async for item in self._rounds(request, stream=False):
                body = item if isinstance(item, dict) else body
            return body
        session = await self._session(request)
        rag_request = self.rag_request(request, session)
        run = await self.rag.run(rag_request)
        processed = self.agent.postprocess(run.text, run.sources, request)
        return self._response([run], processed, await self._record(session, rag_request, run))

    async def answer_stream(self, request: AgentRequest) -> AsyncIterator[str]:
        """Server-sent events: ``{"delta": text}`` as tokens arrive, then the full answer, then ``[DONE]``.

        An ``EvolvingAgent`` streams every round: ``{"delta": text, "generation": g}`` as round g's tokens
        arrive, ``{"generation": g, "result": {...}}`` when it ends (the entry of ``output.generations``),
        then the full answer and ``[DONE]``."""
        if isinstance(self.agent, EvolvingAgent):
            decoder = _Deltas(self.rag.decode)
            async for item in self._rounds(request, stream=True):
                if isinstance(item, _RoundTokens):
                    delta = decoder.add(item.generation, item.token_ids)
                    if delta:
                        yield _sse({"delta": delta, "generation": item.generation})
                elif isinstance(item, _RoundDone):
                    yield _sse({"generation": item.entry["generation"], "result": item.entry})
                else:
                    yield _sse(item)
            yield "data: [DONE]\n\n"
            return
        session = await self._session(request)
        rag_request = self.rag_request(request, session)
        decoder = _Deltas(self.rag.decode)
        async for item in self.rag.run_stream(rag_request):
            if isinstance(item, RAGResult):
                processed = self.agent.postprocess(item.text, item.sources, request)
                yield _sse(self._response([item], processed, await self._record(session, rag_request, item)))
                continue
            delta = decoder.add(1, item)
            if delta:
                yield _sse({"delta": delta})
        yield "data: [DONE]\n\n"

    async def _rounds(self, request: AgentRequest, stream: bool) -> AsyncIterator[_RoundTokens | _RoundDone | dict[str, Any]]:
        """An ``EvolvingAgent``'s rounds as one conversation; yields each round's tokens (when streaming)
        and its end, then the answer.

        Round 1 is the request as any agent serves it (continuing its session, if any). Round k+1 is a
        follow-up turn: the pipeline extends round k's exact prompt and output token IDs with a user turn
        from ``agent.next_round`` (unless the conversation outgrew ``sessions`` limits, when the pipeline
        rebuilds it around its recent turns, as for any session, and says so in ``history_rebuilt``).

        Retrieval: every round retrieves with round 1's query (the task and the original candidate), the
        simplest choice: the pipeline's follow-up path needs no change, the search is deterministic (the
        same chunks, milliseconds against seconds of generation), and chunks the conversation already holds
        are never added again, so the follow-up turn carries no context, only the message. Only a chunk
        that appeared in the collection between rounds would be appended, after the history.

        With a ``session_id`` each round is recorded (and stored) as a turn; without one the rounds use a
        transient in-memory conversation that is dropped with the answer.

        The answer's ``output`` is the last round's post-processed output plus ``"generations"``; its
        ``warnings`` are every round's, each prefixed with its generation number (``"generations[2].variants[0]
        .code: ..."`` for round 2), so ``fallback`` is true when any round filled anything in."""
        assert isinstance(self.agent, EvolvingAgent)
        agent = self.agent
        stored = await self._session(request)
        conversation = stored if stored is not None else Session("", agent.name)
        first = self.rag_request(request, conversation)
        rag_request, round_request = first, request
        runs: list[RAGResult] = []
        generations: list[dict[str, Any]] = []
        records: list[dict[str, Any]] = []
        output: dict[str, Any] = {}
        warnings: list[str] = []
        total = agent.rounds(request)
        for number in range(1, total + 1):
            run: RAGResult | None = None
            if stream:
                async for item in self.rag.run_stream(rag_request):
                    if isinstance(item, RAGResult):
                        run = item
                    else:
                        yield _RoundTokens(number, item)
                assert run is not None
            else:
                run = await self.rag.run(rag_request)
            runs.append(run)
            processed = agent.postprocess(run.text, run.sources, round_request)
            output = processed.output
            # Every round's warnings, each under its generation (the entry's "generation" number).
            warnings.extend(f"generations[{number}].{warning}" for warning in processed.warnings)
            if stored is not None:
                record = await self._record(stored, rag_request, run)
                assert record is not None
                records.append(record)
            else:
                self._append_turn(conversation, rag_request, run)
            entry = {"generation": number, **agent.generation(output, round_request), "usage": _usage([run]),
                     "history_rebuilt": run.history_rebuilt}
            generations.append(entry)
            yield _RoundDone(entry)
            if number < total:
                round_request, message = agent.next_round(round_request, entry, number + 1)
                rag_request = replace(first, user_message=message, history=tuple(conversation.turns))
        session = None
        if records:
            session = {**records[-1], "first_turn": records[0]["turn"],
                       "dropped_turns": sum(r["dropped_turns"] for r in records),
                       "history_rebuilt": any(r["history_rebuilt"] for r in records)}
        yield self._response(runs, AgentOutput({**output, "generations": generations}, tuple(warnings)), session)

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


def _usage(runs: Sequence[RAGResult]) -> dict[str, int]:
    """Token counts summed over rounds (one round: that round's)."""
    return {"prompt_tokens": sum(r.prompt_tokens for r in runs),
            "prefix_cached_tokens": sum(r.prefix_cached_tokens for r in runs),
            "completion_tokens": sum(r.completion_tokens for r in runs)}


@dataclass(frozen=True, slots=True)
class _RoundTokens:
    generation: int
    token_ids: list[int]


@dataclass(frozen=True, slots=True)
class _RoundDone:
    entry: dict[str, Any]


class _Deltas:
    """Text deltas of streamed output, per round. The whole round's output is decoded each time: a token may
    complete a multi-byte character only later."""

    def __init__(self, decode: Callable[[Sequence[int]], str]) -> None:
        self._decode = decode
        self._round = 0
        self._ids: list[int] = []
        self._sent = ""

    def add(self, round_number: int, token_ids: Sequence[int]) -> str:
        if round_number != self._round:
            self._round, self._ids, self._sent = round_number, [], ""
        self._ids.extend(token_ids)
        text = self._decode(self._ids)
        if len(text) > len(self._sent) and text.startswith(self._sent):
            delta, self._sent = text[len(self._sent):], text
            return delta
        return ""
