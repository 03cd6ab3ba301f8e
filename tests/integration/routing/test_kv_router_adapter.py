"""PrefixAffinityRouter with ``kv_routing`` on, driven directly (Ray imported, no cluster started).

Fake replicas carry ``routing_stats`` as Ray hands them over from ``LLMReplica.record_routing_stats``;
a fake vLLM-style publisher stands in for one replica's engine.
"""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("ray")
from deployments.kv_subscriber import kv_topic  # noqa: E402
from routing.kv_events import BlockStored, KVEventBatch  # noqa: E402
from routing.prefix_affinity import PrefixAffinityPolicy, prefix_key  # noqa: E402
from tests.fakes.fake_kv_publisher import FakeKVPublisher  # noqa: E402
from tests.fakes.router_doubles import fake_replica, make_router, pending  # noqa: E402

pytestmark = pytest.mark.integration

BS = 32
CONTEXT = [3000 + i for i in range(8 * BS)]


def _pending(request_id: str):
    return pending({"prompt_token_ids": CONTEXT + [7] * 20, "prefix_len": len(CONTEXT)}, request_id)


async def test_router_follows_the_events_to_the_replica_holding_the_prompt() -> None:
    ids = ["a", "b", "c"]
    owner = PrefixAffinityPolicy().owner(ids, prefix_key(CONTEXT))
    holder = next(r for r in ids if r != owner)
    publishers = {r: FakeKVPublisher(kv_topic(r, "n1")) for r in ids}
    replicas = [fake_replica(r, {"kv_events": {"endpoint": publishers[r].endpoint,
                                               "replay_endpoint": publishers[r].replay_endpoint}}) for r in ids]
    router = make_router(replicas, block_size=16, max_blocks=64, kv_routing={"enabled": True, "policy": {"block_size": BS}})
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
    replicas = [fake_replica(r) for r in ("a", "b")]
    router = make_router(replicas)
    assert router._kv is None
    tiers = await router.choose_replicas(replicas, _pending("r0"))
    owner = PrefixAffinityPolicy().owner(["a", "b"], prefix_key(CONTEXT))
    assert [r.replica_id.unique_id for r in tiers[0]] == [owner]
