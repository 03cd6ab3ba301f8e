"""RedisTier logic against an in-memory fake client (the real server is in tests/integration)."""

from cache.breaker import BreakerState, CircuitBreaker
from cache.redis_tier import RedisTier
from tests.fakes.fake_redis_client import FakeRedisClient


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def make(clock=None):
    fake = FakeRedisClient()
    breaker = CircuitBreaker(failure_threshold=2, cooldown_s=5, clock=clock or FakeClock())
    return fake, RedisTier(fake, ttl_s=60, timeout_s=0.5, breaker=breaker)


async def test_get_put_and_invalidate():
    fake, tier = make()
    a, b, c = "tcrag:tok:col:fp:a", "tcrag:tok:col:fp:b", "tcrag:tok:other:fp:c"
    assert await tier.put_many({a: b"1", b: b"2", c: b"3"}, owners={a: ("col", "d1"), b: ("col", "d2"), c: ("other", "d1")})
    assert await tier.get_many([a, b, "tcrag:tok:col:fp:zz"]) == {a: b"1", b: b"2"}
    assert fake.mget_calls == 1
    assert await tier.invalidate("col", "d1") == 1
    assert await tier.get_many([a, b]) == {b: b"2"}
    assert await tier.invalidate("col") == 1
    assert await tier.get_many([b, c]) == {c: b"3"}
    await tier.invalidate_all()
    assert fake.data == {}


async def test_failures_never_raise_and_open_the_breaker():
    clock = FakeClock()
    fake, tier = make(clock)
    fake.down = True
    assert await tier.get_many(["k"]) == {}
    assert await tier.put_many({"k": b"v"}) is False
    assert tier.breaker.state is BreakerState.OPEN
    calls_before = fake.mget_calls
    assert await tier.get_many(["k"]) == {}  # skipped instantly
    assert tier.breaker.rejected == 1
    assert await tier.invalidate("col") == 0
    fake.down = False
    clock.now += 6
    assert await tier.put_many({"k": b"v"})  # half-open probe succeeds and closes
    assert tier.breaker.state is BreakerState.CLOSED
    assert await tier.get_many(["k"]) == {"k": b"v"}
    assert fake.mget_calls == calls_before + 1
    stats = tier.stats_dict()
    assert stats["errors"] >= 2 and stats["breaker"] == "closed"



async def test_redis_py_socket_timeout_counts_as_slowness_not_failure():
    """redis-py raises its own TimeoutError when a socket read stalls (a CPU-starved machine); that is the
    same slowness as our per-call budget expiring, so it is counted with the timeouts, not as a failure."""
    from redis.exceptions import TimeoutError as RedisTimeoutError

    fake, tier = make()

    async def stalled_mget(keys):
        raise RedisTimeoutError("Timeout reading from socket")

    fake.mget = stalled_mget
    assert await tier.get_many(["k"]) == {}
    stats = tier.stats_dict()
    assert stats["errors"] == 1 and stats["timeouts"] == 1 and stats["misses"] == 1


async def test_connection_error_is_a_failure_not_a_timeout():
    from redis.exceptions import ConnectionError as RedisConnectionError

    fake, tier = make()

    async def refused(keys):
        raise RedisConnectionError("Connection refused")

    fake.mget = refused
    assert await tier.get_many(["k"]) == {}
    stats = tier.stats_dict()
    assert stats["errors"] == 1 and stats["timeouts"] == 0
