"""RedisTier.from_url: which client a URL gets, and the parsing of redis+cluster:// URLs (no server)."""

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from cache.redis_tier import RedisTier, is_cluster_url, parse_cluster_url


def test_plain_urls_get_the_single_server_client():
    for url in ("redis://127.0.0.1:6379/0", "rediss://h:6380/2", "unix:///tmp/redis.sock"):
        tier = RedisTier.from_url(url)
        assert isinstance(tier.client, Redis) and not tier.is_cluster, url


def test_cluster_urls_get_the_cluster_client_with_every_startup_node():
    tier = RedisTier.from_url("redis+cluster://10.0.0.1:7000,10.0.0.2:7001,10.0.0.3", timeout_s=0.2,
                              max_connections=8)
    client = tier.client
    assert isinstance(client, RedisCluster) and tier.is_cluster
    assert sorted(client.nodes_manager.startup_nodes) == ["10.0.0.1:7000", "10.0.0.2:7001", "10.0.0.3:6379"]
    kwargs = client.get_connection_kwargs()
    assert kwargs["socket_timeout"] == 1.0  # the same backstop as a single server
    assert kwargs["decode_responses"] is False
    assert client.retry.get_retries() == 1


def test_rediss_cluster_url_uses_tls():
    from redis.asyncio.connection import SSLConnection

    tier = RedisTier.from_url("rediss+cluster://user:p%40ss@h1:7000")
    kwargs = tier.client.get_connection_kwargs()
    assert kwargs["connection_class"] is SSLConnection
    assert kwargs["username"] == "user" and kwargs["password"] == "p@ss"


def test_is_cluster_url():
    assert is_cluster_url("redis+cluster://h:1") and is_cluster_url("REDISS+CLUSTER://h:1")
    assert not is_cluster_url("redis://h:1") and not is_cluster_url("rediss://h:1")


def test_parse_cluster_url():
    assert parse_cluster_url("redis+cluster://h1:7000,h2:7001/0") == {
        "nodes": [("h1", 7000), ("h2", 7001)], "username": None, "password": None, "ssl": False}
    assert parse_cluster_url("redis+cluster://:secret@[::1]:7000, h2")["nodes"] == [("::1", 7000), ("h2", 6379)]
    assert parse_cluster_url("redis+cluster://:secret@h:1")["password"] == "secret"


@pytest.mark.parametrize("url", [
    "redis://h:1",                      # not a cluster URL
    "redis+cluster://h:1/3",            # a cluster has only database 0
    "redis+cluster://h:port",           # bad port
    "redis+cluster://",                 # no host
    "redis+cluster://h:1?ssl=true",     # options are not silently dropped
])
def test_parse_cluster_url_rejects(url):
    with pytest.raises(ValueError):
        parse_cluster_url(url)



class SlowTopologyClient:
    """Stands in for a RedisCluster whose slot map takes longer to load than a read's budget."""

    def __init__(self, load_s):
        self._initialize = True  # redis-py's "slot map needed" flag
        self.load_s = load_s
        self.loads = 0
        self.data = {"k": b"v"}

    async def initialize(self):
        import asyncio

        self.loads += 1
        await asyncio.sleep(self.load_s)
        self._initialize = False
        return self

    async def mget_nonatomic(self, keys):
        return [self.data.get(k) for k in keys]


async def test_a_slot_map_load_outlives_the_read_that_started_it():
    """The first read times out (a miss) while the map loads; the load goes on, and the next read hits
    without loading again."""
    import asyncio

    from cache.breaker import CircuitBreaker

    client = SlowTopologyClient(load_s=0.15)
    tier = RedisTier(client, timeout_s=0.05, breaker=CircuitBreaker(failure_threshold=5))
    tier.is_cluster = True
    assert await tier.get_many(["k"]) == {}
    assert tier.timeouts == 1
    await asyncio.sleep(0.2)
    assert await tier.get_many(["k"]) == {"k": b"v"}
    assert client.loads == 1
