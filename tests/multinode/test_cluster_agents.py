"""The app deployed unchanged (but for one-machine ports and pinning) on a 2-node Ray cluster: every
deployment runs, the spread ones have a replica on each node, and every agent answers through the cluster."""

from __future__ import annotations

import pytest

from tests.e2e.test_agents import AGENT_CALLS, assert_contract
from testbed.app_process import http_json

pytestmark = pytest.mark.multinode


def test_every_deployment_runs_and_the_spread_ones_have_a_replica_on_each_node(cluster_app):
    assert cluster_app.cluster.app_status() == "RUNNING"
    statuses = cluster_app.cluster.deployment_statuses()
    assert statuses and set(statuses.values()) == {"HEALTHY"}, statuses

    placed = cluster_app.cluster.replicas_by_node()
    assert set(placed) >= {"llm", "gateway", "agent_support", "EmbedderServer", "token_cache_shard_0"}
    for spread in ("llm", "gateway", "agent_support"):
        assert placed[spread] == ["head", "worker1"], placed
    assert {node for nodes in placed.values() for node in nodes} == {"head", "worker1"}


@pytest.mark.parametrize("agent", list(AGENT_CALLS))
def test_each_agent_answers_through_the_cluster_and_a_repeat_hits_both_caches(cluster_app, agent):
    path, body = AGENT_CALLS[agent]
    url = f"{cluster_app.base_url}{path}"
    status, first = http_json("POST", url, {**body, "max_tokens": 12})
    assert status == 200, first
    assert_contract(first, agent)
    status, second = http_json("POST", url, {**body, "max_tokens": 12})
    assert status == 200, second
    assert second["sources"] == first["sources"]
    # The token cache (whichever node's replica answered: L0 there, else the shard group, else Redis) and
    # the KV of the replica the router chose both hold the repeat's context.
    assert second["cache"]["hits"] == len(second["sources"]) and second["cache"]["misses"] == 0
    assert second["usage"]["prefix_cached_tokens"] > 0


def test_collection_search_and_stats_answer_through_the_cluster(cluster_app):
    status, body = http_json("POST", f"{cluster_app.base_url}/v1/collections/support_kb/search",
                             {"query": "reset two-factor authentication", "top_k": 3})
    assert status == 200 and len(body["results"]) == 3, body
    status, stats = http_json("GET", f"{cluster_app.base_url}/v1/cache/stats", timeout_s=60)
    assert status == 200 and len(stats["agents"]) == 6 and len(stats["shards"]) == 2, stats


def test_the_shared_tier_is_the_redis_cluster_and_its_keys_spread_over_every_master(cluster_app):
    """The agents on both nodes wrote their chunks' token IDs through ``redis+cluster://``; the keys (no hash
    tags) spread by slot over all three masters."""
    import redis

    per_master = {}
    for port in cluster_app.redis.master_ports():
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
        per_master[port] = sum(1 for _ in client.scan_iter(match="tcrag:tok:*", count=1000))
    assert len(per_master) == 3 and all(n > 0 for n in per_master.values()), per_master
    status, stats = http_json("GET", f"{cluster_app.base_url}/v1/cache/stats", timeout_s=60)
    assert status == 200
    l2_reads = sum(int((t.get("redis") or {}).get(k, 0)) for agent in stats["agents"].values()
                   for t in agent["tiers"] for k in ("hits", "misses"))
    assert l2_reads > 0, stats  # the agents read the cluster too (a timeout there would be an error)
