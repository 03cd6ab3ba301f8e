"""Serve deployment of one vLLM replica: a thin wrapper over ``llm.LLMServer``.

The only Serve-specific work here: pin the engine's OpenMP threads to a core of its own (by the replica's
local rank) before the engine starts, expose ``generate``/``generate_stream`` to handles, and turn a dead
engine into a failing health check so Serve replaces the replica.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.util import metrics

from llm.model_files import model_on_this_node
from llm import (
    EngineConfig,
    GenerateRequest,
    GenerateResult,
    KVEventsPublishing,
    LLMServer,
    StreamDelta,
    VLLMEngine,
    read_eos_token_ids,
)

__all__ = ["KVEventsArgs", "LLMReplicaConfig", "LLMReplica"]

logger = logging.getLogger(__name__)


class KVEventsArgs(BaseModel):
    """Whether and where each replica's engine publishes its KV-cache events (issue 15; read by the router
    when its ``kv_routing`` is on, see deployments/kv_subscriber.py). Each replica binds two TCP ports on its node,
    ``base_port + 2 * local_rank`` (events) and the next one (replay)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=False, description="Publish KV events over ZMQ from every LLM replica.")
    base_port: int = Field(default=25600, ge=1024, le=65000, description="First port; two per replica on a node.")


class LLMReplicaConfig(BaseModel):
    """What each LLM replica needs: engine settings and how to place its threads."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: EngineConfig = Field(description="vLLM engine settings.")
    bind_cores: bool = Field(
        default=True,
        description="Pin each replica's OpenMP threads to core (local_rank mod cores) so that two CPU "
        "engines on one machine do not fight over the same core. Ignored on GPU machines.",
    )
    kv_events: KVEventsArgs = Field(
        default_factory=KVEventsArgs, description="Publish the engine's KV-cache events (off by default)."
    )


def _bind_threads(local_rank: int) -> None:
    # The cores this process may run on (a container's cpuset, a node's share), not the host's count.
    cores = sorted(os.sched_getaffinity(0)) or [0]
    core = cores[local_rank % len(cores)]
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
        model_on_this_node(engine_config.model)  # another node of the cluster: prepared here on first use
        kv_events = _kv_events_publishing(config.kv_events, context)
        self._kv_endpoints = None if kv_events is None else _kv_endpoints(config.kv_events, context, kv_events.topic)
        self._server = LLMServer(
            engine_factory=lambda: VLLMEngine(engine_config, kv_events),
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

    def record_routing_stats(self) -> dict[str, object]:
        """Polled by Ray Serve and handed to every router as ``RunningReplica.routing_stats``: where this
        replica publishes its KV events, when it does (``deployments.prefix_router``'s KV routing)."""
        return {"kv_events": self._kv_endpoints} if self._kv_endpoints else {}

    def kv_endpoints(self) -> dict[str, str] | None:
        """Where this replica's engine publishes KV events (``endpoint``, ``replay_endpoint``, ``topic``),
        for a subscriber; None when publishing is off."""
        return self._kv_endpoints

    def __del__(self) -> None:
        server = getattr(self, "_server", None)
        if server is not None:
            server.shutdown()


def _kv_ports(args: KVEventsArgs, local_rank: int) -> tuple[int, int]:
    port = args.base_port + 2 * local_rank
    return port, port + 1


def _kv_events_publishing(args: KVEventsArgs, context: Any) -> KVEventsPublishing | None:
    """The engine's publisher settings for this replica, or None when KV events are off. The topic
    carries the replica id and a nonce per engine start, so a restarted engine is told apart."""
    if not args.enabled:
        return None
    port, replay_port = _kv_ports(args, context.rank.local_rank)
    topic = f"kv@{context.replica_id.unique_id}@{uuid.uuid4().hex[:12]}"
    return KVEventsPublishing(f"tcp://*:{port}", f"tcp://*:{replay_port}", topic)


def _kv_endpoints(args: KVEventsArgs, context: Any, topic: str) -> dict[str, str]:
    import ray

    ip = ray.util.get_node_ip_address()
    port, replay_port = _kv_ports(args, context.rank.local_rank)
    return {"endpoint": f"tcp://{ip}:{port}", "replay_endpoint": f"tcp://{ip}:{replay_port}", "topic": topic}


def _has_gpu() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False
