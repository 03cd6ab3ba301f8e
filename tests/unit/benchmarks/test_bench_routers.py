"""benchmarks.routers: what each router is run with (no app started here)."""

from __future__ import annotations

from benchmarks.routers import KV_ROUTING, ROUTERS, router_settings
from deployments.app import AppArgs


def test_kv_routing_turns_on_the_engines_events_and_the_routers_index():
    kwargs, llm = router_settings(KV_ROUTING, None, {"num_replicas": 3, "engine": {"kv_cache_memory_bytes": 1 << 29}})
    assert ROUTERS[KV_ROUTING] == ROUTERS["prefix_affinity"]
    assert kwargs["kv_routing"] == {"enabled": True}
    # What the benchmark overrides is what the app accepts: validated as serve_config.yaml's args would be.
    args = AppArgs.model_validate({"llm": {**llm, "router": {"request_router_class": ROUTERS[KV_ROUTING],
                                                             "request_router_kwargs": kwargs}}})
    assert args.llm.kv_events.enabled and args.llm.num_replicas == 3
    assert args.llm.engine.kv_cache_memory_bytes == 1 << 29


def test_other_routers_keep_the_pool_as_given_and_only_ours_takes_the_kwargs():
    pool = {"num_replicas": 2}
    assert router_settings("prefix_affinity", {"load_factor": 3.0}, pool) == ({"load_factor": 3.0}, pool)
    assert router_settings("ray_consistent_hash", {"load_factor": 3.0}, pool) == (None, pool)
    assert router_settings("ray_default", None, pool) == (None, pool)
