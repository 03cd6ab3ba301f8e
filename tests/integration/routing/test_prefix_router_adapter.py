"""PrefixAffinityRouter's adaptation of Ray types, driven directly (Ray imported, no cluster started).

Fake replicas stand in for Ray's RunningReplica (only ``replica_id`` and ``max_ongoing_requests`` are
read); queue lengths are placed in the router's own queue-length cache so no probe RPC is made.
Tests are async because Ray's PendingRequest creates its future on the running event loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

pytest.importorskip("ray")
from routing.prefix_affinity import PrefixAffinityPolicy, prefix_key  # noqa: E402
from tests.fakes.router_doubles import fake_replica, make_router, pending  # noqa: E402

pytestmark = pytest.mark.integration

CONTEXT = list(range(3000, 3000 + 64))


def _replicas(*names: str):
    return [fake_replica(n) for n in names]


def _pending(arg, request_id: str = "r1"):
    return pending(arg, request_id)


def _router(replicas, queue_lengths: dict[str, int], **kwargs):
    return make_router(replicas, queue_lengths, **kwargs)


async def _choose(router, replicas, pending):
    return await router.choose_replicas(replicas, pending)


def _ids(tiers) -> list[list[str]]:
    return [[r.replica_id.unique_id for r in tier] for tier in tiers]


async def test_first_attempt_offers_the_owner_alone_then_adds_the_others() -> None:
    replicas = _replicas("a", "b", "c")
    router = _router(replicas, {})
    owner = PrefixAffinityPolicy().owner(["a", "b", "c"], prefix_key(CONTEXT))
    pending = _pending({"prompt_token_ids": CONTEXT + [1, 2, 3], "prefix_len": len(CONTEXT)})

    assert _ids(await _choose(router, replicas, pending)) == [[owner]]
    # Ray backs off between retries only when should_backoff is set.
    assert pending.routing_context.should_backoff is True

    tiers = _ids(await _choose(router, replicas, pending))
    assert tiers[0] == [owner]
    assert sorted(tiers[1]) == sorted({"a", "b", "c"} - {owner})


async def test_reads_all_request_shapes_and_uses_prefix_len() -> None:
    replicas = _replicas("a", "b", "c", "d")
    router = _router(replicas, {})
    owner = PrefixAffinityPolicy().owner(["a", "b", "c", "d"], prefix_key(CONTEXT))

    @dataclass
    class GenerateRequest:
        prompt_token_ids: list[int]
        prefix_len: int | None = None

    shapes = [
        list(CONTEXT),
        {"prompt_token_ids": CONTEXT + [9] * 40, "prefix_len": len(CONTEXT)},
        GenerateRequest(CONTEXT + [8] * 40, prefix_len=len(CONTEXT)),
    ]
    for i, shape in enumerate(shapes):
        assert _ids(await _choose(router, replicas, _pending(shape, f"r{i}")))[0] == [owner]


async def test_overloaded_owner_overflows_and_no_key_goes_to_least_loaded() -> None:
    replicas = _replicas("a", "b")
    owner = PrefixAffinityPolicy().owner(["a", "b"], prefix_key(CONTEXT))
    other = "b" if owner == "a" else "a"
    router = _router(replicas, {owner: 4, other: 0}, load_factor=1.25)  # bound = ceil(1.25 * 5 / 2) = 4
    assert _ids(await _choose(router, replicas, _pending(list(CONTEXT))))[0] == [other]
    # The default c=2 with two replicas: bound = ceil(2 * 5 / 2) = 5, so the owner keeps its prefix.
    router = _router(replicas, {owner: 4, other: 0})
    assert _ids(await _choose(router, replicas, _pending(list(CONTEXT))))[0] == [owner]

    router = _router(replicas, {"a": 3, "b": 1})
    assert _ids(await _choose(router, replicas, _pending("text, not tokens"))) == [["b"], ["a"]]
    assert _ids(await _choose(router, replicas, _pending([1, 2, 3], "short"))) == [["b"], ["a"]]


def test_router_kwargs_are_validated() -> None:
    with pytest.raises(ValueError, match="load_factor"):
        _router([], {}, load_factor=0.5)
    with pytest.raises(ValueError, match="unknown_knob"):
        _router([], {}, unknown_knob=1)


async def test_on_request_routed_counts_by_replica_and_reason(monkeypatch) -> None:
    replicas = _replicas("a", "b")
    router = _router(replicas, {})
    owner = PrefixAffinityPolicy().owner(["a", "b"], prefix_key(CONTEXT))
    other = "b" if owner == "a" else "a"
    counted: list[dict] = []
    monkeypatch.setattr(router._routed_counter, "inc", lambda *a, tags=None, **k: counted.append(tags))

    by_id = {r.replica_id.unique_id: r.replica_id for r in replicas}
    router.on_request_routed(_pending(list(CONTEXT)), by_id[owner], None)
    router.on_request_routed(_pending(list(CONTEXT)), by_id[other], None)
    router.on_request_routed(_pending([1]), by_id["a"], None)
    assert counted == [
        {"replica": owner, "reason": "affinity"},
        {"replica": other, "reason": "overflow"},
        {"replica": "a", "reason": "no_key"},
    ]


async def test_request_key_includes_cache_salt_and_prefix_len() -> None:
    router = _router([], {}, block_size=16, max_blocks=2)
    salted = {"prompt_token_ids": CONTEXT + [1] * 20, "prefix_len": 40, "cache_salt": "tenant-a"}
    assert router._request_key(_pending(salted)) == prefix_key(
        CONTEXT, max_blocks=2, context_end=40, cache_salt="tenant-a"
    )
    assert router._request_key(_pending(list(CONTEXT))) == prefix_key(CONTEXT, max_blocks=2)
    assert router._request_key(_pending([1.5] * 32)) is None
    assert router._request_key(None) is None
