"""PrefixAffinityRouter with ``kv_routing`` on, driven directly (Ray imported, no cluster started).

Fake replicas carry ``routing_stats`` as Ray hands them over from ``LLMReplica.record_routing_stats``;
a fake vLLM-style publisher stands in for one replica's engine.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

pytest.importorskip("ray")
from ray.serve._private.common import DeploymentHandleSource, DeploymentID, ReplicaID, RequestMetadata  # noqa: E402
from ray.serve.request_router import PendingRequest  # noqa: E402

from deployments.kv_subscriber import kv_topic  # noqa: E402
from deployments.prefix_router import PrefixAffinityRouter  # noqa: E402
from routing.kv_events import BlockStored, KVEventBatch  # noqa: E402
from routing.prefix_affinity import PrefixAffinityPolicy, prefix_key  # noqa: E402
from tests.fakes.fake_kv_publisher import FakeKVPublisher  # noqa: E402

pytestmark = pytest.mark.integration

DEPLOYMENT = DeploymentID(name="llm", app_name="tcrag")
BS = 32
CONTEXT = [3000 + i for i in range(8 * BS)]


@dataclass
class FakeRunningReplica:
    replica_id: ReplicaID
    max_ongoing_requests: int = 8
    routing_stats: dict = field(default_factory=dict)


def _router(replicas, **kwargs) -> PrefixAffinityRouter:
    router = PrefixAffinityRouter(deployment_id=DEPLOYMENT, handle_source=DeploymentHandleSource.UNKNOWN,
                                  use_replica_queue_len_cache=True)
    router.initialize_state(**kwargs)
    for replica in replicas:
        router.replica_queue_len_cache.update(replica.replica_id, 0)
    router._replicas = {r.replica_id: r for r in replicas}
    return router


def _pending(request_id: str) -> PendingRequest:
    metadata = RequestMetadata(request_id=request_id, internal_request_id=request_id)
    body = {"prompt_token_ids": CONTEXT + [7] * 20, "prefix_len": len(CONTEXT)}
    return PendingRequest(args=[body], kwargs={}, metadata=metadata)


async def test_router_follows_the_events_to_the_replica_holding_the_prompt() -> None:
    ids = ["a", "b", "c"]
    owner = PrefixAffinityPolicy().owner(ids, prefix_key(CONTEXT))
    holder = next(r for r in ids if r != owner)
    publishers = {r: FakeKVPublisher(kv_topic(r, "n1")) for r in ids}
    replicas = [FakeRunningReplica(ReplicaID(unique_id=r, deployment_id=DEPLOYMENT), routing_stats={
        "kv_events": {"endpoint": publishers[r].endpoint, "replay_endpoint": publishers[r].replay_endpoint}})
        for r in ids]
    router = _router(replicas, block_size=16, max_blocks=64, kv_routing={"enabled": True, "policy": {"block_size": BS}})
    try:
        # Before any event the replicas are unknown: the affinity owner, as today.
        tiers = await router.choose_replicas(replicas, _pending("r0"))
        assert [r.replica_id.unique_id for r in tiers[0]] == [owner]
        await asyncio.sleep(0.5)  # connected, bootstrapped (empty history: warm), subscriptions settled
        publishers[holder].publish(KVEventBatch(0.0, [BlockStored(
            block_hashes=list(range(1, 9)), parent_block_hash=None, token_ids=CONTEXT, block_size=BS)]))
        kv = router._kv
        for _ in range(100):
            if kv.index.num_blocks(holder) == 8:
                break
            await asyncio.sleep(0.02)
        assert all(kv.index.status(r) == "warm" for r in ids)
        tiers = await router.choose_replicas(replicas, _pending("r1"))
        assert [r.replica_id.unique_id for r in tiers[0]] == [holder]
        # Its placement is counted as load until Ray reports completion.
        holder_replica = next(r for r in replicas if r.replica_id.unique_id == holder)
        router.on_request_routed(_pending("r1"), holder_replica.replica_id, None)
        assert kv.tracker.loads()[holder].requests == 1
        router.on_request_completed(holder_replica.replica_id, "r1")
        assert kv.tracker.loads()[holder].requests == 0
    finally:
        if router._kv.subscriber is not None:
            router._kv._task.cancel()
            await router._kv.subscriber.close()
        for p in publishers.values():
            p.close()


async def test_kv_routing_is_off_by_default() -> None:
    replicas = [FakeRunningReplica(ReplicaID(unique_id=r, deployment_id=DEPLOYMENT)) for r in ("a", "b")]
    router = _router(replicas)
    assert router._kv is None
    tiers = await router.choose_replicas(replicas, _pending("r0"))
    owner = PrefixAffinityPolicy().owner(["a", "b"], prefix_key(CONTEXT))
    assert [r.replica_id.unique_id for r in tiers[0]] == [owner]
