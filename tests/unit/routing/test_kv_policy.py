"""KVAwarePolicy: scoring by resident blocks and queued work, pending blocks, fallback when cold."""

from __future__ import annotations

import pytest

from routing.kv_events import BlockStored, KVEventBatch
from routing.kv_index import KVBlockIndex
from routing.kv_policy import KVAwarePolicy, KVPolicyConfig, LoadTracker, ReplicaLoad
from routing.prefix_affinity import PrefixAffinityPolicy, PromptTokens, prefix_key

BS = 32
REPLICAS = ["r1", "r2", "r3", "r4"]
CONTEXT = [1000 + i for i in range(8 * BS)]  # 8 blocks of shared context


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def prompt(query: int, context: list[int] = CONTEXT) -> PromptTokens:
    return PromptTokens(context + [query] * 40, prefix_len=len(context))


def store(index: KVBlockIndex, replica: str, tokens: list[int], seq: int = 0) -> None:
    n = len(tokens) // BS
    index.ingest(replica, seq, KVEventBatch(0.0, [BlockStored(
        block_hashes=[hash((replica, i)) & 0xFFFF_FFFF for i in range(n)], parent_block_hash=None,
        token_ids=tokens[: n * BS], block_size=BS)]))


def warm_index(replicas: list[str] = REPLICAS) -> KVBlockIndex:
    index = KVBlockIndex()
    for r in replicas:
        index.clear(r)  # known and empty: warm
    return index


def policy(index: KVBlockIndex, clock: FakeClock | None = None, **config: object) -> KVAwarePolicy:
    cfg = KVPolicyConfig(block_size=BS, prefill_tokens_per_s=100.0, decode_tokens_per_s=50.0, **config)
    return KVAwarePolicy(index, PrefixAffinityPolicy(), cfg, clock=clock or FakeClock())


def test_replica_holding_the_prefix_wins_on_an_idle_pool() -> None:
    index = warm_index()
    store(index, "r3", CONTEXT)
    decision = policy(index).choose(REPLICAS, prompt(7), {})
    assert decision.replica_id == "r3" and decision.reason == "kv_match"
    assert decision.matched_tokens == len(CONTEXT)
    # 40 query tokens uncached at 100 tokens/s.
    assert decision.expected_ttft_s == pytest.approx(0.4)


def test_longest_resident_prefix_wins() -> None:
    index = warm_index()
    store(index, "r1", CONTEXT[: 2 * BS])
    store(index, "r2", CONTEXT[: 6 * BS])
    assert policy(index).choose(REPLICAS, prompt(7), {}).replica_id == "r2"


def test_queued_work_outweighs_a_small_cache_hit() -> None:
    index = warm_index()
    store(index, "r1", CONTEXT)
    busy = {"r1": ReplicaLoad(prefill_tokens=2000, decode_tokens=0, requests=3)}
    # r1: 20 s of queued prefill + 0.4 s; elsewhere: 296 tokens cold = 2.96 s.
    decision = policy(index).choose(REPLICAS, prompt(7), busy)
    assert decision.replica_id != "r1" and decision.reason == "kv_load"
    # A little queue does not: 1 s queued + 0.4 s beats 2.96 s cold.
    light = {"r1": ReplicaLoad(prefill_tokens=100, decode_tokens=0, requests=1)}
    assert policy(index).choose(REPLICAS, prompt(7), light).replica_id == "r1"


def test_queued_decode_counts_at_its_own_rate() -> None:
    index = warm_index()
    loads = {r: ReplicaLoad(decode_tokens=100, requests=1) for r in REPLICAS}
    loads["r2"] = ReplicaLoad(decode_tokens=10, requests=1)
    assert policy(index).choose(REPLICAS, prompt(7), loads).replica_id == "r2"


def test_new_prefix_on_an_idle_pool_goes_to_the_ring_owner_in_every_router() -> None:
    index = warm_index()
    p = prompt(7, context=[5] * (8 * BS))
    key = prefix_key(p.token_ids, 16, 64, p.prefix_len)
    owner = PrefixAffinityPolicy().owner(REPLICAS, key)
    assert policy(index).choose(REPLICAS, p, {}).replica_id == owner
    assert policy(index).choose(list(reversed(REPLICAS)), p, {}).replica_id == owner


