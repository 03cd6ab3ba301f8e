"""PrefixAffinityPolicy: affinity, spread, bounded loads, remapping on replica changes."""

from __future__ import annotations

from collections import Counter

import pytest

from routing.hashring import ConsistentHashRing
from routing.prefix_affinity import PrefixAffinityPolicy, RoutingDecision, prefix_key

REPLICAS = ["replica-a", "replica-b", "replica-c", "replica-d"]
IDLE: dict[str, int] = {}


def _keys(n: int) -> list[str]:
    # Real prefix keys of distinct 2-block prompts, so the test exercises the real key format.
    keys = [prefix_key([i] * 16 + [i + 1] * 16) for i in range(n)]
    assert all(k is not None for k in keys)
    return keys  # type: ignore[return-value]


def _owners(policy: PrefixAffinityPolicy, candidates: list[str], keys: list[str]) -> dict[str, str]:
    return {k: policy.choose(candidates, k, IDLE).replica_id for k in keys}


def test_same_prefix_goes_to_the_same_replica() -> None:
    policy = PrefixAffinityPolicy()
    key = _keys(1)[0]
    decisions = {policy.choose(REPLICAS, key, IDLE) for _ in range(20)}
    assert len(decisions) == 1
    (decision,) = decisions
    assert decision.reason == "affinity"
    # Candidate order does not matter, and a fresh policy agrees (no per-process state).
    assert PrefixAffinityPolicy().choose(list(reversed(REPLICAS)), key, IDLE) == decision


def test_owner_is_the_ring_owner() -> None:
    ring = ConsistentHashRing(REPLICAS, vnodes=128)
    policy = PrefixAffinityPolicy(vnodes=128)
    for key in _keys(50):
        assert policy.choose(REPLICAS, key, IDLE).replica_id == ring.lookup(key)


def test_different_prefixes_spread_roughly_evenly() -> None:
    policy = PrefixAffinityPolicy()
    counts = Counter(_owners(policy, REPLICAS, _keys(4000)).values())
    assert set(counts) == set(REPLICAS)
    for replica in REPLICAS:
        # 1000 expected each; 128 vnodes keep every replica well within +-25%.
        assert 750 <= counts[replica] <= 1250, counts


def test_affinity_holds_while_under_the_bound() -> None:
    policy = PrefixAffinityPolicy(load_factor=1.25)
    key = _keys(1)[0]
    owner = policy.choose(REPLICAS, key, IDLE).replica_id
    # 8 in flight, n=4: bound = ceil(1.25 * 9 / 4) = 3; the owner holds 2 < 3.
    loads = {r: 2 for r in REPLICAS}
    assert policy.load_bound(4, sum(loads.values())) == 3
    assert policy.choose(REPLICAS, key, loads) == RoutingDecision(owner, "affinity")


def test_hot_key_overflows_to_the_next_replica_in_ring_order() -> None:
    policy = PrefixAffinityPolicy(load_factor=1.25)
    ring = ConsistentHashRing(REPLICAS, vnodes=128)
    key = _keys(1)[0]
    order = list(ring.preference_list(key))
    # The owner holds 4 of 4 in-flight requests: bound = ceil(1.25 * 5 / 4) = 2, owner is over.
    loads = {order[0]: 4}
    decision = policy.choose(REPLICAS, key, loads)
    assert decision == RoutingDecision(order[1], "overflow")
    # If the successor is at the bound too, the walk continues in ring order.
    loads = {order[0]: 3, order[1]: 3}  # m=6, bound = ceil(1.25 * 7 / 4) = 3
    assert policy.choose(REPLICAS, key, loads) == RoutingDecision(order[2], "overflow")


def test_bound_is_never_exceeded_by_a_burst_of_one_key() -> None:
    # Place 40 requests for one hot key with nothing completing: every placement must respect the
    # bound computed from the load at that moment, and the load must end spread.
    policy = PrefixAffinityPolicy(load_factor=1.25)
    key = _keys(1)[0]
    loads = {r: 0 for r in REPLICAS}
    for _ in range(40):
        bound = policy.load_bound(len(REPLICAS), sum(loads.values()))
        decision = policy.choose(REPLICAS, key, loads)
        assert loads[decision.replica_id] < bound
        loads[decision.replica_id] += 1
    assert max(loads.values()) <= policy.load_bound(len(REPLICAS), 39)
    assert all(v > 0 for v in loads.values())


