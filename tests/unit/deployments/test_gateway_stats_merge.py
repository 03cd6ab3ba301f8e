"""``GET /v1/cache/stats``: the gateway merges one agent's replicas (``deployments.gateway._merge_agent_stats``).

Counts and bytes add up over the replicas; ``hit_rate`` is recomputed from the summed hits and misses as
a FRACTION 0..1 (issue 12: one unit everywhere), never averaged from the replicas' own rates.
"""

from __future__ import annotations

import pytest

from deployments.gateway import _merge_agent_stats


def replica(hits: int, misses: int, l0_bytes: int | None = None, l0_entries: int | None = None,
            collection: str = "support_kb", own_rate: float | None = None) -> dict:
    """One agent replica's ``cache_stats`` answer (the fields the merge reads, plus some it passes on)."""
    tiers: dict = {"l1": {"hits": 1}}
    if l0_bytes is not None:
        tiers["l0"] = {"size_bytes": l0_bytes, "entries": l0_entries or 0}
    looked = hits + misses
    return {
        "agent": "support",
        "collection": collection,
        "summary": {"cache_hits": hits, "cache_misses": misses,
                    "hit_rate": own_rate if own_rate is not None else (hits / looked if looked else 0.0)},
        "tiers": tiers,
        "warmup": {"state": "done", "chunks": hits},
    }


def test_replicas_sum_and_hit_rate_is_a_recomputed_fraction():
    a = replica(hits=9, misses=1, l0_bytes=1000, l0_entries=10)
    b = replica(hits=0, misses=10, l0_bytes=500, l0_entries=5)
    merged = _merge_agent_stats([a, b])
    assert merged["replicas"] == 2 and merged["collection"] == "support_kb"
    assert merged["hits"] == 9 and merged["misses"] == 11
    assert merged["hit_rate"] == pytest.approx(9 / 20)  # not the mean of 0.9 and 0.0
    assert 0.0 <= merged["hit_rate"] <= 1.0
    assert merged["bytes"] == 1500 and merged["entries"] == 15


def test_hit_rate_ignores_the_replicas_own_rates_whatever_their_unit():
    # a replica still reporting a percent (or anything else) does not leak into the merged fraction
    merged = _merge_agent_stats([replica(3, 1, own_rate=75.0), replica(1, 3, own_rate=25.0)])
    assert merged["hit_rate"] == pytest.approx(0.5)


def test_all_hits_is_one_and_nothing_looked_up_is_zero():
    assert _merge_agent_stats([replica(5, 0), replica(7, 0)])["hit_rate"] == 1.0
    idle = _merge_agent_stats([replica(0, 0), replica(0, 0)])
    assert idle["hit_rate"] == 0.0 and idle["hits"] == idle["misses"] == 0


def test_a_single_replica_is_passed_through():
    only = replica(2, 2, l0_bytes=64, l0_entries=1)
    merged = _merge_agent_stats([only])
    assert (merged["replicas"], merged["hits"], merged["misses"], merged["hit_rate"]) == (1, 2, 2, 0.5)
    assert (merged["bytes"], merged["entries"]) == (64, 1)


def test_a_replica_without_an_l0_tier_counts_zero_bytes():
    merged = _merge_agent_stats([replica(1, 1, l0_bytes=100, l0_entries=2), replica(1, 1)])
    assert merged["bytes"] == 100 and merged["entries"] == 2


def test_per_replica_details_are_kept_in_order():
    a, b = replica(1, 0, l0_bytes=1, l0_entries=1), replica(0, 1)
    merged = _merge_agent_stats([a, b])
    assert merged["summary"] == [a["summary"], b["summary"]]
    assert merged["tiers"] == [a["tiers"], b["tiers"]]
    assert merged["warmup"] == [a["warmup"], b["warmup"]]
