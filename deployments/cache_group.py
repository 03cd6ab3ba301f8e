"""The token cache's L1 tier as Ray Serve deployments: one deployment per shard.

Thin on purpose: ``TokenCacheShardServer`` only forwards to a plain ``cache.shard.CacheShard`` (through
``cache.shard.ClaimingShard``, which holds the cross-process single-flight waits on this replica's loop) and
``ServeShardClient`` only adapts a ``DeploymentHandle`` to ``cache.shard.ShardClient`` (timeout, error
translation). The app builder binds N shards as separate deployments named ``token_cache_shard_{i}``,
so a key is sent to the exact shard that owns it on the hash ring (the ring is built over deployment
names, identical in every agent replica). Serve restarts a dead shard replica; until it is back its
calls fail fast (``ShardUnavailableError``) and ``TokenCache`` answers from Redis or by tokenizing.
"""

from __future__ import annotations

import asyncio
import logging

from ray import serve
from ray.serve.handle import DeploymentHandle

from cache.exceptions import ShardUnavailableError
from cache.shard import CacheShard, ClaimingShard, ClaimReply, ShardClient

__all__ = ["TokenCacheShardServer", "ServeShardClient", "shard_deployment_name"]

logger = logging.getLogger(__name__)


def shard_deployment_name(index: int) -> str:
    """Deployment name of shard ``index``; also its id on the hash ring."""
    return f"token_cache_shard_{index}"


@serve.deployment(
    num_replicas=1,  # a shard IS its state: one replica, restarted by Serve if it dies
    ray_actor_options={"num_cpus": 0.05},
    max_ongoing_requests=256,
    health_check_period_s=5,
)
class TokenCacheShardServer:
    """One cache shard: a bytes-bounded LRU with TTL and an invalidation index."""

    def __init__(self, max_bytes: int, ttl_s: float | None = None) -> None:
        self._shard = ClaimingShard(CacheShard(max_bytes=max_bytes, ttl_s=ttl_s))
        logger.info("token cache shard up: max_bytes=%s ttl_s=%s", max_bytes, ttl_s)

    async def get_many(self, keys: list[str]) -> dict[str, bytes]:
        return self._shard.shard.get_many(keys)

    async def get_or_claim(self, keys: list[str], lease_s: float, wait_s: float) -> ClaimReply:
        return await self._shard.get_or_claim(keys, lease_s, wait_s)

    async def put_many(self, items: dict[str, bytes], owners: dict[str, tuple[str, str]]) -> None:
        self._shard.put_many(items, owners)

    async def invalidate(self, collection: str, doc_id: str | None = None) -> int:
        return self._shard.shard.invalidate(collection, doc_id)

    async def clear(self) -> None:
        self._shard.clear()

    async def stats(self) -> dict:
        return self._shard.stats()


class ServeShardClient(ShardClient):
    """``ShardClient`` over a Serve handle to one ``TokenCacheShardServer`` deployment."""

    def __init__(self, handle: DeploymentHandle, timeout_s: float = 0.25, by_value: bool = True) -> None:
        # By value: Serve sends the call over its gRPC channel to the replica instead of through Ray object
        # references. For a shard's small messages (a few keys out, a few KB of packed IDs back) that halves
        # the round trip (measured p50 1.0 ms vs 1.9 ms, Ray 2.60, 2 cores), and this tier only pays off
        # while it stays cheaper than tokenizing the chunks again.
        self._handle = handle.options(_by_reference=False) if by_value else handle
        self._timeout_s = timeout_s
        self._shard_id = handle.deployment_name

    @property
    def shard_id(self) -> str:
        return self._shard_id

    async def _call(self, method: str, *args: object) -> object:
        try:
            async with asyncio.timeout(self._timeout_s):  # no extra task per call, unlike wait_for
                return await getattr(self._handle, method).remote(*args)
        except asyncio.CancelledError:
            raise
        except (asyncio.TimeoutError, TimeoutError) as err:
            raise ShardUnavailableError(f"{self._shard_id}.{method} timed out after {self._timeout_s}s") from err
        except Exception as err:  # RayActorError, ActorDiedError, BackPressureError, ...
            raise ShardUnavailableError(f"{self._shard_id}.{method} failed: {type(err).__name__}: {err}") from err

    async def get_many(self, keys: list[str]) -> dict[str, bytes]:
        return await self._call("get_many", keys)  # type: ignore[return-value]

    async def get_or_claim(self, keys: list[str], lease_s: float, wait_s: float) -> ClaimReply:
        return await self._call("get_or_claim", keys, lease_s, wait_s)  # type: ignore[return-value]

    async def put_many(self, items: dict[str, bytes], owners: dict[str, tuple[str, str]]) -> None:
        await self._call("put_many", items, owners)

    async def invalidate(self, collection: str, doc_id: str | None = None) -> int:
        return int(await self._call("invalidate", collection, doc_id))  # type: ignore[arg-type]

    async def clear(self) -> None:
        await self._call("clear")

    async def stats(self) -> dict:
        return await self._call("stats")  # type: ignore[return-value]