def test_load_factor_one_balances_exactly() -> None:
    policy = PrefixAffinityPolicy(load_factor=1.0)
    key = _keys(1)[0]
    loads = {r: 0 for r in REPLICAS[:2]}
    for _ in range(10):
        loads[policy.choose(REPLICAS[:2], key, loads).replica_id] += 1
    assert loads == {REPLICAS[0]: 5, REPLICAS[1]: 5}


def test_no_key_goes_to_the_least_loaded_with_deterministic_ties() -> None:
    policy = PrefixAffinityPolicy()
    loads = {"replica-a": 3, "replica-b": 1, "replica-c": 1, "replica-d": 2}
    assert policy.choose(REPLICAS, None, loads) == RoutingDecision("replica-b", "no_key")
    assert policy.choose(list(reversed(REPLICAS)), None, loads).replica_id == "replica-b"
    assert policy.choose(REPLICAS, None, IDLE) == RoutingDecision("replica-a", "no_key")


def test_missing_and_negative_queue_lengths_count_as_zero() -> None:
    policy = PrefixAffinityPolicy()
    key = _keys(1)[0]
    owner = policy.choose(REPLICAS, key, IDLE).replica_id
    assert policy.choose(REPLICAS, key, {owner: -3}).replica_id == owner
    # Queue lengths of replicas that are not candidates are ignored.
    assert policy.choose(REPLICAS, key, {"gone": 100}).replica_id == owner


def test_removing_a_replica_moves_only_its_keys() -> None:
    policy = PrefixAffinityPolicy()
    keys = _keys(2000)
    before = _owners(policy, REPLICAS, keys)
    removed = "replica-c"
    after = _owners(policy, [r for r in REPLICAS if r != removed], keys)
    for key in keys:
        if before[key] != removed:
            assert after[key] == before[key]
        else:
            assert after[key] != removed
    assert removed not in after.values()


def test_adding_a_replica_moves_about_one_in_n_keys_all_to_it() -> None:
    policy = PrefixAffinityPolicy()
    keys = _keys(4000)
    before = _owners(policy, REPLICAS, keys)
    after = _owners(policy, REPLICAS + ["replica-e"], keys)
    moved = [k for k in keys if before[k] != after[k]]
    assert all(after[k] == "replica-e" for k in moved)
    # Expect 1/5 of the keys; allow for vnode variance.
    assert 0.12 <= len(moved) / len(keys) <= 0.28, len(moved)


def test_ring_is_rebuilt_only_when_the_candidate_set_changes() -> None:
    policy = PrefixAffinityPolicy()
    key = _keys(1)[0]
    policy.choose(REPLICAS, key, IDLE)
    ring = policy._ring
    policy.choose(list(reversed(REPLICAS)), key, IDLE)
    assert policy._ring is ring
    policy.choose(REPLICAS[:3], key, IDLE)
    assert policy._ring is not ring


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        PrefixAffinityPolicy(load_factor=0.9)
    with pytest.raises(ValueError):
        PrefixAffinityPolicy(vnodes=0)
    with pytest.raises(ValueError):
        PrefixAffinityPolicy().choose([], "k", IDLE)


def test_single_replica_takes_everything() -> None:
    policy = PrefixAffinityPolicy()
    assert policy.choose(["only"], "k", {"only": 50}) == RoutingDecision("only", "affinity")


def test_owner_ignores_load_and_matches_the_idle_choice() -> None:
    policy = PrefixAffinityPolicy()
    for key in _keys(20):
        owner = policy.owner(REPLICAS, key)
        assert owner == policy.choose(REPLICAS, key, IDLE).replica_id
        assert policy.owner(REPLICAS, key) == owner
    with pytest.raises(ValueError):
        policy.owner([], "k")
