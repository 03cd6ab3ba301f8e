"""PrefixAffinityRouter on a real Ray Serve cluster: affinity, spread, and bursts of one hot key.

A tiny echo deployment with two replicas stands in for the vLLM pool: ``generate(request)`` takes the
same argument shapes and answers with its replica id, so the test sees where each request went.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402
from ray.serve.config import RequestRouterConfig  # noqa: E402

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[3]
APP_NAME = "prefix_router_test"
CONTEXT = list(range(2000, 2000 + 256))  # 16 whole blocks shared by the "same prefix" requests


@serve.deployment(
    num_replicas=2,
    ray_actor_options={"num_cpus": 0.1},
    max_ongoing_requests=8,
    request_router_config=RequestRouterConfig(
        request_router_class="deployments.prefix_router:PrefixAffinityRouter",
        request_router_kwargs={"load_factor": 1.25, "block_size": 16, "max_blocks": 64},
    ),
)
class EchoReplica:
    """Answers with its own replica id, after an optional delay to hold requests in flight."""

    async def generate(self, request: dict) -> str:
        delay_s = request.get("delay_s", 0.0) if isinstance(request, dict) else 0.0
        if delay_s:
            await asyncio.sleep(delay_s)
        return serve.get_replica_context().replica_id.unique_id


@pytest.fixture(scope="module")
def echo_handle():
    # Replica processes import deployments.prefix_router when they unpickle the router class and
    # this module when they unpickle EchoReplica, so they need the repo and this folder on their path.
    pythonpath = os.pathsep.join([str(REPO_ROOT), str(Path(__file__).parent)])
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
        log_to_driver=False,
    )
    try:
        handle = serve.run(EchoReplica.bind(), name=APP_NAME, route_prefix=None)
        yield handle.options(method_name="generate")
    finally:
        serve.shutdown()
        ray.shutdown()


def _request(query: list[int], context: list[int] = CONTEXT, **extra) -> dict:
    return {"prompt_token_ids": context + query, "prefix_len": len(context), **extra}


def test_same_prefix_lands_on_one_replica(echo_handle) -> None:
    # Different queries after the same context: the key covers the context only.
    replicas = [echo_handle.remote(_request([7] * (i + 1))).result(timeout_s=30) for i in range(20)]
    assert len(set(replicas)) == 1, Counter(replicas)


def test_different_prefixes_land_on_both_replicas(echo_handle) -> None:
    replicas = {
        echo_handle.remote(_request([1, 2, 3], context=[i] * 64)).result(timeout_s=30)
        for i in range(20)
    }
    assert len(replicas) == 2


def test_accepts_bare_token_lists_and_short_prompts(echo_handle) -> None:
    assert echo_handle.remote(list(CONTEXT)).result(timeout_s=30)
    assert echo_handle.remote({"prompt_token_ids": [1, 2, 3]}).result(timeout_s=30)
    assert echo_handle.remote("not tokens").result(timeout_s=30)


def test_burst_of_one_hot_prefix_completes_and_overflows(echo_handle) -> None:
    # 40 concurrent requests for one key, each held 0.3 s, 8 slots per replica: every request must
    # be routed (none orphaned by the routing loop) and the bounded load must spill some of them to
    # the second replica instead of queueing all 40 behind the owner.
    responses = [echo_handle.remote(_request([5], delay_s=0.3)) for _ in range(40)]
    replicas = [r.result(timeout_s=60) for r in responses]
    assert len(replicas) == 40
    assert len(set(replicas)) == 2, Counter(replicas)
