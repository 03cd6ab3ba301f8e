"""The L2 tier: Redis through redis-py's asyncio client, guarded by timeouts and a circuit breaker.

Values are codec-packed token arrays under ``ChunkKey.storage_key``. Reads are one MGET; writes one
pipelined (non-transactional) batch of ``SET key value EX ttl``. Every call is bounded by ``timeout_s``
and skipped instantly while the breaker is open, so Redis being down or slow costs a request at most one
timeout per cooldown, and never an exception: get/put failures are logged and counted, a read failure
is a miss. redis-py retries a command once, only to reconnect a pooled connection that a Redis restart
left dead; the breaker is the retry policy otherwise. A timeout is slowness, not failure, whichever
layer noticed it: our per-call budget (``asyncio.timeout``) or redis-py's socket timeout, which is only
a backstop set above the longest per-call budget. The pool connects
lazily, so the tier works when Redis is absent at start and picks it up when it appears.

Invalidation. A whole collection is found by ``SCAN MATCH tcrag:tok:{collection}:*`` (the collection is
in the key, so no index can drift; SCAN is O(keyspace) but collection invalidation is rare). A single
document is frequent (a document update through the API) and is not in the content-addressed key, so
``put_many`` may be given ``owners`` and then keeps a set per document, ``tcrag:idx:{collection}:{doc}``,
holding its keys, with the same TTL as the entries. ``invalidate_all`` SCANs ``tcrag:*`` and UNLINKs in
batches rather than FLUSHDB, because the database may be shared with other data.

Redis Cluster. A ``redis+cluster://host:port[,host:port...]`` URL (``rediss+cluster://`` for TLS) gives
redis-py's ``RedisCluster`` instead, with the same timeouts, retry and breaker; every listed node is a
startup node, and any live one is enough to discover the rest. Keys keep their format (no hash tags), so
a collection's entries spread over every master by CRC16 slot. Hash tags (``{collection:fp16}``, one slot
per collection and tokenizer) would make a read one MGET to one master: measured on 3 local masters
(benchmarks/results/redis_cluster.json) ~180 vs ~245 µs p50 for 5 keys and ~280 vs ~500 µs for 20, a
fraction of a millisecond against a 200 ms budget; but they put a whole collection's memory and reads on
one master (a one-collection deployment would not spread at all), so the spread wins. The differences
live in a few small places: reads are ``mget_nonatomic`` (keys grouped by slot, one pipeline per master,
the masters asked concurrently); SCAN runs on every master in turn; UNLINK of many keys is split by slot
by redis-py (writes already are a non-transactional pipeline, which redis-py splits per master); and the
slot map is loaded in a task of its own (``_topology_ready``). A master that dies fails every read (a
batch touches every master) and opens the breaker: misses, never errors to the caller, until its replica
is promoted, redis-py reloads the slot map and the breaker's next probe succeeds (measured, 3 local
masters, cluster-node-timeout 1 s: cluster_state ok 2.3-2.6 s after a SIGKILL, hits back 4.2-4.7 s after
it with the 2 s breaker cooldown, 2.4-3.2 s with a 0.5 s cooldown).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from redis.exceptions import TimeoutError as RedisTimeoutError

from cache.breaker import CircuitBreaker
from cache.exceptions import BackendTimeoutError, BackendUnavailableError
from cache.keys import KEY_PREFIX
from cache.stats import TierCounters

__all__ = ["RedisTier", "CLUSTER_SCHEMES", "is_cluster_url", "parse_cluster_url"]

logger = logging.getLogger(__name__)

_INDEX_PREFIX = "tcrag:idx"
_ALL_PATTERN = "tcrag:*"
# Budget of calls off any request's path (write-through, SCAN/UNLINK invalidation).
_SLOW_CALL_TIMEOUT_S = 1.0


CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


def is_cluster_url(url: str) -> bool:
    """True for ``redis+cluster://`` and ``rediss+cluster://`` URLs."""
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def parse_cluster_url(url: str) -> dict[str, Any]:
    """``redis+cluster://[user:password@]host:port[,host:port...][/0]`` -> startup nodes and credentials.

    Returns ``{"nodes": [(host, port), ...], "username", "password", "ssl"}``. A cluster has only
    database 0, so any other database is an error rather than silently ignored."""
    from urllib.parse import unquote

    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in CLUSTER_SCHEMES:
        raise ValueError(f"not a Redis Cluster URL (redis+cluster://host:port[,host:port...]): {url!r}")
    rest, _, query = rest.partition("?")
    if query:
        raise ValueError(f"query options are not supported in a Redis Cluster URL: {url!r}")
    netloc, _, path = rest.partition("/")
    if path.strip("/") not in ("", "0"):
        raise ValueError(f"Redis Cluster has only database 0, not {path!r}: {url!r}")
    creds, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, pw = creds.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if colon else None
    nodes = []
    for item in hosts.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("["):  # [ipv6]:port
            host, _, port = item[1:].partition("]")
            port = port.lstrip(":")
        else:
            host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
        if not host:
            raise ValueError(f"missing host in Redis Cluster URL: {url!r}")
        try:
            nodes.append((host, int(port) if port else 6379))
        except ValueError:
            raise ValueError(f"bad port {port!r} in Redis Cluster URL: {url!r}") from None
    if not nodes:
        raise ValueError(f"no host in Redis Cluster URL: {url!r}")
    return {"nodes": nodes, "username": username, "password": password,
            "ssl": scheme.lower() == "rediss+cluster"}


