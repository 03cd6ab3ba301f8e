"""One Serve deployment class for all six agents; the builder binds it once per agent under its name.

Thin: the constructor wires plain objects together (tokenizer, token cache over the shard group and
Redis, retrieval over the shared store and embedder, prompt assembler, LLM pool client) and the methods
forward to ``agents.service.AgentService``. Warm-up of the agent's collection starts in the background
once the replica is up, so the replica serves at once and the cache fills meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from agents.registry import agent_by_name
from agents.service import AgentService
from cache.client import TokenCache, TokenCacheConfig
from cache.redis_tier import RedisTier
from cache.token_cached_rag import TokenCachedRAG
from cache.tokenizers import HuggingFaceTokenizer
from deployments.cache_group import ServeShardClient
from deployments.embedder import make_remote_embed
from deployments.llm_client import LLMPoolClient
from llm.fallback import FallbackConfig, build_fallback_llm
from llm.prompt import ChatSegments, PromptAssembler, plain_prompt_ids
from retrieval.chunker import chunk_text
from retrieval.service import RetrievalService
from retrieval.store import CollectionStore, StoreLimits

__all__ = ["AgentReplicaConfig", "AgentReplica"]

logger = logging.getLogger(__name__)


class AgentReplicaConfig(BaseModel):
    """What one agent's replicas need; built by the app builder from serve_config.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agent: str = Field(description="Agent name (agents.registry).")
    collection: str = Field(description="Collection the agent retrieves from.")
    model_path: str = Field(description="Served model folder (tokenizer and chat template).")
    max_model_len: int = Field(description="Model context length, for the prompt budget.")
    db_path: str = Field(description="SQLite file of the collection store.")
    store_limits: StoreLimits = Field(default_factory=StoreLimits, description="Input limits on writes.")
    chunk_target_tokens: int = Field(default=384, description="Chunker target size.")
    chunk_max_tokens: int = Field(default=512, description="Chunker hard bound.")
    token_cache: TokenCacheConfig = Field(description="This agent's token cache settings.")
    llm_timeout_s: float = Field(default=120.0, gt=0, description="Longest wait for the LLM pool.")
    llm_fallback: FallbackConfig | None = Field(default=None, description="Endpoint used when the pool is unavailable.")
    embed_timeout_s: float = Field(default=30.0, gt=0, description="Longest wait for the embedder.")
    warmup: bool = Field(default=True, description="Tokenize the whole collection into the cache at start.")


@serve.deployment(health_check_period_s=10)
class AgentReplica:
    async def __init__(self, config: AgentReplicaConfig, llm: DeploymentHandle, embedder: DeploymentHandle,
                       shards: list[DeploymentHandle]) -> None:
        self._config = config
        agent = agent_by_name(config.agent)()
        tokenizer = await asyncio.to_thread(HuggingFaceTokenizer, config.model_path)
        hf = tokenizer.tokenizer
        redis = (RedisTier.from_url(config.token_cache.redis_url, ttl_s=config.token_cache.redis_ttl_s,
                                    timeout_s=config.token_cache.redis_timeout_s)
                 if config.token_cache.redis_url else None)
        token_cache = TokenCache(
            tokenizer,
            [ServeShardClient(h, timeout_s=config.token_cache.shard_timeout_s) for h in shards],
            redis,
            config.token_cache,
            agent=agent.name,
        )
        store = CollectionStore(config.db_path, limits=config.store_limits)
        self._retrieval = RetrievalService(
            store,
            make_remote_embed(embedder, timeout_s=config.embed_timeout_s),
            lambda text: chunk_text(text, lambda t: len(tokenizer.encode(t)),
                                    config.chunk_target_tokens, config.chunk_max_tokens),
        )
        rag = TokenCachedRAG(
            search=self._retrieval.search,
            token_cache=token_cache,
            assembler=PromptAssembler(ChatSegments.from_hf_tokenizer(hf), tokenizer.encode, config.max_model_len),
            llm=build_fallback_llm(LLMPoolClient(llm, timeout_s=config.llm_timeout_s), config.llm_fallback),
            encode=tokenizer.encode,
            decode=tokenizer.decode,
            plain_prompt_ids=lambda system, texts, user: plain_prompt_ids(hf, system, texts, user),
            agent=agent.name,
        )
        self._service = AgentService(agent, rag, tokenizer.decode, collection=config.collection)
        self._warmup = {"state": "pending", "done": 0, "total": 0, "seconds": 0.0}
        self._warmup_task = asyncio.create_task(self._run_warmup()) if config.warmup else None

    async def _run_warmup(self) -> None:
        started = time.perf_counter()
        self._warmup["state"] = "running"
        try:
            chunks, _ = await asyncio.to_thread(self._retrieval.store.load, self._config.collection)

            def progress(done: int, total: int) -> None:
                self._warmup.update(done=done, total=total)

            self._warmup["total"] = len(chunks)
            await self._service.rag.warmup(chunks, progress=progress)
            self._warmup["state"] = "done"
        except Exception as err:  # warm-up is an optimisation: the agent serves without it
            self._warmup["state"] = f"failed: {err}"
            logger.warning("warm-up of %s failed: %s", self._config.collection, err)
        self._warmup["seconds"] = round(time.perf_counter() - started, 3)
        logger.info("agent=%s warm-up %s: %s chunks in %.1f s", self._config.agent, self._warmup["state"],
                    self._warmup["total"], self._warmup["seconds"])

    async def answer(self, request: Any) -> dict[str, Any]:
        return await self._service.answer(request)

    async def answer_stream(self, request: Any) -> AsyncIterator[str]:
        async for event in self._service.answer_stream(request):
            yield event

    async def invalidate(self, collection: str, doc_id: str | None = None) -> dict[str, int]:
        return await self._service.rag.invalidate(collection, doc_id)

    async def warm(self) -> dict[str, Any]:
        """Re-run warm-up now (POST /v1/cache/warmup) and report it."""
        await self._run_warmup()
        return dict(self._warmup)

    async def cache_stats(self) -> dict[str, Any]:
        cache = self._service.rag.token_cache
        return {"agent": self._config.agent, "collection": self._config.collection,
                "tiers": cache.stats(), "summary": cache.token_cache_stats().to_dict(), "warmup": dict(self._warmup)}
