"""Shared fixtures for integration tests: a real redis-server the tests own (start, stop, restart)."""

from __future__ import annotations

import shutil

import pytest

from testbed.redis_server import RedisServer, free_port


@pytest.fixture(scope="session")
def redis_server():
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    """The URL of a running, empty test Redis (restarted if a test left it stopped)."""
    if not redis_server.running:
        redis_server.start()
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    client.config_set("maxmemory", 0)
    client.close()
    return redis_server.url