def _escape_glob(text: str) -> str:
    """Escape Redis glob metacharacters so a collection name matches only itself."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _is_cluster_client(client: Any) -> bool:
    from redis.asyncio.cluster import RedisCluster

    return isinstance(client, RedisCluster)


class RedisTier:
    """Batched get/put of packed token arrays in Redis, never raising to its caller on get/put."""

    def __init__(
        self,
        client: Any,
        ttl_s: float | None = 86_400.0,
        timeout_s: float = 0.05,
        breaker: CircuitBreaker | None = None,
        clock: Callable[[], float] = time.perf_counter,
        scan_count: int = 1000,
    ) -> None:
        self._client = client
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.breaker = breaker or CircuitBreaker()
        self._clock = clock
        self._scan_count = scan_count
        self.counters = TierCounters()
        # Of the errors, those that were only slowness (the call timed out); the rest are failures.
        self.timeouts = 0
        self.is_cluster = _is_cluster_client(client)
        self._topology_load: asyncio.Future | None = None

    @classmethod
    def from_url(
        cls,
        url: str,
        ttl_s: float | None = 86_400.0,
        timeout_s: float = 0.05,
        max_connections: int = 32,
        failure_threshold: int = 3,
        cooldown_s: float = 2.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> RedisTier:
        """Build with a lazily-connecting pool; ``timeout_s`` bounds each call end to end.

        ``redis://`` / ``rediss://`` / ``unix://``: one server. ``redis+cluster://host:port[,host:port...]``
        (``rediss+cluster://`` for TLS): a Redis Cluster, ``max_connections`` per node."""
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        common: dict[str, Any] = dict(
            # Backstops only: every call is bounded by its own budget (up to _SLOW_CALL_TIMEOUT_S for
            # writes and scans). A socket timeout below that budget turned slow writes on a CPU-starved
            # machine into failures.
            socket_timeout=max(timeout_s * 4, _SLOW_CALL_TIMEOUT_S),
            socket_connect_timeout=max(timeout_s * 4, 0.04),
            # One immediate retry: after a Redis restart the pool still holds dead connections, and the
            # first command on each would fail although the server is back; the retry reconnects. On a
            # cluster it is also the one retry after a connection error, on a reloaded slot map.
            retry=Retry(NoBackoff(), 1),
            max_connections=max_connections,
            decode_responses=False,
        )
        if is_cluster_url(url):
            from redis.asyncio.cluster import ClusterNode, RedisCluster

            parsed = parse_cluster_url(url)
            client: Any = RedisCluster(
                startup_nodes=[ClusterNode(host, port) for host, port in parsed["nodes"]],
                username=parsed["username"],
                password=parsed["password"],
                ssl=parsed["ssl"],
                **common,
            )
        else:
            import redis.asyncio as aioredis

            client = aioredis.Redis.from_url(url, **common)
        breaker = CircuitBreaker(failure_threshold=failure_threshold, cooldown_s=cooldown_s)
        return cls(client, ttl_s=ttl_s, timeout_s=timeout_s, breaker=breaker, clock=clock)

    @property
    def _slow_timeout_s(self) -> float:
        return max(self.timeout_s, _SLOW_CALL_TIMEOUT_S)

    @property
    def client(self) -> Any:
        return self._client

    # -- the cluster differences -------------------------------------------------------------------------
    def _mget(self, keys: list[str]) -> Any:
        """MGET; on a cluster, one MGET per slot, pipelined per master, the masters in parallel."""
        return self._client.mget_nonatomic(keys) if self.is_cluster else self._client.mget(keys)

    async def _scan_nodes(self) -> list[Any]:
        """What SCAN must visit: the server (None), or every master of the cluster."""
        if not self.is_cluster:
            return [None]

        async def primaries() -> list[Any]:
            return list(self._client.get_primaries())  # _call has loaded the slot map

        return await self._call(primaries, self._slow_timeout_s)

    async def _topology_ready(self) -> None:
        """Load the cluster's slot map (CLUSTER SLOTS + COMMAND, ~30 ms idle) when redis-py needs it: at
        first use and after a connection error. The load runs as a task of its own with the slow budget,
        and callers wait for it within their own budget (shielded): a read that times out is a miss, but
        the load goes on, so the next call finds the map instead of starting over under a 50-200 ms
        budget that a busy machine may never meet."""
        if not getattr(self._client, "_initialize", False):  # redis-py's "slot map needed" flag
            return
        if self._topology_load is None or self._topology_load.done():
            async def load() -> None:
                async with asyncio.timeout(self._slow_timeout_s):
                    await self._client.initialize()

            self._topology_load = asyncio.ensure_future(load())
            # A failed load is reported to whoever awaits it; nobody may, so retrieve it here too.
            self._topology_load.add_done_callback(lambda f: f.cancelled() or f.exception())
        await asyncio.shield(self._topology_load)

    async def _scan_page(self, node: Any, cursor: int, pattern: str) -> tuple[int, list]:
        if node is None:
            cursor, keys = await self._client.scan(cursor=cursor, match=pattern, count=self._scan_count)
            return int(cursor), keys
        cursors, keys = await self._client.scan(cursor=cursor, match=pattern, count=self._scan_count,
                                                target_nodes=node)
        return int(cursors[node.name]), keys

    # ------------------------------------------------------------------------------------------------------
    async def _call(self, coro_fn: Callable[[], Any], timeout_s: float | None = None) -> Any:
        """Run one Redis round trip under the breaker and the timeout; translate errors."""
        if not self.breaker.allow():
            raise BackendUnavailableError("redis circuit open")
        try:
            async with asyncio.timeout(timeout_s or self.timeout_s):  # no extra task, unlike wait_for
                if self.is_cluster:
                    await self._topology_ready()
                result = await coro_fn()
        except (asyncio.TimeoutError, TimeoutError, RedisTimeoutError) as err:
            self.breaker.record_failure()
            raise BackendTimeoutError(f"redis call exceeded {timeout_s or self.timeout_s}s") from err
        except asyncio.CancelledError:
            self.breaker.record_failure()  # a cancelled probe must not leave the breaker half-open
            raise
        except Exception as err:  # redis.ConnectionError, OSError, ResponseError...
            self.breaker.record_failure()
            raise BackendUnavailableError(f"redis: {type(err).__name__}: {err}") from err
        self.breaker.record_success()
        return result

    def _count_error(self, err: BackendUnavailableError | BackendTimeoutError) -> None:
        """One failed or skipped call; a timeout is also counted apart (slowness, not failure)."""
        self.counters.errors += 1
        self.timeouts += isinstance(err, BackendTimeoutError)

    async def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """One MGET; found values only. On failure: empty dict, counted as errors (misses)."""
        if not keys:
            return {}
        keys = list(keys)
        t0 = self._clock()
        try:
            values = await self._call(lambda: self._mget(keys))
        except (BackendUnavailableError, BackendTimeoutError) as err:
            self._count_error(err)
            self.counters.misses += len(keys)
            logger.debug("redis get_many skipped: %s", err)
            return {}
        self.counters.latency.add((self._clock() - t0) * 1000)
        found = {k: v for k, v in zip(keys, values) if v is not None}
        self.counters.hits += len(found)
        self.counters.misses += len(keys) - len(found)
        return found

    async def put_many(
        self,
        items: dict[str, bytes],
        ttl_s: float | None = None,
        owners: dict[str, tuple[str, str]] | None = None,
    ) -> bool:
        """Pipelined SET EX (plus per-document index sets when ``owners`` is given). False on failure."""
        if not items:
            return True
        ttl = self.ttl_s if ttl_s is None else ttl_s
        ex = None if ttl is None else max(1, int(round(ttl)))

        async def run() -> Any:
            pipe = self._client.pipeline(transaction=False)
            for key, value in items.items():
                pipe.set(key, value, ex=ex)
            for key, (collection, doc_id) in (owners or {}).items():
                if key not in items:
                    continue
                idx = f"{_INDEX_PREFIX}:{collection}:{doc_id}"
                pipe.sadd(idx, key)
                if ex is not None:
                    pipe.expire(idx, ex)
            return await pipe.execute()

        try:
            await self._call(run, self._slow_timeout_s)  # a background write: not on any request's path
        except (BackendUnavailableError, BackendTimeoutError) as err:
            self._count_error(err)
            logger.debug("redis put_many skipped: %s", err)
            return False
        return True

    async def _scan_delete(self, pattern: str) -> int:
        removed = 0
        for node in await self._scan_nodes():
            cursor = 0
            while True:
                cursor, batch = await self._call(
                    lambda n=node, c=cursor: self._scan_page(n, c, pattern), timeout_s=self._slow_timeout_s
                )
                if batch:
                    removed += await self._call(lambda b=batch: self._client.unlink(*b), self._slow_timeout_s)
                if cursor == 0:
                    break
        return removed

    async def delete_many(self, keys: Sequence[str]) -> int:
        """Delete ``keys``; the number removed, 0 (counted as an error) when Redis is down or slow."""
        if not keys:
            return 0
        try:
            return int(await self._call(lambda: self._client.unlink(*keys)))
        except (BackendUnavailableError, BackendTimeoutError) as err:
            self._count_error(err)
            logger.warning("redis delete of %d key(s) failed: %s", len(keys), err)
            return 0

    async def invalidate(self, collection: str, doc_id: str | None = None) -> int:
        """Delete a collection's (or one document's) entries; returns entries removed, 0 if Redis is down."""
        try:
            if doc_id is None:
                pattern = f"{KEY_PREFIX}:{_escape_glob(collection)}:*"
                removed = await self._scan_delete(pattern)
                await self._scan_delete(f"{_INDEX_PREFIX}:{_escape_glob(collection)}:*")
                return removed
            idx = f"{_INDEX_PREFIX}:{collection}:{doc_id}"
            keys = await self._call(lambda: self._client.smembers(idx))
            removed = 0
            if keys:
                removed = await self._call(lambda: self._client.unlink(*keys), self._slow_timeout_s)
            await self._call(lambda: self._client.unlink(idx))
            return int(removed)
        except (BackendUnavailableError, BackendTimeoutError) as err:
            # Keys are content-addressed, so a leftover entry can never be served for changed text; it
            # only holds memory until its TTL. Log and go on rather than failing the caller.
            logger.warning("redis invalidate %s/%s failed: %s", collection, doc_id, err)
            self._count_error(err)
            return 0

    async def invalidate_all(self) -> int:
        """Delete every token-cache key (entries and indexes), leaving other data in the database."""
        try:
            return await self._scan_delete(_ALL_PATTERN)
        except (BackendUnavailableError, BackendTimeoutError) as err:
            logger.warning("redis invalidate_all failed: %s", err)
            self._count_error(err)
            return 0

    def stats_dict(self) -> dict:
        out = self.counters.snapshot().to_dict()
        out["breaker"] = self.breaker.state.value
        out["breaker_opened"] = self.breaker.times_opened
        out["skipped_calls"] = self.breaker.rejected
        out["timeouts"] = self.timeouts
        return out

    async def close(self) -> None:
        try:
            await self._client.aclose()
        except Exception:  # noqa: BLE001 - closing a dead connection must not fail shutdown
            logger.debug("redis close failed", exc_info=True)
