"""Wires one agent's pipeline from its config: the one place where the parts are put together.

The agent deployment calls ``build_agent_service``; the gateway calls ``build_retrieval`` and
``build_llm`` for the parts it shares with the agents; tests call the same functions with test doubles
in place of the Serve handles (shard clients, LLM pool, embedder). Nothing here imports Ray.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from agents.registry import agent_by_name
from cache import TokenCache
from cache.config import TokenCacheConfig, redis_tier_from_config
from cache.redis_tier import RedisTier
from cache.shard import ShardClient
from llm.fallback import FallbackConfig, build_fallback_llm
from llm.prompt import ChatSegments, PromptAssembler, plain_prompt_ids
from rag.agent_service import AgentService
from rag.chat import RAGChatContext
from rag.pipeline import LLMGenerator, SearchFn, TokenCachedRAG
from rag.reuse import ReuseConfig
from rag.sessions import SessionConfig, SessionStore
from retrieval.config import RetrievalConfig
from retrieval.service import RetrievalService
from routing.prefix_affinity import PrefixKeyConfig
from tokenization import HuggingFaceTokenizer, TokenizerBackend

__all__ = ["AgentPipelineConfig", "EmbedFn", "build_agent_service", "build_chat_context", "build_llm", "build_pipeline",
           "build_retrieval", "build_session_store"]

EmbedFn = Callable[[list[str]], Awaitable[np.ndarray]]


class AgentPipelineConfig(BaseModel):
    """Everything one agent's pipeline needs; the app builder makes it from serve_config.yaml.

    The retrieval, token-cache and prefix-key configs are the app's own objects, embedded as they are.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    agent: str = Field(description="Agent name (agents.registry).")
    collection: str = Field(description="Collection the agent retrieves from.")
    model_path: str = Field(description="Served model folder (tokenizer and chat template).")
    max_model_len: int = Field(description="Model context length, for the prompt budget.")
    retrieval: RetrievalConfig = Field(description="The app's retrieval config (store, chunking, top_k limits).")
    token_cache: TokenCacheConfig = Field(description="This agent's token cache settings.")
    prefix_key: PrefixKeyConfig = Field(default_factory=PrefixKeyConfig, description="Shared with the router.")
    sessions: SessionConfig = Field(default_factory=SessionConfig, description="Conversation limits.")
    reuse: ReuseConfig = Field(default_factory=ReuseConfig, description="How the context order is chosen.")
    llm_timeout_s: float = Field(default=120.0, gt=0, description="Longest wait for the LLM pool.")
    llm_fallback: FallbackConfig | None = Field(default=None, description="Endpoint used when the pool is unavailable.")
    embed_timeout_s: float = Field(default=30.0, gt=0, description="Longest wait for the embedder.")
    warmup: bool = Field(default=True, description="Tokenize the whole collection into the cache at start.")


def build_retrieval(config: RetrievalConfig, tokenizer: TokenizerBackend, embed: EmbedFn) -> RetrievalService:
    """The collection store, vector search and a chunker counting the served model's tokens."""
    return RetrievalService.from_config(config, embed, lambda text: len(tokenizer.encode(text)))


def build_llm(pool: LLMGenerator, fallback: FallbackConfig | None) -> LLMGenerator:
    """The LLM pool, backed by the configured fallback endpoint when there is one."""
    return build_fallback_llm(pool, fallback)


def build_pipeline(
    name: str,
    *,
    tokenizer: HuggingFaceTokenizer,
    shards: Sequence[ShardClient],
    llm: LLMGenerator,
    search: SearchFn,
    token_cache: TokenCacheConfig,
    max_model_len: int,
    fallback: FallbackConfig | None = None,
    sessions: SessionConfig | None = None,
    reuse: ReuseConfig | None = None,
) -> TokenCachedRAG:
    """One ``TokenCachedRAG``: token cache (L0 + shard group + Redis), prompt assembly from the model's chat
    template, the LLM pool; ``name`` labels its cache stats and logs (an agent's name, or ``chat``)."""
    cache = TokenCache(tokenizer, list(shards), redis_tier_from_config(token_cache), token_cache, agent=name)
    hf = tokenizer.tokenizer
    eos = hf.eos_token_id
    return TokenCachedRAG(
        search=search,
        token_cache=cache,
        assembler=PromptAssembler(ChatSegments.from_hf_tokenizer(hf), tokenizer.encode, max_model_len),
        llm=build_llm(llm, fallback),
        encode=tokenizer.encode,
        decode=tokenizer.decode,
        plain_prompt_ids=lambda system, texts, user, history: plain_prompt_ids(hf, system, texts, user, history),
        agent=name,
        eos_token_ids=[] if eos is None else [eos],
        sessions=sessions,
        reuse=reuse,
    )


def build_agent_service(
    config: AgentPipelineConfig,
    *,
    tokenizer: HuggingFaceTokenizer,
    shards: Sequence[ShardClient],
    llm: LLMGenerator,
    embed: EmbedFn,
) -> AgentService:
    """One agent's whole pipeline: retrieval, token cache (L0 + shard group + Redis), prompt assembly, LLM."""
    agent = agent_by_name(config.agent)()
    retrieval = build_retrieval(config.retrieval, tokenizer, embed)
    rag = build_pipeline(agent.name, tokenizer=tokenizer, shards=shards, llm=llm, search=retrieval.search,
                         token_cache=config.token_cache, max_model_len=config.max_model_len,
                         fallback=config.llm_fallback, sessions=config.sessions, reuse=config.reuse)
    return AgentService(agent, rag, retrieval, build_session_store(config), collection=config.collection)


def build_chat_context(
    *,
    tokenizer: HuggingFaceTokenizer,
    shards: Sequence[ShardClient],
    llm: LLMGenerator,
    retrieval: RetrievalService,
    token_cache: TokenCacheConfig,
    max_model_len: int,
    reuse: ReuseConfig | None = None,
) -> RAGChatContext:
    """The chat completions route's RAG hook: a pipeline of its own (named ``chat``) on the gateway's
    retrieval service, sharing the token cache's shard group and Redis with the agents. ``llm`` is only
    a placeholder there: the route sends the assembled prompt to the pool itself."""
    rag = build_pipeline("chat", tokenizer=tokenizer, shards=shards, llm=llm, search=retrieval.search,
                         token_cache=token_cache, max_model_len=max_model_len, reuse=reuse)
    return RAGChatContext(rag)


def build_session_store(config: AgentPipelineConfig) -> SessionStore:
    """Conversations in Redis (shared by the agent's replicas) when it is configured, else local only."""
    url = config.token_cache.redis_url
    redis = (RedisTier.from_url(url, ttl_s=config.sessions.ttl_s, timeout_s=config.sessions.redis_timeout_s)
             if url else None)
    return SessionStore(config.sessions, redis)
