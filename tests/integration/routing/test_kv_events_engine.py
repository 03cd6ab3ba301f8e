"""A real vLLM engine publishing KV events to our subscriber: the index matches the engine's cache.

One small CPU engine (SmolLM2-135M, 256 MiB of KV) started through ``llm.engine.VLLMEngine`` with
``KVEventsPublishing``, exactly as an LLM replica does when ``llm.kv_events.enabled`` is on; the
``deployments.kv_subscriber.KVEventSubscriber`` feeds a ``routing.kv_index.KVBlockIndex``. Before each
request the index predicts the cached prompt tokens; the engine then reports ``num_cached_tokens``.
"""

from __future__ import annotations

import asyncio
import random

import pytest
import zmq.asyncio

from deployments.kv_subscriber import KVEventSubscriber, ReplicaEndpoints, kv_topic
from llm.engine import EngineConfig, KVEventsPublishing, VLLMEngine
from llm.types import GenerateRequest
from routing.kv_index import KVBlockIndex, block_keys
from settings.paths import default_model_dir, env_model_path
from testbed.redis_server import free_port

pytestmark = pytest.mark.integration

REPLICA = "replica-under-test"


async def _generate(engine: VLLMEngine, tokens: list[int], request_id: str) -> int:
    cached = 0
    async for step in engine.generate(GenerateRequest(prompt_token_ids=tokens, max_tokens=2), request_id):
        cached = step.num_cached_tokens
    return cached


async def test_index_fed_by_a_real_engine_predicts_its_cached_tokens() -> None:
    port, replay_port = free_port(), free_port()
    config = EngineConfig(model=env_model_path() or str(default_model_dir()), max_model_len=2048,
                          kv_cache_memory_bytes=256 << 20, max_num_seqs=4)
    publishing = KVEventsPublishing(f"tcp://*:{port}", f"tcp://*:{replay_port}", kv_topic(REPLICA, "n1"))
    index = KVBlockIndex()
    subscriber = KVEventSubscriber(index, context=zmq.asyncio.Context())
    subscriber.connect(REPLICA, ReplicaEndpoints(f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{replay_port}"))
    task = asyncio.get_running_loop().create_task(subscriber.run())
    engine = VLLMEngine(config, publishing)
    try:
        rng = random.Random(0)
        a = [rng.randrange(100, 49_000) for _ in range(600)]
        b = a[:300] + [rng.randrange(100, 49_000) for _ in range(300)]
        assert await _generate(engine, a, "a1") == 0

        async def predicted(tokens: list[int]) -> int:
            for _ in range(100):  # events follow the engine step; wait until the first one is in
                if index.block_size(REPLICA):
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            bs = index.block_size(REPLICA)
            return index.matched_blocks(block_keys(tokens, bs), [REPLICA])[REPLICA] * bs

        for name, tokens in (("repeat", a), ("shared prefix", b), ("repeat of b", b)):
            expected = await predicted(tokens)
            assert await _generate(engine, tokens, name) == expected, name
        assert index.status(REPLICA) == "warm"
        assert index.num_blocks(REPLICA) > 0
    finally:
        task.cancel()
        await subscriber.close()
        engine.shutdown()
