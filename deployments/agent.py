"""One Serve deployment class for all six agents; the builder binds it once per agent under its name.

Thin: the constructor turns Serve handles into clients and lets ``rag.builder`` wire the pipeline; the
methods forward to ``rag.agent_service.AgentService``. Warm-up of the agent's collection starts in the
background once the replica is up, so the replica serves at once and the cache fills meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.cache_group import ServeShardClient
from deployments.embedder import make_remote_embed
from deployments.llm_client import LLMPoolClient
from llm.model_files import model_on_this_node
from rag.builder import AgentPipelineConfig, build_agent_service
from tokenization import HuggingFaceTokenizer

__all__ = ["AgentReplica"]


@serve.deployment(health_check_period_s=10)
class AgentReplica:
    async def __init__(self, config: AgentPipelineConfig, llm: DeploymentHandle, embedder: DeploymentHandle,
                       shards: list[DeploymentHandle]) -> None:
        model_path = await asyncio.to_thread(model_on_this_node, config.model_path)  # prepared here on first use
        tokenizer = await asyncio.to_thread(HuggingFaceTokenizer, model_path)
        self._service = build_agent_service(
            config,
            tokenizer=tokenizer,
            shards=[ServeShardClient(h, timeout_s=config.token_cache.shard_timeout_s) for h in shards],
            llm=LLMPoolClient(llm, timeout_s=config.llm_timeout_s, prefix_key=config.prefix_key),
            embed=make_remote_embed(embedder, timeout_s=config.embed_timeout_s),
        )
        self._warmup_task = asyncio.create_task(self._service.warmup()) if config.warmup else None

    async def answer(self, request: Any) -> dict[str, Any]:
        return await self._service.answer(request)

    async def answer_stream(self, request: Any) -> AsyncIterator[str]:
        async for event in self._service.answer_stream(request):
            yield event

    async def invalidate(self, collection: str, doc_id: str | None = None) -> dict[str, int]:
        return await self._service.rag.invalidate(collection, doc_id)

    async def warm(self) -> dict[str, Any]:
        """Re-run warm-up now (POST /v1/cache/warmup) and report it."""
        return await self._service.warmup()

    async def cache_stats(self) -> dict[str, Any]:
        return self._service.cache_stats()

    async def get_session(self, session_id: str) -> dict[str, Any] | None:
        return await self._service.get_session(session_id)

    async def delete_session(self, session_id: str) -> bool:
        return await self._service.delete_session(session_id)
