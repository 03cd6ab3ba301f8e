"""The chat completions route's RAG hook (``collection`` on ``/v1/chat/completions``): the conversation
assembled by the same pipeline as the agents' prompts.

The chunks retrieved for the last user message go into the system turn as cached token IDs, in the order
the reuse planner picks (a recent context whole, else the ordering tree), so any OpenAI client gets the
token cache and the prefix reuse; earlier turns follow the context as they are, then the user message.
"""

from __future__ import annotations

from collections.abc import Sequence

from llm.completions import ContextPrompt
from llm.exceptions import InvalidRequestError
from rag.pipeline import RAGRequest, TokenCachedRAG
from retrieval.models import DEFAULT_TOP_K, MAX_TOP_K

__all__ = ["DEFAULT_CHAT_SYSTEM_PROMPT", "RAGChatContext"]

DEFAULT_CHAT_SYSTEM_PROMPT = ("You are a helpful assistant. Answer from the context below when it is relevant, "
                              "and cite the sources in square brackets.")


class RAGChatContext:
    """``llm.completions.ChatContext`` over a ``TokenCachedRAG`` of its own (one reuse memory for chat)."""

    def __init__(self, rag: TokenCachedRAG, default_system_prompt: str = DEFAULT_CHAT_SYSTEM_PROMPT) -> None:
        self._rag = rag
        self._default_system = default_system_prompt

    async def prompt(self, *, collection: str, top_k: int | None, system: str | None,
                     turns: Sequence[tuple[str, str]], user: str, max_tokens: int,
                     cache_salt: str | None) -> ContextPrompt:
        k = DEFAULT_TOP_K if top_k is None else top_k
        if not 1 <= k <= MAX_TOP_K:
            raise InvalidRequestError("retrieval_top_k", f"must be between 1 and {MAX_TOP_K}")
        if not user.strip():
            raise InvalidRequestError("messages", "the last user message is empty: nothing to retrieve for")
        prepared = await self._rag.prepare(RAGRequest(
            system_prompt=self._default_system if system is None else system,
            collection=collection,
            retrieval_query=user,
            user_message=user,
            top_k=k,
            max_tokens=max_tokens,
            cache_salt=cache_salt,
            turns=tuple(turns),
        ))
        lookup = prepared.lookup
        return ContextPrompt(
            token_ids=list(prepared.request.prompt_token_ids),
            prefix_len=prepared.request.prefix_len or 0,
            sources=[hit.chunk_id for hit in prepared.sources],
            cache_hits=lookup.hits if lookup else 0,
            cache_misses=lookup.misses if lookup else 0,
        )
