"""The app builder: ``serve run serve_config.yaml`` calls ``build(args)`` with the YAML's ``args``.

Every knob lives in ``AppArgs``; each part gets only its own sub-config. Parts: the vLLM replica pool
(with the prefix-affinity router), the token-cache shard group, the shared embedder, one deployment per
agent, and the gateway. The builder also prepares what the parts share before they start: the model
folder and the collection store (sample knowledge bases loaded into empty collections, with progress).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray.serve import Application
from ray.serve.config import RequestRouterConfig

from agents.registry import AGENTS
from cache.config import TokenCacheConfig
from deployments.agent import AgentReplica
from deployments.cache_group import TokenCacheShardServer, shard_deployment_name
from deployments.embedder import EmbedderServer
from deployments.gateway import Gateway, GatewayConfig
from deployments.llm_server import KVEventsArgs, LLMReplica, LLMReplicaConfig
from llm import EngineConfig, EngineSettings, model_files
from llm.fallback import FallbackConfig
from rag.builder import AgentPipelineConfig
from rag.reuse import ReuseConfig
from rag.sessions import SessionConfig
from retrieval.config import EmbedderConfig, RetrievalConfig
from routing.prefix_affinity import PrefixKeyConfig

__all__ = ["AppArgs", "build", "resolve_model_path"]

logger = logging.getLogger(__name__)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class ModelArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str | None = Field(
        default=None,
        description="Served model folder. Unset: $TCRAG_MODEL, else the prepared embedded SmolLM2-135M-Instruct.",
    )
    name: str | None = Field(default=None, description="Model name for /v1/models (default: the folder name).")


class RouterArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    request_router_class: str | None = Field(
        default="deployments.prefix_router:PrefixAffinityRouter",
        description="Import path of the LLM pool's request router; null uses Ray's default router.",
    )
    request_router_kwargs: dict[str, Any] = Field(default_factory=dict, description="Router parameters.")


class ScaleArgs(BaseModel):
    """Replicas and CPU share of one deployment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_replicas: int = Field(default=1, ge=1, description="Replicas (ignored when autoscaling is set).")
    autoscaling_config: dict[str, Any] | None = Field(default=None, description="Serve autoscaling config.")
    num_cpus: float = Field(default=0.05, gt=0, description="Ray CPUs reserved per replica (fractional on 2 cores).")
    memory_gb: float | None = Field(default=None, gt=0, description="Ray memory reserved per replica.")
    max_ongoing_requests: int = Field(default=64, ge=1, description="Requests a replica works on at once.")
    max_queued_requests: int = Field(
        default=512, ge=-1, description="Requests queued for the deployment before callers get 503 (-1: unbounded)."
    )
    max_replicas_per_node: int | None = Field(
        default=None, ge=1,
        description="At most this many replicas on one Ray node (null: no limit). 1 spreads replicas over nodes, "
                    "and a node that rejoins after a loss gets back the replica that could not be placed.",
    )

    def options(self) -> dict[str, Any]:
        actor_options: dict[str, Any] = {"num_cpus": self.num_cpus}
        if self.memory_gb:
            actor_options["memory"] = int(self.memory_gb * (1 << 30))
        options: dict[str, Any] = {
            "ray_actor_options": actor_options,
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
        }
        if self.max_replicas_per_node is not None:
            options["max_replicas_per_node"] = self.max_replicas_per_node
        if self.autoscaling_config:
            options["autoscaling_config"] = self.autoscaling_config
        else:
            options["num_replicas"] = self.num_replicas
        return options


class LLMPoolArgs(ScaleArgs):
    num_replicas: int = Field(default=2, ge=1, description="vLLM replicas (ignored when autoscaling is set).")
    num_cpus: float = Field(default=0.4, gt=0, description="Ray CPUs reserved per replica.")
    max_ongoing_requests: int = Field(default=16, ge=1, description="Requests a replica accepts at once.")
    max_queued_requests: int = Field(default=256, ge=-1, description="Queue bound before callers get 503 (-1: none).")
    bind_cores: bool = Field(default=True, description="Pin each CPU engine to a core of its own.")
    kv_events: KVEventsArgs = Field(
        default_factory=KVEventsArgs, description="Publish each engine's KV-cache events over ZMQ (off by default)."
    )
    engine: EngineSettings = Field(default_factory=EngineSettings, description="vLLM engine settings.")
    router: RouterArgs = Field(default_factory=RouterArgs, description="Request routing across replicas.")
    fallback: FallbackConfig | None = Field(
        default=None, description="OpenAI-compatible endpoint that serves when the whole pool is unavailable."
    )


class GatewayArgs(ScaleArgs):
    request_timeout_s: float = Field(default=120.0, gt=0, description="Longest wait for the LLM pool or an agent.")
    protect_reads: bool = Field(default=False, description="Require TCRAG_API_KEY on read routes too.")
    chat_cache_mb: float = Field(default=64.0, gt=0, description="L0 token-cache budget of the chat completions RAG hook.")
    chat_cache_ttl_s: float = Field(default=3600.0, gt=0, description="L0 entry lifetime of the chat RAG hook.")
    open_prompt_prefix_tokens: int = Field(
        default=256, ge=1,
        description="OpenAI prompts carry no context end: the router keys them on this many leading tokens.")


