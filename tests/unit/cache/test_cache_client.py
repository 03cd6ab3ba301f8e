import asyncio

import pytest
from pydantic import ValidationError

from cache import TokenCache, TokenCacheConfig
from cache.breaker import CircuitBreaker
from cache.codec import encode_tokens
from cache.keys import ChunkKey, ChunkRef
from cache.redis_tier import RedisTier
from cache.shard import CacheShard, LocalShardClient
from routing.hashring import ConsistentHashRing
from tests.fakes.fake_redis_client import FakeRedisClient
from tests.fakes.fake_shard_client import FailingShardClient, RecordingShardClient
from tests.fakes.fake_tokenizer import FakeTokenizer


class RecordingClaimClient(RecordingShardClient):
    """Records the keys of each shard lookup; TokenCache looks up through get_or_claim."""

    async def get_or_claim(self, keys, lease_s, wait_s):
        self.get_calls.append(list(keys))
        return await super().get_or_claim(keys, lease_s, wait_s)


def chunks(n=5, collection="support_kb", doc="doc"):
    return [ChunkRef(collection, f"{doc}-{i}", f"{doc}-{i}#0", f"chunk {i} alpha beta gamma {doc}") for i in range(n)]


def make_cache(shards=2, redis=True, tokenizer=None, **cfg):
    tok = tokenizer or FakeTokenizer()
    clients = [RecordingClaimClient(CacheShard(1 << 20), shard_id=f"s{i}") for i in range(shards)]
    fake = FakeRedisClient()
    tier = RedisTier(fake, ttl_s=60, timeout_s=0.5, breaker=CircuitBreaker(3, 5)) if redis else None
    cache = TokenCache(tok, clients, tier, TokenCacheConfig(**cfg), agent="support")
    return cache, tok, clients, fake


def fresh_client(cache, tok, clients, fake):
    """A second agent replica: empty L0, same shards and Redis."""
    tier = RedisTier(fake, ttl_s=60, timeout_s=0.5) if fake is not None else None
    return TokenCache(tok, clients, tier, cache.config, agent="other")


def test_config_forbids_extra_and_has_descriptions():
    with pytest.raises(ValidationError):
        TokenCacheConfig(max_cache_size_mb=10, bogus=1)
    assert all(f.description for f in TokenCacheConfig.model_fields.values())


async def test_tier_order_and_counts():
    cache, tok, clients, fake = make_cache()
    cs = chunks()
    first = await cache.get_tokens(cs)
    assert first.misses == 5 and first.hits == 0 and tok.batch_calls == 1
    assert first.token_ids == [tok.encode(c.text) for c in cs]
    await cache.flush()

    second = await cache.get_tokens(cs)
    assert second.hits == 5 and second.hits_by_tier == {"l0": 5}
    assert second.token_ids == first.token_ids

    other = fresh_client(cache, tok, clients, fake)
    third = await other.get_tokens(cs)
    assert third.hits_by_tier == {"shard": 5} and tok.batch_calls == 1
    # Each key went to exactly the shard that owns it on the ring.
    ring = ConsistentHashRing(["s0", "s1"])
    assert all(client.get_calls for client in clients)
    for client in clients:
        for batch in client.get_calls:
            assert all(ring.lookup(k) == client.shard_id for k in batch)

    for client in clients:
        client.shard.clear()
    fourth = await fresh_client(cache, tok, clients, fake).get_tokens(cs)
    assert fourth.hits_by_tier == {"redis": 5} and tok.batch_calls == 1

    stats = cache.stats()
    assert stats["overall"]["cache_hits"] == 5 and stats["overall"]["cache_misses"] == 5
    assert stats["overall"]["hit_rate"] == 0.5
    assert stats["l0"]["entries"] == 5 and stats["tokenizer"]["texts"] == 5
    ts = cache.token_cache_stats()
    assert ts.total_tokens_cached == sum(len(t) for t in first.token_ids)
    assert 0 < ts.cache_size_mb < 1


async def test_duplicate_chunks_in_one_request():
    cache, tok, *_ = make_cache()
    c = chunks(1)[0]
    res = await cache.get_tokens([c, c, c])
    assert res.misses == 3 and tok.texts_encoded == 1 and len(res.token_ids) == 3