def test_routed_prompt_counts_as_present_until_its_ttl() -> None:
    index = warm_index()
    clock = FakeClock()
    pol = policy(index, clock, pending_ttl_s=5.0)
    p = prompt(7, context=[9] * (8 * BS))
    first = pol.choose(REPLICAS, p, {})
    assert first.reason == "kv_load"
    # Before any event: the same prefix follows, even when that replica now has a little queue.
    loads = {first.replica_id: ReplicaLoad(prefill_tokens=200, requests=1)}
    second = pol.choose(REPLICAS, prompt(8, context=[9] * (8 * BS)), loads)
    assert second.replica_id == first.replica_id and second.reason == "kv_match"
    clock.now = 6.0  # expired and never confirmed by events: only load counts now
    third = pol.choose(REPLICAS, prompt(9, context=[9] * (8 * BS)), loads)
    assert third.replica_id != first.replica_id


def test_decision_states_what_every_scored_candidate_is_believed_to_hold() -> None:
    index = warm_index()
    store(index, "r1", CONTEXT[: 2 * BS])
    store(index, "r2", CONTEXT[: 6 * BS])
    decision = policy(index).choose(REPLICAS, prompt(7), {})
    assert decision.matched_tokens_by_replica == {"r1": 2 * BS, "r2": 6 * BS, "r3": 0, "r4": 0}
    assert decision.predicted_cached_tokens("r2") == decision.matched_tokens == 6 * BS
    assert decision.predicted_cached_tokens("r1") == 2 * BS  # had Ray placed it there instead
    assert decision.predicted_cached_tokens("elsewhere") == 0


def test_cold_index_falls_back_to_affinity_routing() -> None:
    index = KVBlockIndex()  # no replica heard from
    p = prompt(7)
    decision = policy(index).choose(REPLICAS, p, {})
    expected = PrefixAffinityPolicy().choose(REPLICAS, prefix_key(p.token_ids, 16, 64, p.prefix_len), {})
    assert decision.replica_id == expected.replica_id and decision.reason == "fallback_affinity"
    assert decision.expected_ttft_s is None
    assert decision.predicted_cached_tokens(decision.replica_id) == 0  # the index is not consulted


def test_fallback_uses_the_load_bound() -> None:
    index = KVBlockIndex()
    p = prompt(7)
    owner = PrefixAffinityPolicy().owner(REPLICAS, prefix_key(p.token_ids, 16, 64, p.prefix_len))
    lengths = {owner: 10}
    decision = policy(index).choose(REPLICAS, p, {}, queue_lengths=lengths)
    assert decision.replica_id != owner and decision.reason == "fallback_overflow"


def test_fallback_when_too_few_candidates_are_warm_and_not_otherwise() -> None:
    index = KVBlockIndex()
    index.clear("r1")
    store(index, "r1", CONTEXT)
    assert policy(index, min_warm_fraction=0.5).choose(REPLICAS, prompt(7), {}).reason.startswith("fallback")
    decision = policy(index, min_warm_fraction=0.25).choose(REPLICAS, prompt(7), {})
    assert (decision.replica_id, decision.reason) == ("r1", "kv_match")


def test_a_cold_replica_is_not_trusted_for_matches() -> None:
    index = warm_index()
    store(index, "r2", CONTEXT)
    index.mark_cold("r2")
    store(index, "r2", CONTEXT, seq=1)  # indexed again after the mark, yet not trusted while cold
    decision = policy(index).choose(REPLICAS, prompt(7), {})
    assert decision.reason == "kv_load"


def test_malformed_tokens_fall_back_without_a_key() -> None:
    index = warm_index()
    decision = policy(index).choose(REPLICAS, PromptTokens([-5] * 100), {})
    assert decision.reason == "fallback_no_key"


def test_no_candidates_is_an_error() -> None:
    with pytest.raises(ValueError):
        policy(warm_index()).choose([], prompt(1), {})


def test_engine_block_size_from_events_wins_over_the_configured_one() -> None:
    index = warm_index()
    store(index, "r1", CONTEXT)
    pol = KVAwarePolicy(index, config=KVPolicyConfig(block_size=128))
    assert pol.block_size(REPLICAS) == BS


def test_load_tracker_moves_work_from_prefill_to_decode_to_done() -> None:
    tracker = LoadTracker()
    tracker.routed("a", "r1", prefill_tokens=500, decode_tokens=16)
    tracker.routed("b", "r1", prefill_tokens=100, decode_tokens=8)
    assert tracker.loads()["r1"] == ReplicaLoad(600, 24, 2)
    tracker.first_token("a")
    assert tracker.loads()["r1"] == ReplicaLoad(100, 24, 2)
    tracker.finished("a")
    tracker.finished("a")  # idempotent
    assert tracker.loads()["r1"] == ReplicaLoad(100, 8, 1)
    tracker.remove_replica("r1")
    assert tracker.loads() == {}