class CacheArgs(TokenCacheConfig):
    """The shared token-cache tiers: the shard group (L1) and Redis (L2).

    It is a ``TokenCacheConfig`` (every client setting can be set here) plus the shard group's own
    settings; each agent's config is this one with its L0 budget and TTL from ``agents:``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_shards: int = Field(default=2, ge=1, description="Shard deployments; keys spread by consistent hashing.")
    shard_max_mb: float = Field(default=256.0, gt=0, description="Byte budget of each shard, in MiB.")
    shard_ttl_s: float | None = Field(default=7200.0, gt=0, description="Seconds a shard entry lives.")
    shard_num_cpus: float = Field(default=0.05, gt=0, description="Ray CPUs per shard replica.")
    redis_url: str | None = Field(
        default=None,
        description=f"Redis URL; null: $REDIS_URL, else {DEFAULT_REDIS_URL}. A Redis Cluster: "
        "redis+cluster://host:port[,host:port...] (rediss+cluster:// for TLS). 'none' disables Redis.",
    )

    def client_config(self, **per_agent: Any) -> TokenCacheConfig:
        """The agents' ``TokenCacheConfig``: these settings, Redis URL resolved, ``per_agent`` on top."""
        shared = self.model_dump(include=set(TokenCacheConfig.model_fields))
        return TokenCacheConfig(**{**shared, "redis_url": resolve_redis_url(self), **per_agent})


class AgentArgs(ScaleArgs):
    collection: str | None = Field(default=None, description="Collection to retrieve from (default: the agent's).")
    max_cache_size_mb: float | None = Field(default=None, gt=0, description="L0 budget (default: the agent's).")
    ttl_s: float | None = Field(default=None, gt=0, description="L0 entry lifetime (default: the agent's).")
    warmup: bool = Field(default=True, description="Tokenize the collection into the cache at start.")


class RetrievalArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    db_path: str | None = Field(
        default=None,
        description="Collection store file. Null: $TCRAG_DATA_DIR/collections.sqlite3, else "
        "~/.cache/token-cached-rag/store/collections.sqlite3 ($TCRAG_HOME moves it).",
    )
    data_dir: str | None = Field(default=None, description="Sample knowledge bases (default: the repo's data/).")
    settings: RetrievalConfig = Field(default_factory=RetrievalConfig, description="Chunking, limits, samples.")
    embedder: EmbedderConfig = Field(default_factory=EmbedderConfig, description="Embedder model and batching.")
    embedder_scale: ScaleArgs = Field(default_factory=lambda: ScaleArgs(num_cpus=0.1), description="Embedder replicas.")

    @model_validator(mode="after")
    def _paths_in_one_place(self) -> RetrievalArgs:
        if self.settings.db_path is not None or self.settings.data_dir is not None:
            raise ValueError("set the store and sample paths as retrieval.db_path and retrieval.data_dir, "
                             "not under retrieval.settings")
        return self

    def config(self) -> RetrievalConfig:
        """The app's one retrieval config, with both paths resolved."""
        return self.settings.resolved(self.db_path, self.data_dir)


