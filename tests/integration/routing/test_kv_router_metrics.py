"""PrefixAffinityRouter's KV-routing metrics wiring, driven directly (Ray imported, no cluster started), with
a fake metrics sink in place of ``ray.util.metrics``; the index is fed directly, no publisher."""

from __future__ import annotations

import pytest

pytest.importorskip("ray")
from deployments.prefix_router import PrefixAffinityRouter, RayMetricsFactory  # noqa: E402
from routing.kv_events import BlockStored, KVEventBatch  # noqa: E402
from routing.kv_metrics import PREDICTED_CACHED_TOKENS, REPLICA_STATUS, RESIDENT_BLOCKS  # noqa: E402
from testbed.redis_server import free_port  # noqa: E402
from tests.fakes.fake_metrics_sink import FakeMetricsSink  # noqa: E402
from tests.fakes.router_doubles import fake_replica, make_router, pending  # noqa: E402

pytestmark = pytest.mark.integration

BS = 32
CONTEXT = [5000 + i for i in range(6 * BS)]


def _replicas(*names: str):
    # Event endpoints nobody publishes on (no replay endpoint): the subscriber connects, hears nothing.
    return [fake_replica(n, {"kv_events": {"endpoint": f"tcp://127.0.0.1:{free_port()}"}}) for n in names]


def _router(replicas, sink: FakeMetricsSink, **kwargs) -> PrefixAffinityRouter:
    return make_router(replicas, metrics_factory=sink, **kwargs)


def _pending(request_id: str):
    return pending({"prompt_token_ids": CONTEXT + [7] * 20, "prefix_len": len(CONTEXT)}, request_id)


async def _stop(router: PrefixAffinityRouter) -> None:
    kv = router._kv
    if kv is not None and kv.subscriber is not None:
        kv._task.cancel()
        await kv.subscriber.close()


async def test_kv_routing_off_creates_no_metrics() -> None:
    replicas = _replicas("a", "b")
    sink = FakeMetricsSink()
    router = _router(replicas, sink)
    await router.choose_replicas(replicas, _pending("q0"))
    router.on_request_routed(_pending("q0"), replicas[0].replica_id, None)
    assert router._kv is None and sink.created == []


async def test_routing_reports_resident_blocks_and_predicted_tokens_by_replica_id() -> None:
    replicas = _replicas("a", "b")
    sink = FakeMetricsSink()
    router = _router(replicas, sink, kv_routing={"enabled": True, "policy": {"block_size": BS}})
    try:
        assert sink.created == sorted([PREDICTED_CACHED_TOKENS, REPLICA_STATUS, RESIDENT_BLOCKS])
        kv = router._kv
        kv.index.clear("a")
        kv.index.ingest("b", 0, KVEventBatch(0.0, [BlockStored(
            block_hashes=list(range(1, 7)), parent_block_hash=None, token_ids=CONTEXT, block_size=BS)]))
        tiers = await router.choose_replicas(replicas, _pending("q1"))
        assert [r.replica_id.unique_id for r in tiers[0]] == ["b"]
        # The first routing decision refreshed the gauges (then at most every metrics_interval_s).
        assert sink.by(RESIDENT_BLOCKS, "replica") == {"a": 0, "b": 6}
        assert sink.by(REPLICA_STATUS, "replica", status="warm") == {"a": 1, "b": 1}
        assert sink.by(PREDICTED_CACHED_TOKENS, "replica") == {}  # counted on placement, not on choice
        router.on_request_routed(_pending("q1"), replicas[1].replica_id, None)
        assert sink.by(PREDICTED_CACHED_TOKENS, "replica") == {"b": len(CONTEXT)}
        assert kv.tracker.loads()["b"].prefill_tokens == 20  # the uncached query only

        # Ray placed the next one on "a" (b full): what the policy believed "a" holds, i.e. nothing.
        await router.choose_replicas(replicas, _pending("q2"))
        router.on_request_routed(_pending("q2"), replicas[0].replica_id, None)
        assert sink.by(PREDICTED_CACHED_TOKENS, "replica") == {"b": len(CONTEXT)}
        assert kv.tracker.loads()["a"].prefill_tokens == len(CONTEXT) + 20

        # "b" leaves the pool: its gauges drop to 0 at once.
        assert kv.subscriber.connected() == ["a", "b"]
        router._replicas = {replicas[0].replica_id: replicas[0]}
        await router.choose_replicas(replicas[:1], _pending("q3"))
        assert kv.subscriber.connected() == ["a"]
        assert sink.value(RESIDENT_BLOCKS, replica="b") == 0
        assert sink.by(REPLICA_STATUS, "status", replica="b") == {"warm": 0, "resyncing": 0, "cold": 0}
    finally:
        await _stop(router)


def test_ray_factory_adds_the_deployment_tag() -> None:
    factory = RayMetricsFactory({"deployment": "llm"})
    gauge = factory.gauge("tcrag_test_kv_gauge", "test", ("replica",))
    counter = factory.counter("tcrag_test_kv_counter", "test", ("replica",))
    assert gauge._tag_keys == ("deployment", "replica") and counter._tag_keys == ("deployment", "replica")
    gauge.set(3, tags={"replica": "a"})
    counter.inc(5, tags={"replica": "a"})
