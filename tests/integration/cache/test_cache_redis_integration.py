"""RedisTier and TokenCache against a real redis-server started by the tests."""

import asyncio
import time

import pytest
import redis

from cache import TokenCache, TokenCacheConfig
from cache.keys import ChunkKey, ChunkRef
from cache.redis_tier import RedisTier
from tokenization import TiktokenTokenizer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tokenizer():
    return TiktokenTokenizer()


def chunks(n, doc="doc", words=60):
    return [
        ChunkRef("support_kb", f"{doc}-{i}", f"{doc}-{i}#0", " ".join(f"{doc}w{i}x{j}" for j in range(words)))
        for i in range(n)
    ]


def new_cache(tokenizer, url, ttl_s=60.0, cooldown_s=0.3):
    tier = RedisTier.from_url(url, ttl_s=ttl_s, timeout_s=0.2, failure_threshold=2, cooldown_s=cooldown_s)
    return TokenCache(tokenizer, [], tier, TokenCacheConfig(redis_url=url, redis_ttl_s=ttl_s))


async def test_ttl_expiry(redis_url):
    tier = RedisTier.from_url(redis_url, ttl_s=1, timeout_s=0.2)
    assert await tier.put_many({"tcrag:tok:c:fp:k": b"v"})
    assert await tier.get_many(["tcrag:tok:c:fp:k"]) == {"tcrag:tok:c:fp:k": b"v"}
    await asyncio.sleep(1.3)
    assert await tier.get_many(["tcrag:tok:c:fp:k"]) == {}
    await tier.close()


async def test_eviction_under_maxmemory_keeps_serving(redis_url, tokenizer):
    admin = redis.Redis.from_url(redis_url)
    admin.config_set("maxmemory-policy", "allkeys-lru")
    budget = admin.info("memory")["used_memory"] + 512 * 1024  # 0.5 MiB above the empty server
    admin.config_set("maxmemory", budget)
    try:
        cache = new_cache(tokenizer, redis_url)
        for i in range(30):
            await cache.get_tokens(chunks(25, doc=f"d{i}", words=120))
            await cache.flush()
        info = admin.info("memory")
        assert info["used_memory"] <= budget * 1.1
        assert admin.info("stats")["evicted_keys"] > 0, (info["used_memory"], budget, cache.stats()["writes"])
        # A fresh replica still gets every chunk right: from Redis or by tokenizing the evicted ones.
        other = new_cache(tokenizer, redis_url)
        cs = chunks(25, doc="d0", words=120) + chunks(25, doc="d29", words=120)
        res = await other.get_tokens(cs)
        assert res.token_ids == tokenizer.encode_batch([c.text for c in cs])
        assert res.hits_by_tier.get("redis", 0) > 0
        await cache.close()
        await other.close()
    finally:
        admin.config_set("maxmemory", 0)
        admin.close()


async def test_redis_stopped_mid_run_then_restarted(redis_server, redis_url, tokenizer):
    cs = chunks(5)
    warm = new_cache(tokenizer, redis_url)
    await warm.get_tokens(cs)
    await warm.flush()

    cache = new_cache(tokenizer, redis_url)
    redis_server.stop()
    t0 = time.perf_counter()
    for i in range(20):  # fresh chunks each time: L0 cannot hide the Redis outage
        res = await cache.get_tokens(chunks(5, doc=f"down{i}"))
        assert res.misses == 5
    elapsed = time.perf_counter() - t0
    assert elapsed < 3.0, elapsed  # breaker open: calls skipped, not each waiting for a timeout
    stats = cache.stats()["redis"]
    assert stats["errors"] >= 1 and stats["breaker"] in ("open", "half_open")

    redis_server.start()
    await asyncio.sleep(0.4)  # past the breaker cooldown
    await cache.get_tokens(chunks(5, doc="after"))  # probe closes the breaker, write-through lands
    await cache.flush()
    assert cache.stats()["redis"]["breaker"] == "closed"
    fresh = new_cache(tokenizer, redis_url)
    res = await fresh.get_tokens(chunks(5, doc="after"))
    assert res.hits_by_tier == {"redis": 5}
    for c in (warm, cache, fresh):
        await c.close()


async def test_redis_absent_at_start_is_picked_up(redis_server, tokenizer):
    redis_server.stop()
    cache = new_cache(tokenizer, redis_server.url)
    assert (await cache.get_tokens(chunks(3, doc="early"))).misses == 3
    redis_server.start()
    await asyncio.sleep(0.4)
    await cache.get_tokens(chunks(3, doc="later"))
    await cache.flush()
    fresh = new_cache(tokenizer, redis_server.url)
    assert (await fresh.get_tokens(chunks(3, doc="later"))).hits_by_tier == {"redis": 3}
    await cache.close()
    await fresh.close()


async def test_raw_corrupted_value_is_detected_and_rebuilt(redis_url, tokenizer):
    cs = chunks(2)
    cache = new_cache(tokenizer, redis_url)
    good = await cache.get_tokens(cs)
    await cache.flush()
    key = ChunkKey.for_chunk(cs[0], tokenizer.fingerprint).storage_key
    admin = redis.Redis.from_url(redis_url)
    raw = bytearray(admin.get(key))
    raw[20] ^= 0x5A
    admin.set(key, bytes(raw))

    fresh = new_cache(tokenizer, redis_url)
    res = await fresh.get_tokens(cs)
    assert res.token_ids == good.token_ids and res.misses == 1
    assert fresh.stats()["redis"]["corruptions"] == 1
    await fresh.flush()
    assert admin.get(key) != bytes(raw)
    again = new_cache(tokenizer, redis_url)
    assert (await again.get_tokens(cs)).hits_by_tier == {"redis": 2}
    admin.close()
    for c in (cache, fresh, again):
        await c.close()


async def test_invalidate_by_document_collection_and_all(redis_url, tokenizer):
    cache = new_cache(tokenizer, redis_url)
    await cache.get_tokens(chunks(4, doc="a") + chunks(4, doc="b"))
    await cache.flush()
    assert (await cache.invalidate("support_kb", "a-2"))["redis"] == 1
    assert (await cache.invalidate("support_kb"))["redis"] == 7
    tier = cache._l2.redis
    await tier.put_many({"tcrag:tok:a*:fp:1": b"1", "tcrag:tok:ab:fp:2": b"2"})
    assert await tier.invalidate("a*") == 1  # glob characters match only themselves
    await cache.invalidate_all()
    admin = redis.Redis.from_url(redis_url)
    admin.set("unrelated", b"x")
    await cache.invalidate_all()
    assert admin.keys("*") == [b"unrelated"]
    admin.close()
    await cache.close()


async def test_slow_redis_is_bounded_by_timeout_and_breaker(redis_url, tokenizer):
    cache = new_cache(tokenizer, redis_url, cooldown_s=5.0)
    await cache.get_tokens(chunks(1, doc="prime"))  # connection pool warm
    admin = redis.Redis.from_url(redis_url)
    admin.client_pause(1500)  # the server holds every client's commands for 1.5 s: "slow", not down
    t0 = time.perf_counter()
    for i in range(10):
        assert (await cache.get_tokens(chunks(2, doc=f"slow{i}"))).misses == 2
    elapsed = time.perf_counter() - t0
    admin.close()
    # Two timeouts of 0.2 s open the breaker; the other lookups skip Redis instantly.
    assert elapsed < 1.2, elapsed
    assert cache.stats()["redis"]["breaker"] == "open"
    await cache.close()