async def test_single_flight_100_concurrent_misses_tokenize_once():
    tok = FakeTokenizer(delay_s=0.05)
    cache, tok, *_ = make_cache(tokenizer=tok)
    c = chunks(1)
    results = await asyncio.gather(*(cache.get_tokens(c) for _ in range(100)))
    assert tok.batch_calls == 1 and tok.texts_encoded == 1
    assert all(r.token_ids == results[0].token_ids for r in results)


async def test_overlapping_batches_tokenize_each_key_once():
    tok = FakeTokenizer(delay_s=0.02)
    cache, tok, *_ = make_cache(tokenizer=tok)
    cs = chunks(10)
    await asyncio.gather(cache.get_tokens(cs[:6]), cache.get_tokens(cs[4:]), cache.get_tokens(cs))
    assert tok.texts_encoded == 10


async def test_failing_and_hanging_shard_fall_through():
    tok = FakeTokenizer()
    dead = FailingShardClient("s1")
    hung = FailingShardClient("s2", hang=True)
    good = LocalShardClient(CacheShard(1 << 20), "s0")
    fake = FakeRedisClient()
    cfg = TokenCacheConfig(shard_timeout_s=0.05, write_timeout_s=0.05)
    cache = TokenCache(tok, [good, dead, hung], RedisTier(fake, timeout_s=0.5), cfg)
    cs = chunks(30)
    res = await cache.get_tokens(cs)
    assert res.misses == 30
    await cache.flush()
    # A new replica still gets everything, from the live shard or from Redis; nothing raises.
    other = TokenCache(tok, [good, dead, hung], RedisTier(fake, timeout_s=0.5), cfg)
    res2 = await other.get_tokens(cs)
    assert res2.misses == 0 and res2.hits_by_tier.get("redis", 0) > 0 and res2.hits_by_tier.get("shard", 0) > 0
    shard_stats = other.stats()["shards"]
    assert shard_stats["s1"]["errors"] >= 1 and shard_stats["s2"]["errors"] >= 1


async def test_dead_shard_without_redis_is_answered_by_tokenizing():
    tok = FakeTokenizer()
    cache = TokenCache(tok, [FailingShardClient("s0")], None, TokenCacheConfig())
    res = await cache.get_tokens(chunks(3))
    assert res.misses == 3 and res.token_ids == [tok.encode(c.text) for c in chunks(3)]


async def test_corrupted_shard_value_is_detected_counted_and_rewritten():
    cache, tok, clients, fake = make_cache(shards=1, redis=False)
    cs = chunks(2)
    good = await cache.get_tokens(cs)
    await cache.flush()
    key = ChunkKey.for_chunk(cs[0], tok.fingerprint).storage_key
    shard = clients[0].shard
    raw = bytearray(shard.lru.get(key))
    raw[-1] ^= 0xFF
    shard.lru.put(key, bytes(raw))

    other = fresh_client(cache, tok, clients, None)
    res = await other.get_tokens(cs)
    assert res.token_ids == good.token_ids
    assert res.misses == 1 and res.hits_by_tier == {"shard": 1}
    assert other.stats()["shards"]["s0"]["corruptions"] == 1
    await other.flush()
    assert shard.lru.get(key) == encode_tokens(good.token_ids[0])  # rewritten


async def test_corrupted_redis_value_is_rewritten():
    cache, tok, clients, fake = make_cache(shards=0)
    cs = chunks(1)
    good = await cache.get_tokens(cs)
    await cache.flush()
    key = ChunkKey.for_chunk(cs[0], tok.fingerprint).storage_key
    fake.data[key] = b'{"token_ids": [1, 2]}'
    other = fresh_client(cache, tok, clients, fake)
    res = await other.get_tokens(cs)
    assert res.misses == 1 and res.token_ids == good.token_ids
    assert other.stats()["redis"]["corruptions"] == 1
    await other.flush()
    assert fake.data[key] == encode_tokens(good.token_ids[0])


async def test_invalidation_reaches_every_tier():
    cache, tok, clients, fake = make_cache()
    a, b = chunks(3, doc="a"), chunks(3, doc="b")
    await cache.get_tokens(a + b)
    await cache.flush()
    removed = await cache.invalidate("support_kb", "a-1")
    assert removed == {"l0": 1, "shards": 1, "redis": 1}
    res = await cache.get_tokens(a + b)
    assert res.misses == 1
    await cache.flush()
    removed = await cache.invalidate("support_kb")
    assert removed == {"l0": 6, "shards": 6, "redis": 6}
    assert not [k for k in fake.data if k.startswith("tcrag:")]
    await cache.get_tokens(a)
    await cache.flush()
    await cache.invalidate_all()
    assert fake.data == {} and all(c.shard.lru.entries == 0 for c in clients)
    assert (await cache.get_tokens(a)).misses == 3


