"""ShardClient test doubles: a failing shard and a hanging one, plus a call-recording wrapper."""

from __future__ import annotations

import asyncio

from cache.exceptions import ShardUnavailableError
from cache.shard import LocalShardClient, ShardClient


class FailingShardClient(ShardClient):
    """Every call raises ShardUnavailableError, like a dead shard actor (or hangs when ``hang``)."""

    def __init__(self, shard_id: str, hang: bool = False) -> None:
        self._shard_id = shard_id
        self.hang = hang
        self.calls = 0

    @property
    def shard_id(self) -> str:
        return self._shard_id

    async def _fail(self):
        self.calls += 1
        if self.hang:
            await asyncio.sleep(3600)
        raise ShardUnavailableError(f"{self._shard_id} is down")

    async def get_many(self, keys):
        return await self._fail()

    async def put_many(self, items, owners):
        return await self._fail()

    async def invalidate(self, collection, doc_id=None):
        return await self._fail()

    async def clear(self):
        return await self._fail()


class RecordingShardClient(LocalShardClient):
    """A LocalShardClient that records which keys each get_many received."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.get_calls: list[list[str]] = []

    async def get_many(self, keys):
        self.get_calls.append(list(keys))
        return await super().get_many(keys)
