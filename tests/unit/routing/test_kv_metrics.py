"""KVIndexMetrics with a fake metrics sink: gauges follow the index's per-replica stats, the counter the
policy's predictions for the requests placed."""

from __future__ import annotations

from routing.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEventBatch
from routing.kv_index import KVBlockIndex
from routing.kv_metrics import PREDICTED_CACHED_TOKENS, REPLICA_STATUS, RESIDENT_BLOCKS, KVIndexMetrics
from routing.kv_policy import KVAwarePolicy, KVPolicyConfig
from routing.prefix_affinity import PromptTokens
from tests.fakes.fake_metrics_sink import FakeMetricsSink

BS = 4
PROMPT = list(range(100, 116))  # 4 full blocks


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def stored(hashes: list[int], tokens: list[int], parent: int | None = None) -> BlockStored:
    return BlockStored(block_hashes=hashes, parent_block_hash=parent, token_ids=tokens, block_size=BS)


def batch(*events: object) -> KVEventBatch:
    return KVEventBatch(ts=0.0, events=list(events))


def wired(interval_s: float = 5.0) -> tuple[KVBlockIndex, FakeMetricsSink, KVIndexMetrics, FakeClock]:
    index, sink, clock = KVBlockIndex(), FakeMetricsSink(), FakeClock()
    return index, sink, KVIndexMetrics(index, sink, refresh_interval_s=interval_s, clock=clock), clock


def test_gauges_report_the_index_block_counts_per_replica_through_store_remove_and_clear() -> None:
    index, sink, metrics, _ = wired()
    assert sink.created == sorted([PREDICTED_CACHED_TOKENS, REPLICA_STATUS, RESIDENT_BLOCKS])
    index.ingest("r1", 0, batch(stored([11, 12, 13, 14], PROMPT)))
    index.ingest("r2", 0, batch(stored([21, 22], PROMPT[:8])))
    metrics.refresh()
    assert sink.by(RESIDENT_BLOCKS, "replica") == {"r1": 4, "r2": 2}
    assert sink.by(REPLICA_STATUS, "replica", status="warm") == {"r1": 1, "r2": 1}
    assert sink.by(REPLICA_STATUS, "replica", status="cold") == {"r1": 0, "r2": 0}

    index.ingest("r1", 1, batch(BlockRemoved([13, 14])))
    index.ingest("r2", 1, batch(AllBlocksCleared()))
    metrics.refresh()
    assert sink.by(RESIDENT_BLOCKS, "replica") == {"r1": 2, "r2": 0}
    assert sink.by(RESIDENT_BLOCKS, "replica") == {r: index.num_blocks(r) for r in ("r1", "r2")}


def test_a_cold_replica_shows_cold_and_a_removed_one_drops_to_zero() -> None:
    index, sink, metrics, _ = wired()
    index.ingest("r1", 0, batch(stored([11, 12], PROMPT[:8])))
    index.ingest("r2", 0, batch(stored([21, 22, 23], PROMPT[:12])))
    metrics.refresh()
    index.mark_cold("r1")
    index.ingest("r2", 5, batch(stored([24], PROMPT[12:16], parent=23)))  # seq 1-4 missed: a replay is due
    metrics.refresh()
    assert sink.value(REPLICA_STATUS, replica="r1", status="cold") == 1
    assert sink.value(REPLICA_STATUS, replica="r1", status="warm") == 0
    assert sink.value(REPLICA_STATUS, replica="r2", status="resyncing") == 1
    assert sink.value(RESIDENT_BLOCKS, replica="r1") == 0  # a cold replica's entries are dropped

    index.remove_replica("r2")
    metrics.refresh()
    assert sink.value(RESIDENT_BLOCKS, replica="r2") == 0
    assert sink.by(REPLICA_STATUS, "status", replica="r2") == {"warm": 0, "resyncing": 0, "cold": 0}
    assert sink.value(REPLICA_STATUS, replica="r1", status="cold") == 1


def test_maybe_refresh_is_throttled_by_the_interval() -> None:
    index, sink, metrics, clock = wired(interval_s=5.0)
    assert metrics.maybe_refresh()
    index.ingest("r1", 0, batch(stored([11], PROMPT[:4])))
    clock.now = 4.9
    assert not metrics.maybe_refresh()
    assert sink.value(RESIDENT_BLOCKS, replica="r1") is None
    clock.now = 5.0
    assert metrics.maybe_refresh()
    assert sink.value(RESIDENT_BLOCKS, replica="r1") == 1


def test_a_routed_request_adds_the_policy_prediction_to_the_replica_it_was_placed_on() -> None:
    index, sink, metrics, _ = wired()
    index.ingest("r1", 0, batch(stored([11, 12, 13], PROMPT[:12])))
    index.clear("r2")
    policy = KVAwarePolicy(index, config=KVPolicyConfig(block_size=BS, pending_ttl_s=0.0))
    decision = policy.choose(["r1", "r2"], PromptTokens(PROMPT + [1, 2], prefix_len=16), {})
    assert decision.replica_id == "r1" and decision.matched_tokens == 3 * BS
    metrics.routed(decision.replica_id, decision.predicted_cached_tokens(decision.replica_id))
    metrics.routed(decision.replica_id, decision.predicted_cached_tokens(decision.replica_id))
    metrics.routed("r2", decision.predicted_cached_tokens("r2"))  # nothing believed cached: no increment
    assert sink.by(PREDICTED_CACHED_TOKENS, "replica") == {"r1": 2 * 3 * BS}
