"""Single-flight per shard: claims on CacheShard (sync, fake clock), the ClaimingShard wait (asyncio),
and two TokenCache instances ("two processes") sharing one shard."""

import asyncio
import pickle
import time

import pytest
from pydantic import ValidationError

from cache import TokenCache, TokenCacheConfig
from cache.breaker import BreakerState
from cache.codec import encode_tokens
from cache.keys import ChunkKey, ChunkRef
from cache.shard import CacheShard, ClaimingShard, ClaimReply, LocalShardClient, ShardClient
from tests.fakes.fake_tokenizer import FakeTokenizer


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeTimer:
    """``ClaimingShard``'s wait on a fake clock: an event not set by the time the other tasks have run
    times out at once, and the clock jumps by the timeout (a lease lapses without sleeping)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    async def __call__(self, event: asyncio.Event, timeout_s: float) -> None:
        await asyncio.sleep(0)  # let the other tasks run first: a put may set the event
        if not event.is_set():
            self.clock.now += timeout_s


def fake_timed_front() -> tuple[ClaimingShard, FakeClock]:
    clock = FakeClock()
    return ClaimingShard(CacheShard(1 << 20, clock=clock), wait=FakeTimer(clock)), clock


async def until(condition, steps: int = 100) -> None:
    """Yield to the event loop until ``condition()`` holds (no wall-clock sleep)."""
    for _ in range(steps):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


def chunks(n=5, doc="doc"):
    return [ChunkRef("support_kb", f"{doc}-{i}", f"{doc}-{i}#0", f"chunk {i} alpha beta {doc}") for i in range(n)]


# ------------------------------------------------------------------ CacheShard (sync)


def test_claim_wait_takeover_and_release_with_a_fake_clock():
    clock = FakeClock()
    shard = CacheShard(1 << 20, clock=clock)
    shard.put_many({"a": b"A"}, {"a": ("c", "d")})

    first = shard.get_or_claim(["a", "b", "c", "b"], lease_s=1.0)
    assert first.found == {"a": b"A"} and first.claimed == ["b", "c"] and first.waiting == {}

    second = shard.get_or_claim(["b", "c"], lease_s=1.0)
    assert second.claimed == [] and second.waiting == {"b": 101.0, "c": 101.0}

    shard.put_many({"b": b"B"}, {"b": ("c", "d")})  # the owner writes b back: claim released
    clock.now += 0.5
    third = shard.get_or_claim(["b", "c"], lease_s=1.0)
    assert third.found == {"b": b"B"} and third.waiting == {"c": 101.0}

    clock.now += 0.6  # c's owner never wrote it back: its claim lapses and the next caller takes over
    fourth = shard.get_or_claim(["c"], lease_s=1.0)
    assert fourth.claimed == ["c"] and fourth.waiting == {}
    stats = shard.stats()
    assert stats["claims"] == 1 and stats["claims_granted"] == 3 and stats["claims_lapsed"] == 1


def test_lapsed_claims_are_pruned_and_clear_drops_claims():
    clock = FakeClock()
    shard = CacheShard(1 << 20, clock=clock)
    shard.get_or_claim([f"k{i}" for i in range(100)], lease_s=1.0)
    assert shard.stats()["claims"] == 100
    clock.now += 2
    shard.get_or_claim(["other"], lease_s=1.0)
    assert shard.stats()["claims"] == 1  # the 100 lapsed ones are gone, not kept forever
    shard.clear()
    assert shard.stats()["claims"] == 0
    assert shard.get_or_claim(["other"], lease_s=1.0).claimed == ["other"]


def test_invalidation_keeps_claims_and_put_after_it_releases():
    clock = FakeClock()
    shard = CacheShard(1 << 20, clock=clock)
    assert shard.get_or_claim(["k"], lease_s=1.0).claimed == ["k"]
    assert shard.invalidate("c") == 0
    assert list(shard.get_or_claim(["k"], lease_s=1.0).waiting) == ["k"]
    shard.put_many({"k": b"v"}, {"k": ("c", "d")})
    assert shard.get_or_claim(["k"], lease_s=1.0).found == {"k": b"v"}


def test_claim_reply_pickles():  # it crosses the Serve RPC
    reply = ClaimReply({"a": b"A"}, ["b"], {"c": 1.5})
    assert pickle.loads(pickle.dumps(reply)) == reply


# ------------------------------------------------------------------ ClaimingShard (asyncio wait)


async def test_put_wakes_a_waiter():
    front = ClaimingShard(CacheShard(1 << 20))
    assert (await front.get_or_claim(["k", "j"], 10.0, 0.0)).claimed == ["k", "j"]
    waiter = asyncio.create_task(front.get_or_claim(["k", "j"], 10.0, 5.0))
    await until(lambda: "j" in front._waiters)
    assert not waiter.done()
    front.put_many({"k": b"v"}, {"k": ("c", "d")})
    await until(lambda: "j" in front._waiters and "k" not in front._waiters)  # woken, asked again, waits on j
    assert not waiter.done()  # still waiting for j
    t0 = time.monotonic()
    front.put_many({"j": b"w"}, {"j": ("c", "d")})
    reply = await asyncio.wait_for(waiter, 1.0)
    assert time.monotonic() - t0 < 0.5
    assert reply.found == {"k": b"v", "j": b"w"} and reply.claimed == [] and reply.waiting == {}
    assert front.stats()["claim_waits"] == 1 and front._waiters == {}


async def test_lapsed_lease_hands_the_claim_to_the_waiter():
    front, clock = fake_timed_front()
    assert (await front.get_or_claim(["k"], 0.05, 0.0)).claimed == ["k"]  # the owner then dies
    t0 = clock()
    reply = await front.get_or_claim(["k"], 0.05, 2.0)
    assert reply.claimed == ["k"] and reply.waiting == {}
    assert 0.04 <= clock() - t0 < 1.0
    assert clock() - t0 == pytest.approx(0.05)  # waited exactly until the lease lapsed
    assert front.shard.stats()["claims_lapsed"] == 1


async def test_wait_is_bounded_by_wait_s():
    front, clock = fake_timed_front()
    await front.get_or_claim(["k"], 60.0, 0.0)
    t0 = clock()
    reply = await front.get_or_claim(["k"], 60.0, 0.05)
    assert 0.04 <= clock() - t0 < 1.0
    assert clock() - t0 == pytest.approx(0.05)  # the wait budget, not the 60 s lease
    assert reply.claimed == [] and reply.found == {} and list(reply.waiting) == ["k"]
    assert front.stats()["claim_waits_timed_out"] == 1 and front._waiters == {}


async def test_clear_wakes_waiters_who_then_claim_and_invalidate_does_not_deadlock():
    front = ClaimingShard(CacheShard(1 << 20))
    await front.get_or_claim(["k", "j"], 60.0, 0.0)
    waiter = asyncio.create_task(front.get_or_claim(["k"], 60.0, 5.0))
    await until(lambda: "k" in front._waiters)
    front.shard.invalidate("c")  # claims are not entries: nothing to drop, the waiter keeps waiting
    for _ in range(10):
        await asyncio.sleep(0)
    assert not waiter.done()
    front.clear()
    reply = await asyncio.wait_for(waiter, 1.0)
    assert reply.claimed == ["k"]


async def test_cancelled_waiter_leaves_no_registration():
    front = ClaimingShard(CacheShard(1 << 20))
    await front.get_or_claim(["k"], 60.0, 0.0)
    waiter = asyncio.create_task(front.get_or_claim(["k"], 60.0, 5.0))
    await until(lambda: "k" in front._waiters)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert front._waiters == {}


# ------------------------------------------------------------------ TokenCache: two "processes", one shard


def two_caches(tokenizer, **cfg):
    client = LocalShardClient(CacheShard(1 << 20), "s0")
    config = TokenCacheConfig(shard_timeout_s=5.0, shard_claim_wait_s=2.0, **cfg)
    return TokenCache(tokenizer, [client], None, config, agent="a"), TokenCache(
        tokenizer, [client], None, config, agent="b"
    ), client


async def test_concurrent_misses_from_two_caches_tokenize_each_chunk_once():
    tok = FakeTokenizer(delay_s=0.05)
    a, b, client = two_caches(tok)
    cs = chunks(6)
    lookups = [a.get_tokens(cs), b.get_tokens(cs)] * 10 + [a.get_tokens(cs[:4]), b.get_tokens(cs[2:])] * 5
    results = await asyncio.gather(*lookups)
    expected = [tok.encode(c.text) for c in cs]
    assert tok.texts_encoded == 6
    for res in results[:20]:
        assert res.token_ids == expected
    assert results[20].token_ids == expected[:4] and results[21].token_ids == expected[2:]
    sa, sb = a.stats()["shards"]["s0"], b.stats()["shards"]["s0"]
    assert sa["claimed"] + sb["claimed"] == 6 and sa["claim_wait_timeouts"] + sb["claim_wait_timeouts"] == 0
    assert (await client.stats())["claim_waits"] >= 1


class Delayed(ShardClient):
    """The same shard reached with a delay before each lookup (to order two replicas' calls)."""

    def __init__(self, inner: LocalShardClient, delay_s: float) -> None:
        self.inner = inner
        self.delay_s = delay_s

    @property
    def shard_id(self):
        return self.inner.shard_id

    async def get_many(self, keys):
        return await self.inner.get_many(keys)

    async def get_or_claim(self, keys, lease_s, wait_s):
        await asyncio.sleep(self.delay_s)
        return await self.inner.get_or_claim(keys, lease_s, wait_s)

    async def put_many(self, items, owners):
        await self.inner.put_many(items, owners)

    async def invalidate(self, collection, doc_id=None):
        return await self.inner.invalidate(collection, doc_id)

    async def clear(self):
        await self.inner.clear()


async def test_replicas_holding_each_others_keys_do_not_wait_on_each_other():
    """A claims shard s0's keys first, B claims s1's first; each then finds the other's keys claimed.
    Each computes and writes back its own claims before waiting, so nobody waits out shard_claim_wait_s."""
    tok = FakeTokenizer(delay_s=0.05)
    s0, s1 = LocalShardClient(CacheShard(1 << 20), "s0"), LocalShardClient(CacheShard(1 << 20), "s1")
    cfg = TokenCacheConfig(shard_timeout_s=5.0, shard_claim_wait_s=3.0)
    a = TokenCache(tok, [s0, Delayed(s1, 0.03)], None, cfg, agent="a")
    b = TokenCache(tok, [Delayed(s0, 0.03), s1], None, cfg, agent="b")
    cs = chunks(10)
    keys = [ChunkKey.for_chunk(c, tok.fingerprint).storage_key for c in cs]
    assert {a._l1.ring.lookup(k) for k in keys} == {"s0", "s1"}
    t0 = time.monotonic()
    ra, rb = await asyncio.gather(a.get_tokens(cs), b.get_tokens(cs))
    assert time.monotonic() - t0 < 2.0
    assert ra.token_ids == rb.token_ids == [tok.encode(c.text) for c in cs]
    assert tok.texts_encoded == 10
    sa, sb = a.stats()["shards"], b.stats()["shards"]
    assert sa["s0"]["claimed"] > 0 and sb["s1"]["claimed"] > 0
    assert ra.hits_by_tier.get("shard", 0) > 0 and rb.hits_by_tier.get("shard", 0) > 0


async def test_owner_that_fails_lets_its_claim_lapse_and_the_other_cache_takes_over():
    class Broken(FakeTokenizer):
        def encode_batch(self, texts):
            raise RuntimeError("tokenizer broke")

    clock = FakeClock()
    client = LocalShardClient(CacheShard(1 << 20, clock=clock), "s0", wait=FakeTimer(clock))
    cfg = TokenCacheConfig(shard_timeout_s=5.0, shard_claim_wait_s=2.0, shard_claim_lease_s=0.1)
    broken = TokenCache(Broken(), [client], None, cfg)
    tok = FakeTokenizer()
    healthy = TokenCache(tok, [client], None, cfg)
    cs = chunks(2)
    with pytest.raises(RuntimeError):
        await broken.get_tokens(cs)  # claimed both keys on the shard, never writes them
    t0 = clock()
    res = await healthy.get_tokens(cs)
    assert clock() - t0 >= 0.05  # waited for the lease, not for the 2 s wait bound
    assert clock() - t0 == pytest.approx(0.1)  # exactly the 0.1 s lease, on the shard's clock
    assert res.misses == 2 and tok.texts_encoded == 2 and healthy.stats()["shards"]["s0"]["claimed"] == 2


async def test_shard_without_claim_support_falls_back_to_get_many():
    class PlainShard(ShardClient):
        def __init__(self) -> None:
            self.shard = CacheShard(1 << 20)

        @property
        def shard_id(self):
            return "plain"

        async def get_many(self, keys):
            return self.shard.get_many(keys)

        async def put_many(self, items, owners):
            self.shard.put_many(items, owners)

        async def invalidate(self, collection, doc_id=None):
            return self.shard.invalidate(collection, doc_id)

        async def clear(self):
            self.shard.clear()

    tok = FakeTokenizer(delay_s=0.02)
    plain = PlainShard()
    a = TokenCache(tok, [plain], None, TokenCacheConfig())
    b = TokenCache(tok, [plain], None, TokenCacheConfig())
    cs = chunks(3)
    await asyncio.gather(a.get_tokens(cs), b.get_tokens(cs))
    assert tok.texts_encoded == 6  # per process only: both tokenized, nothing claimed, nothing hangs
    await a.flush()
    await b.flush()
    c = TokenCache(tok, [plain], None, TokenCacheConfig())
    assert (await c.get_tokens(cs)).hits_by_tier == {"shard": 3}


async def test_claimed_keys_are_written_back_even_when_the_breaker_would_skip_the_shard():
    tok = FakeTokenizer()
    client = LocalShardClient(CacheShard(1 << 20), "s0")
    cache = TokenCache(tok, [client], None, TokenCacheConfig(shard_failure_threshold=1, shard_cooldown_s=60))
    key_a, key_b = (ChunkKey.for_chunk(c, tok.fingerprint).storage_key for c in chunks(2))
    cache._l1.breakers["s0"].record_failure()
    assert cache._l1.breakers["s0"].state is BreakerState.OPEN
    owners = {key_a: ("support_kb", "doc-0"), key_b: ("support_kb", "doc-1")}
    await cache._writer.write({cache._l1: {key_b: encode_tokens([2])}}, owners, claimed=set())
    assert client.shard.lru.get(key_b) is None  # an open breaker skips plain write-backs
    await cache._writer.write({cache._l1: {key_a: encode_tokens([1])}}, owners, claimed={key_a})
    assert client.shard.lru.get(key_a) == encode_tokens([1])


async def test_zero_claim_wait_computes_keys_claimed_elsewhere_instead_of_hanging():
    """shard_claim_wait_s=0: the second round does not wait, so keys another replica still holds are
    computed here (they used to be deferred again and never resolved)."""
    tok = FakeTokenizer(delay_s=0.2)
    shard = LocalShardClient(CacheShard(1 << 20), "s0")
    cfg = TokenCacheConfig(shard_claim_wait_s=0.0)
    a, b = TokenCache(tok, [shard], None, cfg), TokenCache(tok, [shard], None, cfg)
    cs = chunks(2)

    async def after_a_claimed():
        await asyncio.sleep(0.05)
        return await b.get_tokens(cs)

    ra, rb = await asyncio.wait_for(asyncio.gather(a.get_tokens(cs), after_a_claimed()), 5)
    assert ra.token_ids == rb.token_ids == [tok.encode(c.text) for c in cs]
    assert rb.misses == 2 and b.stats()["shards"]["s0"]["claimed"] == 0


def test_claim_config_validation_and_default_wait():
    assert TokenCacheConfig().claim_wait_s == 0.1
    assert TokenCacheConfig(shard_timeout_s=0.05).claim_wait_s == 0.025
    assert TokenCacheConfig(shard_claim_wait_s=0.2).claim_wait_s == 0.2
    with pytest.raises(ValidationError):
        TokenCacheConfig(shard_claim_wait_s=0.25)  # not below shard_timeout_s (0.25)
    with pytest.raises(ValidationError):
        TokenCacheConfig(shard_claim_lease_s=0)
