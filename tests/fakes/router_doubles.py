"""Test doubles for driving ``PrefixAffinityRouter`` directly (Ray imported, no cluster started).

``FakeRunningReplica`` stands in for Ray's RunningReplica (the router reads ``replica_id``,
``max_ongoing_requests`` and ``routing_stats``); queue lengths go into the router's own queue-length cache,
so no probe RPC is made. PendingRequest creates its future on the running loop: call these from async tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ray.serve._private.common import DeploymentHandleSource, DeploymentID, ReplicaID, RequestMetadata
from ray.serve.request_router import PendingRequest

from deployments.prefix_router import PrefixAffinityRouter

DEPLOYMENT = DeploymentID(name="llm", app_name="tcrag")


@dataclass
class FakeRunningReplica:
    replica_id: ReplicaID
    max_ongoing_requests: int = 8
    routing_stats: dict = field(default_factory=dict)


def fake_replica(name: str, routing_stats: dict | None = None) -> FakeRunningReplica:
    return FakeRunningReplica(ReplicaID(unique_id=name, deployment_id=DEPLOYMENT), routing_stats=routing_stats or {})


def make_router(replicas: list[FakeRunningReplica], queue_lengths: dict[str, int] | None = None,
                metrics_factory: Any = None, **kwargs: Any) -> PrefixAffinityRouter:
    """A router as Serve builds it (``initialize_state`` with the kwargs) that knows ``replicas``."""
    router = PrefixAffinityRouter(deployment_id=DEPLOYMENT, handle_source=DeploymentHandleSource.UNKNOWN,
                                  use_replica_queue_len_cache=True)
    if metrics_factory is not None:
        router._kv_metrics_factory = metrics_factory
    router.initialize_state(**kwargs)
    for replica in replicas:
        router.replica_queue_len_cache.update(replica.replica_id,
                                              (queue_lengths or {}).get(replica.replica_id.unique_id, 0))
    router._replicas = {r.replica_id: r for r in replicas}
    return router


def pending(arg: Any, request_id: str = "r1") -> PendingRequest:
    """A pending ``generate(arg)`` call as the router receives it."""
    metadata = RequestMetadata(request_id=request_id, internal_request_id=request_id)
    return PendingRequest(args=[arg], kwargs={}, metadata=metadata)
