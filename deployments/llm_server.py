"""Serve deployment of one vLLM replica: a thin wrapper over ``llm.LLMServer``.

The only Serve-specific work here: pin the engine's OpenMP threads to a core of its own (by the replica's
local rank) before the engine starts, expose ``generate``/``generate_stream`` to handles, and turn a dead
engine into a failing health check so Serve replaces the replica.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator

from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.util import metrics

from llm import EngineConfig, GenerateRequest, GenerateResult, LLMServer, StreamDelta, VLLMEngine, read_eos_token_ids

__all__ = ["LLMReplicaConfig", "LLMReplica"]

logger = logging.getLogger(__name__)


class LLMReplicaConfig(BaseModel):
    """What each LLM replica needs: engine settings and how to place its threads."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: EngineConfig = Field(description="vLLM engine settings.")
    bind_cores: bool = Field(
        default=True,
        description="Pin each replica's OpenMP threads to core (local_rank mod cores) so that two CPU "
        "engines on one machine do not fight over the same core. Ignored on GPU machines.",
    )


def _bind_threads(local_rank: int) -> None:
    cores = os.cpu_count() or 1
    core = local_rank % cores
    # vLLM CPU binds OpenMP to core 0 and reserves the rest by default; every replica would share core 0.
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", str(core))
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    logger.info("LLM replica rank %d bound to core %d", local_rank, core)


class ReplicaMetrics:
    """Per-replica Prometheus metrics (through Ray's metrics API): what the prefix router achieves shows
    up as cached tokens per replica, and its balance as requests and in-flight counts per replica."""

    def __init__(self, replica_id: str) -> None:
        tags = {"replica": replica_id}
        self._requests = metrics.Counter(
            "tcrag_llm_requests", description="Generate requests finished by this LLM replica.",
            tag_keys=("replica",),
        ).set_default_tags(tags)
        self._prompt_tokens = metrics.Counter(
            "tcrag_llm_prompt_tokens", description="Prompt tokens of finished requests.", tag_keys=("replica",),
        ).set_default_tags(tags)
        self._cached_tokens = metrics.Counter(
            "tcrag_llm_prefix_cached_tokens",
            description="Prompt tokens served from vLLM's prefix cache (prefill skipped).",
            tag_keys=("replica",),
        ).set_default_tags(tags)
        self._in_flight = metrics.Gauge(
            "tcrag_llm_requests_in_flight", description="Requests being served by this replica (its queue).",
            tag_keys=("replica",),
        ).set_default_tags(tags)
        self.in_flight = 0

    def started(self) -> None:
        self.in_flight += 1
        self._in_flight.set(self.in_flight)

    def finished(self, result: GenerateResult | None) -> None:
        self.in_flight -= 1
        self._in_flight.set(self.in_flight)
        if result is not None:
            self._requests.inc()
            self._prompt_tokens.inc(result.prompt_tokens)
            if result.num_cached_tokens:
                self._cached_tokens.inc(result.num_cached_tokens)


@serve.deployment(name="llm", health_check_period_s=10, health_check_timeout_s=30)
class LLMReplica:
    def __init__(self, config: LLMReplicaConfig) -> None:
        context = serve.get_replica_context()
        if config.bind_cores and not _has_gpu():
            _bind_threads(context.rank.local_rank)
        engine_config = config.engine
        self._server = LLMServer(
            engine_factory=lambda: VLLMEngine(engine_config),
            max_model_len=engine_config.max_model_len,
            eos_token_ids=read_eos_token_ids(engine_config.model),
            replica_id=context.replica_id.unique_id,
        )
        self._metrics = ReplicaMetrics(context.replica_id.unique_id)

    async def generate(self, request: GenerateRequest) -> GenerateResult:
        self._metrics.started()
        result = None
        try:
            result = await self._server.generate(request)
            return result
        finally:
            self._metrics.finished(result)

    async def generate_stream(self, request: GenerateRequest) -> AsyncIterator[StreamDelta]:
        self._metrics.started()
        result = None
        try:
            async for delta in self._server.generate_stream(request):
                if delta.result is not None:
                    result = delta.result
                yield delta
        finally:
            self._metrics.finished(result)

    async def check_health(self) -> None:
        await self._server.check_health()

    def __del__(self) -> None:
        server = getattr(self, "_server", None)
        if server is not None:
            server.shutdown()


def _has_gpu() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False