class AppArgs(BaseModel):
    """Everything ``serve_config.yaml`` can set; unknown keys are refused so typos do not pass silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelArgs = Field(default_factory=ModelArgs, description="Which model the pool serves.")
    llm: LLMPoolArgs = Field(default_factory=LLMPoolArgs, description="The vLLM replica pool.")
    gateway: GatewayArgs = Field(default_factory=lambda: GatewayArgs(num_cpus=0.1), description="The HTTP ingress.")
    cache: CacheArgs = Field(default_factory=CacheArgs, description="Token-cache shard group and Redis.")
    retrieval: RetrievalArgs = Field(default_factory=RetrievalArgs, description="Collections and embedder.")
    agents: dict[str, AgentArgs] = Field(default_factory=dict, description="Per-agent settings, by agent name.")
    sessions: SessionConfig = Field(default_factory=SessionConfig, description="Conversation limits (session_id).")
    reuse: ReuseConfig = Field(default_factory=ReuseConfig, description="Context order chosen for KV reuse.")


def resolve_model_path(model: ModelArgs) -> str:
    """Config first, then ``$TCRAG_MODEL``, then the embedded default (prepared on first use)."""
    return model_files.resolve_model_path(model.path)


def resolve_redis_url(cache: CacheArgs) -> str | None:
    url = cache.redis_url or os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    return None if url.lower() == "none" else url


def prepare_store(retrieval: RetrievalConfig, embedder: EmbedderConfig, model_path: str) -> None:
    """Create the collections and load the sample knowledge bases into empty ones (with progress)."""
    from retrieval.samples import load_sample_collections, pending_sample_loads
    from tokenization import HuggingFaceTokenizer

    store = retrieval.open_store()
    try:
        if not any(pending_sample_loads(store, retrieval.data_dir).values()):
            return
        started = time.perf_counter()
        print(f"[tcrag] loading sample knowledge bases from {retrieval.data_dir} into {retrieval.db_path} ...",
              file=sys.stderr, flush=True)
        tokenizer = HuggingFaceTokenizer(model_path)
        local = embedder.create()

        def progress(collection: str, done: int, total: int) -> None:
            print(f"[tcrag]   {collection}: {done}/{total} documents", file=sys.stderr, flush=True)

        load_sample_collections(store, retrieval.data_dir, retrieval.chunker(lambda t: len(tokenizer.encode(t))),
                                local.embed, progress)
        print(f"[tcrag] samples loaded in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    finally:
        store.close()


def build(args: dict[str, Any] | None = None) -> Application:
    """Validate the YAML args and compose the application; every config is made here once and passed down."""
    app_args = AppArgs.model_validate(args or {})
    unknown = set(app_args.agents) - {a.name for a in AGENTS}
    if unknown:
        raise ValueError(f"agents: unknown agent(s) {sorted(unknown)}; known: {[a.name for a in AGENTS]}")
    model_path = resolve_model_path(app_args.model)
    model_name = app_args.model.name or Path(model_path).name
    retrieval = app_args.retrieval.config()
    if retrieval.load_samples:
        prepare_store(retrieval, app_args.retrieval.embedder, model_path)
    logger.info("building app: model %s, store %s", model_path, retrieval.db_path)

    # LLM pool; the prefix key the router computes is the one every pool client sets as session id.
    pool = app_args.llm
    llm_options = pool.options()
    if pool.router.request_router_class:
        llm_options["request_router_config"] = RequestRouterConfig(
            request_router_class=pool.router.request_router_class,
            request_router_kwargs=dict(pool.router.request_router_kwargs),
        )
    prefix_key = PrefixKeyConfig.model_validate(pool.router.request_router_kwargs)
    engine = EngineConfig(model=model_path, **pool.engine.model_dump())
    llm = LLMReplica.options(**llm_options).bind(
        LLMReplicaConfig(engine=engine, bind_cores=pool.bind_cores, kv_events=pool.kv_events)
    )

    # Token-cache shard group and the shared embedder
    cache = app_args.cache
    shards = [
        TokenCacheShardServer.options(name=shard_deployment_name(i), ray_actor_options={"num_cpus": cache.shard_num_cpus})
        .bind(int(cache.shard_max_mb * (1 << 20)), cache.shard_ttl_s)
        for i in range(cache.num_shards)
    ]
    embed_cfg = app_args.retrieval.embedder
    embedder = EmbedderServer.options(**app_args.retrieval.embedder_scale.options()).bind(embed_cfg)

    # One deployment per agent
    agents: dict[str, Any] = {}
    collections: dict[str, str] = {}
    for agent_cls in AGENTS:
        agent_args = app_args.agents.get(agent_cls.name, AgentArgs())
        budget = agent_cls.cache_settings
        collection = agent_args.collection or agent_cls.collection
        collections[agent_cls.name] = collection
        config = AgentPipelineConfig(
            agent=agent_cls.name,
            collection=collection,
            model_path=model_path,
            max_model_len=engine.max_model_len,
            retrieval=retrieval,
            token_cache=cache.client_config(max_cache_size_mb=agent_args.max_cache_size_mb or budget.max_cache_size_mb,
                                            l0_ttl_s=agent_args.ttl_s or budget.ttl_s),
            prefix_key=prefix_key,
            sessions=app_args.sessions,
            reuse=app_args.reuse,
            llm_timeout_s=app_args.gateway.request_timeout_s,
            llm_fallback=pool.fallback,
            warmup=agent_args.warmup,
        )
        name = f"agent_{agent_cls.name.replace('-', '_')}"
        agents[agent_cls.name] = AgentReplica.options(name=name, **agent_args.options()).bind(config, llm, embedder, shards)

    gateway_args = app_args.gateway
    return Gateway.options(**gateway_args.options()).bind(
        GatewayConfig(
            model_path=model_path,
            model_name=model_name,
            request_timeout_s=gateway_args.request_timeout_s,
            retrieval=retrieval,
            prefix_key=prefix_key,
            agent_collections=collections,
            protect_reads=gateway_args.protect_reads,
            llm_fallback=pool.fallback,
            max_model_len=engine.max_model_len,
            token_cache=cache.client_config(max_cache_size_mb=gateway_args.chat_cache_mb, l0_ttl_s=gateway_args.chat_cache_ttl_s),
            reuse=app_args.reuse,
            open_prompt_prefix_tokens=gateway_args.open_prompt_prefix_tokens,
        ),
        llm,
        embedder,
        agents,
        shards,
    )