async def test_warmup_with_progress():
    cache, tok, clients, fake = make_cache()
    seen = []
    cs = chunks(10)
    assert await cache.warmup(cs, batch_size=4, progress=lambda d, t: seen.append((d, t))) == 10
    assert seen == [(4, 10), (8, 10), (10, 10)]
    assert sum(c.shard.lru.entries for c in clients) == 10
    assert len([k for k in fake.data if k.startswith("tcrag:tok:")]) == 10
    assert await cache.warmup(cs) == 0


async def test_l0_budget_holds():
    cache, tok, *_ = make_cache(max_cache_size_mb=0.01)
    for i in range(50):
        await cache.get_tokens(chunks(5, doc=f"d{i}"))
    assert cache.stats()["l0"]["size_bytes"] <= 0.01 * 1024 * 1024


async def test_tokenizer_error_reaches_caller_and_releases_keys():
    class Broken(FakeTokenizer):
        def encode_batch(self, texts):
            raise RuntimeError("tokenizer broke")

    cache = TokenCache(Broken(), [], None, TokenCacheConfig())
    with pytest.raises(RuntimeError):
        await cache.get_tokens(chunks(2))
    assert len(cache._lookup.flight) == 0


async def test_dead_shard_is_skipped_by_its_breaker():
    tok = FakeTokenizer()
    dead = FailingShardClient("s0", hang=True)
    cfg = TokenCacheConfig(shard_timeout_s=0.02, shard_failure_threshold=2, shard_cooldown_s=60)
    cache = TokenCache(tok, [dead], None, cfg)
    for i in range(10):
        assert (await cache.get_tokens(chunks(2, doc=f"d{i}"))).misses == 2
    assert dead.calls == 3  # 2 reads + 1 write-through; after the 2nd read timeout it is skipped
    shard = cache.stats()["shards"]["s0"]
    assert shard["breaker"] == "open" and shard["skipped_calls"] == 8


def test_redis_tier_from_config():
    from cache.config import redis_tier_from_config

    assert redis_tier_from_config(TokenCacheConfig()) is None
    tier = redis_tier_from_config(TokenCacheConfig(redis_url="redis://127.0.0.1:1/0", redis_ttl_s=5))
    assert isinstance(tier, RedisTier) and tier.ttl_s == 5  # lazily connecting: no server needed


async def test_callers_own_their_lists():
    tok = FakeTokenizer(delay_s=0.01)
    cache, tok, *_ = make_cache(tokenizer=tok)
    c = chunks(1)
    a, b = await asyncio.gather(cache.get_tokens(c + c), cache.get_tokens(c))
    expected = tok.encode(c[0].text)
    a.token_ids[0].append(-1)
    assert a.token_ids[1] == expected and b.token_ids[0] == expected
    assert (await cache.get_tokens(c)).token_ids[0] == expected


async def test_l0_holds_compact_arrays_charged_at_real_size_and_hands_out_fresh_lists():
    import sys
    from array import array

    tok = FakeTokenizer(id_offset=70_000)  # wide vocab: IDs need 4 bytes
    cache = TokenCache(tok, [], None, TokenCacheConfig())
    cs = chunks(3)
    first = await cache.get_tokens(cs)
    lru = cache._l0.lru
    held = list(lru.values())
    assert all(isinstance(v, array) and v.itemsize == 4 for v in held)
    assert lru.size_bytes == sum(lru.entry_size(k, lru.get(k, touch=False)) for k in lru.keys())
    assert lru.entry_size("k", held[0]) == sys.getsizeof(held[0]) + 1 + lru.entry_overhead_bytes
    hit = await cache.get_tokens(cs + cs[:1])
    assert hit.hits_by_tier == {"l0": 4} and hit.token_ids == first.token_ids + first.token_ids[:1]
    hit.token_ids[0].append(-1)  # callers own their lists: the cached IDs are untouched
    assert hit.token_ids[3] == first.token_ids[0] != hit.token_ids[0]
    assert (await cache.get_tokens(cs[:1])).token_ids[0] == tok.encode(cs[0].text)
    assert cache.token_cache_stats().total_tokens_cached == sum(len(t) for t in first.token_ids)
