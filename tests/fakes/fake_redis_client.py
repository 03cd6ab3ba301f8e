"""An in-memory stand-in for redis.asyncio.Redis covering the calls RedisTier makes (no TTL)."""

from __future__ import annotations

import fnmatch


class FakeRedisClient:
    def __init__(self) -> None:
        self.data: dict[str, object] = {}
        self.down = False
        self.mget_calls = 0

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("fake redis is down")

    async def mget(self, keys):
        self._check()
        self.mget_calls += 1
        return [self.data.get(k) if isinstance(self.data.get(k), bytes) else None for k in keys]

    def pipeline(self, transaction: bool = False):
        return _FakePipeline(self)

    async def scan(self, cursor=0, match="*", count=1000):
        self._check()
        pattern = match.replace("\\", "")
        return 0, [k for k in list(self.data) if fnmatch.fnmatchcase(k, pattern)]

    async def unlink(self, *keys):
        self._check()
        removed = 0
        for k in keys:
            k = k.decode() if isinstance(k, bytes) else k
            if self.data.pop(k, None) is not None:
                removed += 1
        return removed

    async def smembers(self, key):
        self._check()
        return {k.encode() for k in self.data.get(key, set())}

    async def aclose(self):
        pass


class _FakePipeline:
    def __init__(self, client: FakeRedisClient) -> None:
        self._client = client
        self._ops: list = []

    def set(self, key, value, ex=None):
        self._ops.append(("set", key, value))

    def sadd(self, key, member):
        self._ops.append(("sadd", key, member))

    def expire(self, key, ex):
        pass

    async def execute(self):
        self._client._check()
        for op, key, value in self._ops:
            if op == "set":
                self._client.data[key] = value
            else:
                self._client.data.setdefault(key, set()).add(value)
        return [True] * len(self._ops)
