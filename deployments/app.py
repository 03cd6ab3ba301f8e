"""The app builder: ``serve run serve_config.yaml`` calls ``build(args)`` with the YAML's ``args``.

Every knob lives in ``AppArgs``; each part gets only its own sub-config. Parts: the vLLM replica pool
(with the prefix-affinity router), and the gateway.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application
from ray.serve.config import RequestRouterConfig

from deployments.gateway import Gateway, GatewayConfig
from deployments.llm_server import LLMReplica, LLMReplicaConfig
from llm import EngineConfig, EngineSettings

__all__ = ["AppArgs", "build", "resolve_model_path"]

logger = logging.getLogger(__name__)


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


class LLMPoolArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    num_replicas: int = Field(default=2, ge=1, description="vLLM replicas (ignored when autoscaling is set).")
    autoscaling_config: dict[str, Any] | None = Field(default=None, description="Serve autoscaling config.")
    num_cpus: float = Field(default=0.4, gt=0, description="Ray CPUs reserved per replica (fractional on 2 cores).")
    memory_gb: float | None = Field(default=None, gt=0, description="Ray memory reserved per replica.")
    max_ongoing_requests: int = Field(default=16, ge=1, description="Requests a replica accepts at once.")
    max_queued_requests: int = Field(default=256, ge=-1, description="Queue bound before callers get 503 (-1: none).")
    bind_cores: bool = Field(default=True, description="Pin each CPU engine to a core of its own.")
    engine: EngineSettings = Field(default_factory=EngineSettings, description="vLLM engine settings.")
    router: RouterArgs = Field(default_factory=RouterArgs, description="Request routing across replicas.")


class GatewayArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    num_replicas: int = Field(default=1, ge=1, description="Gateway replicas.")
    num_cpus: float = Field(default=0.1, gt=0, description="Ray CPUs per gateway replica.")
    request_timeout_s: float = Field(default=120.0, gt=0, description="Longest wait for the LLM pool.")


class AppArgs(BaseModel):
    """Everything ``serve_config.yaml`` can set; unknown keys are refused so typos do not pass silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelArgs = Field(default_factory=ModelArgs, description="Which model the pool serves.")
    llm: LLMPoolArgs = Field(default_factory=LLMPoolArgs, description="The vLLM replica pool.")
    gateway: GatewayArgs = Field(default_factory=GatewayArgs, description="The HTTP ingress.")


def resolve_model_path(model: ModelArgs) -> str:
    """Config first, then ``$TCRAG_MODEL``, then the embedded default (prepared on first use)."""
    if model.path:
        return model.path
    if os.environ.get("TCRAG_MODEL"):
        return os.environ["TCRAG_MODEL"]
    from scripts.prepare_model import ensure_model

    return str(ensure_model())


def _deployment_options(num_replicas: int, autoscaling: dict[str, Any] | None, num_cpus: float,
                        memory_gb: float | None = None) -> dict[str, Any]:
    actor_options: dict[str, Any] = {"num_cpus": num_cpus}
    if memory_gb:
        actor_options["memory"] = int(memory_gb * (1 << 30))
    options: dict[str, Any] = {"ray_actor_options": actor_options}
    if autoscaling:
        options["autoscaling_config"] = autoscaling
    else:
        options["num_replicas"] = num_replicas
    return options


def build(args: dict[str, Any] | None = None) -> Application:
    """Validate the YAML args and compose the application."""
    app_args = AppArgs.model_validate(args or {})
    model_path = resolve_model_path(app_args.model)
    model_name = app_args.model.name or Path(model_path).name
    logger.info("building app for model %s (%s)", model_name, model_path)

    pool = app_args.llm
    llm_options = _deployment_options(pool.num_replicas, pool.autoscaling_config, pool.num_cpus, pool.memory_gb)
    llm_options["max_ongoing_requests"] = pool.max_ongoing_requests
    llm_options["max_queued_requests"] = pool.max_queued_requests
    if pool.router.request_router_class:
        llm_options["request_router_config"] = RequestRouterConfig(
            request_router_class=pool.router.request_router_class,
            request_router_kwargs=dict(pool.router.request_router_kwargs),
        )
    engine = EngineConfig(model=model_path, **pool.engine.model_dump())
    llm = LLMReplica.options(**llm_options).bind(LLMReplicaConfig(engine=engine, bind_cores=pool.bind_cores))

    gateway_args = app_args.gateway
    gateway = Gateway.options(
        **_deployment_options(gateway_args.num_replicas, None, gateway_args.num_cpus)
    ).bind(
        GatewayConfig(model_path=model_path, model_name=model_name, request_timeout_s=gateway_args.request_timeout_s),
        llm,
    )
    return gateway
