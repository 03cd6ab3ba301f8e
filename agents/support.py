"""Customer support: answers a question from the help-center articles and cites the articles used."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from pydantic import Field

from agents.base import Agent, AgentCacheSettings, AgentOutput, AgentRequest
from agents.fields import QueryText
from agents.text import best_per_document, clean_model_text, first_paragraph, mentioned_documents
from retrieval.models import SearchHit

__all__ = ["SupportRequest", "SupportAgent"]

logger = logging.getLogger(__name__)


class SupportRequest(AgentRequest):
    """Body of `POST /v1/agents/support/answer`."""

    query: QueryText = Field(description="The customer's question, 1-4000 characters.")


class SupportAgent(Agent):
    """Answers from the `support_kb` articles; cites the retrieved articles the answer names (by id or
    title), or every retrieved article in retrieval order when it names none."""

    name: ClassVar[str] = "support"
    route: ClassVar[str] = "answer"
    collection: ClassVar[str] = "support_kb"
    request_model: ClassVar[type[AgentRequest]] = SupportRequest
    cache_settings: ClassVar[AgentCacheSettings] = AgentCacheSettings(ttl_s=3600, max_cache_size_mb=100)
    system_prompt: ClassVar[str] = (
        "You are a customer support agent for the Lumen data platform. Answer the customer's question "
        "using only the help articles in the context. Give the fix as short numbered steps when there "
        "are steps, otherwise at most four sentences. Name each article you used by its title. If the "
        "articles do not cover the question, say so and suggest contacting support. Do not invent "
        "settings, prices or error codes."
    )

    def retrieval_query(self, request: AgentRequest) -> str:
        return getattr(request, "query", "")

    def user_message(self, request: AgentRequest) -> str:
        return f"Customer question: {getattr(request, 'query', '')}"

    def postprocess(self, text: str, sources: list[SearchHit], request: AgentRequest) -> AgentOutput:
        """`{"answer": str, "citations": [{"doc_id", "title", "chunk_id"}]}`. An empty answer falls back
        to the best article's opening paragraph (a warning says so), so the answer is never empty when
        anything was found."""
        try:
            return _answer_with_citations(text, sources)
        except Exception:  # post-processing must never fail the request
            logger.exception("support post-processing failed; returning the raw answer")
            return AgentOutput({"answer": clean_model_text(text), "citations": []},
                               ("citations: post-processing failed; the raw answer is returned uncited",))


def _answer_with_citations(text: str, sources: list[SearchHit]) -> AgentOutput:
    answer = clean_model_text(text)
    articles = best_per_document(sources)
    warnings: list[str] = []
    if not answer:
        if articles:
            best = max(articles, key=lambda a: a.score)
            lead = first_paragraph(best.text) or best.title
            answer = f"See \"{best.title}\": {lead}"
            warnings.append(f"answer: the model wrote none; filled with the opening of the best article "
                            f"{best.doc_id!r}")
        else:
            answer = "I could not find a help article for this question; please contact support."
            warnings.append("answer: the model wrote none and no article was retrieved; a stock reply")
    named = set(mentioned_documents(answer, articles))
    cited = [a for a in articles if a.doc_id in named] or articles
    return AgentOutput({
        "answer": answer,
        "citations": [{"doc_id": a.doc_id, "title": a.title, "chunk_id": a.chunk_id} for a in cited],
    }, tuple(warnings))
