"""Documentation lookup: answers from the product docs and returns the sections it used."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from pydantic import Field

from agents.base import Agent, AgentCacheSettings, AgentOutput, AgentRequest
from agents.fields import QueryText
from agents.text import clean_model_text, first_paragraph, mentioned_documents
from retrieval.models import SearchHit

__all__ = ["DocumentationRequest", "DocumentationAgent"]

logger = logging.getLogger(__name__)


class DocumentationRequest(AgentRequest):
    """Body of `POST /v1/agents/documentation/lookup`."""

    query: QueryText = Field(description="What to look up in the documentation, 1-4000 characters.")


class DocumentationAgent(Agent):
    """Answers from the `documentation` collection. The sections used are the retrieved chunks of the
    documents the answer names (by id or title); when it names none, every retrieved chunk, in
    retrieval order, since they were all in the model's context."""

    name: ClassVar[str] = "documentation"
    route: ClassVar[str] = "lookup"
    collection: ClassVar[str] = "documentation"
    request_model: ClassVar[type[AgentRequest]] = DocumentationRequest
    cache_settings: ClassVar[AgentCacheSettings] = AgentCacheSettings(ttl_s=3600, max_cache_size_mb=100)
    system_prompt: ClassVar[str] = (
        "You are a documentation assistant for the Lumen data platform. Answer the question from the "
        "documentation sections in the context only. Be precise: quote exact option names, commands, "
        "limits and defaults as written. Keep it under 150 words; use a short code block for commands "
        "or config. Name the documentation page you used by its title. If the documentation does not "
        "answer the question, say which page comes closest."
    )

    def retrieval_query(self, request: AgentRequest) -> str:
        return getattr(request, "query", "")

    def user_message(self, request: AgentRequest) -> str:
        return f"Question about the documentation: {getattr(request, 'query', '')}"

    def postprocess(self, text: str, sources: list[SearchHit], request: AgentRequest) -> AgentOutput:
        """`{"answer": str, "sections": [{"doc_id", "title", "chunk_id", "score"}]}`. An empty answer
        falls back to the best section's opening paragraph (a warning says so)."""
        try:
            return _answer_with_sections(text, sources)
        except Exception:  # post-processing must never fail the request
            logger.exception("documentation post-processing failed; returning the raw answer")
            return AgentOutput({"answer": clean_model_text(text), "sections": []},
                               ("sections: post-processing failed; the raw answer is returned without sections",))


def _answer_with_sections(text: str, sources: list[SearchHit]) -> AgentOutput:
    answer = clean_model_text(text)
    warnings: list[str] = []
    if not answer:
        if sources:
            best = max(sources, key=lambda s: s.score)
            answer = f"From \"{best.title}\": {first_paragraph(best.text) or best.text.strip()[:500]}"
            warnings.append(f"answer: the model wrote none; filled with the opening of the best section "
                            f"{best.chunk_id!r}")
        else:
            answer = "The documentation has no section matching this question."
            warnings.append("answer: the model wrote none and no section was retrieved; a stock reply")
    named = set(mentioned_documents(answer, sources))
    used = [s for s in sources if s.doc_id in named] or list(sources)
    return AgentOutput({
        "answer": answer,
        "sections": [
            {"doc_id": s.doc_id, "title": s.title, "chunk_id": s.chunk_id, "score": round(float(s.score), 4)}
            for s in used
        ],
    }, tuple(warnings))
