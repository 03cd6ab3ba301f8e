"""RedisTier, TokenCache and the session store against a real 3-master + 3-replica Redis Cluster started by
the tests (testbed.redis_cluster, built with redis-py: only redis-server is needed). The failover test
SIGKILLs a master and runs last; the cluster keeps serving afterwards (its replica was promoted)."""

import asyncio
import shutil
import time

import pytest
import redis
from redis.cluster import RedisCluster as SyncRedisCluster

from cache import TokenCache, TokenCacheConfig
from cache.config import redis_tier_from_config
from cache.keys import ChunkRef, storage_key
from cache.redis_tier import RedisTier
from rag.builder import AgentPipelineConfig, build_session_store
from rag.sessions import Session, SessionConfig, SessionTurn
from retrieval.config import RetrievalConfig
from testbed.redis_cluster import RedisClusterServer
from tokenization import TiktokenTokenizer

pytestmark = pytest.mark.integration

FP = "f" * 64


@pytest.fixture(scope="module")
def cluster():
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    server = RedisClusterServer(masters=3, replicas_per_master=1, node_timeout_ms=1000)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def admin(cluster):
    """A synchronous cluster client, every master flushed before the test."""
    client = SyncRedisCluster(host="127.0.0.1", port=cluster.live_ports()[0], socket_timeout=5)
    client.flushall(target_nodes=SyncRedisCluster.PRIMARIES)
    yield client
    client.close()


def keys_for(collection, n, salt=""):
    return [storage_key(collection, FP, f"{salt}{i:064x}") for i in range(n)]


def masters_holding(admin, keys):
    return {admin.get_node_from_key(k).name for k in keys}


def new_tier(cluster, **kw):
    return RedisTier.from_url(cluster.url, **{"ttl_s": 60, "timeout_s": 0.5, **kw})


async def test_round_trip_across_slots_and_masters(cluster, admin):
    tier = new_tier(cluster)
    assert tier.is_cluster
    keys = keys_for("support_kb", 300)
    assert len({admin.keyslot(k) for k in keys}) > 250  # no hash tag: nearly one slot per key
    assert len(masters_holding(admin, keys)) == 3
    assert await tier.put_many({k: k.encode()[-8:] for k in keys})
    missing = storage_key("support_kb", FP, "nope")
    got = await tier.get_many([missing, *keys])
    assert got == {k: k.encode()[-8:] for k in keys}
    assert admin.ttl(keys[0]) > 0
    stats = tier.stats_dict()
    assert (stats["hits"], stats["misses"], stats["errors"]) == (300, 1, 0)
    assert await tier.delete_many(keys[:50]) == 50
    assert len(await tier.get_many(keys)) == 250
    await tier.close()


async def test_document_invalidation_through_index_sets(cluster, admin):
    tier = new_tier(cluster)
    keys = keys_for("docs", 120)
    owners = {k: ("docs", f"doc{i % 4}") for i, k in enumerate(keys)}
    assert await tier.put_many({k: b"v" for k in keys}, owners=owners)
    doc0 = [k for k in keys if owners[k][1] == "doc0"]
    assert len(masters_holding(admin, doc0)) == 3  # one document's entries span the masters
    assert admin.scard("tcrag:idx:docs:doc0") == 30
    assert await tier.invalidate("docs", "doc0") == 30
    assert not admin.exists("tcrag:idx:docs:doc0")
    assert set(await tier.get_many(keys)) == {k for k in keys if owners[k][1] != "doc0"}
    await tier.close()


async def test_collection_invalidation_and_invalidate_all_visit_every_master(cluster, admin):
    tier = new_tier(cluster, timeout_s=0.5)
    tier._scan_count = 10  # several SCAN pages per master
    a, b = keys_for("col_a", 200), keys_for("col_b", 100)
    owners = {k: ("col_a", "d") for k in a[:20]}
    assert await tier.put_many({k: b"v" for k in a + b}, owners=owners)
    admin.set("other:data", b"keep")  # not ours: must survive invalidate_all
    assert await tier.invalidate("col_a") == 200
    assert not admin.exists("tcrag:idx:col_a:d")
    assert await tier.get_many(a) == {}
    assert len(await tier.get_many(b)) == 100
    assert await tier.invalidate_all() == 100
    assert await tier.get_many(b) == {}
    assert admin.get("other:data") == b"keep"
    assert tier.stats_dict()["errors"] == 0
    await tier.close()


async def test_token_cache_over_the_cluster_from_config(cluster, admin):
    tokenizer = TiktokenTokenizer()
    config = TokenCacheConfig(redis_url=cluster.url, redis_ttl_s=60)
    chunks = [ChunkRef("support_kb", f"d{i}", f"d{i}#0", f"chunk {i} " + "word " * 50) for i in range(20)]
    warm = TokenCache(tokenizer, [], redis_tier_from_config(config), config)
    await warm.get_tokens(chunks)
    await warm.flush()
    other = TokenCache(tokenizer, [], redis_tier_from_config(config), config)  # another replica: empty L0
    res = await other.get_tokens(chunks)
    assert res.token_ids == tokenizer.encode_batch([c.text for c in chunks])
    assert res.hits_by_tier.get("redis", 0) == 20
    await warm.close()
    await other.close()


async def test_sessions_store_over_a_cluster_url(cluster, admin):
    def store():
        return build_session_store(AgentPipelineConfig(
            agent="support", collection="support_kb", model_path="unused", max_model_len=2048,
            retrieval=RetrievalConfig(), token_cache=TokenCacheConfig(redis_url=cluster.url),
            # A generous budget: this checks the wiring, not the latency of a busy test machine.
            sessions=SessionConfig(redis_timeout_s=2.0)))

    first, second = store(), store()  # two replicas of one agent
    assert first._redis is not None and first._redis.is_cluster
    sessions = [Session(f"s{i}", "support", [SessionTurn([1, 2], [3], [1], "hi", "hello", ["d#0"])])
                for i in range(10)]
    for s in sessions:
        await first.put(s)
    for s in sessions:
        got = await second.get(s.session_id)
        assert got is not None and got.turns[0].response_text == "hello"
    assert await second.delete("s3")
    assert await first.get("s3") is not None  # first's local copy: the fallback when Redis is down
    assert (await second.get("s3")) is None


def test_the_cluster_rejects_a_cross_slot_mget(cluster):
    """Why reads go through mget_nonatomic: a plain MGET of the untagged keys is refused."""
    client = SyncRedisCluster(host="127.0.0.1", port=cluster.live_ports()[0])
    with pytest.raises((redis.RedisError, redis.exceptions.RedisClusterException)):
        client.mget(keys_for("support_kb", 5))
    client.close()


async def test_failover_of_a_master_under_load_degrades_to_misses(cluster, admin):
    """A loop of reads and write-backs while one master is SIGKILLed: nothing raises, reads miss during
    the outage, and hits come back once the replica is promoted (bounded wait)."""
    tier = RedisTier.from_url(cluster.url, ttl_s=60, timeout_s=0.2, failure_threshold=3, cooldown_s=0.5)
    keys = keys_for("support_kb", 300, salt="fo")
    assert await tier.put_many({k: b"v" for k in keys})
    victim = admin.get_node_from_key(keys[0]).port
    await asyncio.sleep(0.3)  # the replicas have the entries (replication is asynchronous)

    outcome = {"raised": 0, "reads": 0, "missed_keys": 0, "resumed_at": None}
    start = time.monotonic()
    stop = asyncio.Event()
    killed_at = {}

    async def loop(seed):
        i = seed
        while not stop.is_set():
            batch = keys[(i * 7) % 280:][:20]
            i += 1
            try:
                got = await tier.get_many(batch)
                outcome["reads"] += 1
                missing = [k for k in batch if k not in got]
                outcome["missed_keys"] += len(missing) if killed_at else 0
                if missing:
                    await tier.put_many({k: b"v" for k in missing})
                elif killed_at and outcome["missed_keys"] and outcome["resumed_at"] is None:
                    outcome["resumed_at"] = time.monotonic()
                    stop.set()
            except Exception:  # noqa: BLE001 - what the test forbids
                outcome["raised"] += 1
            await asyncio.sleep(0.005)

    async def fault():
        await asyncio.sleep(0.5)
        killed_at["t"] = time.monotonic()
        await asyncio.to_thread(cluster.kill, victim)
        await asyncio.to_thread(cluster.wait_ok, 20.0)
        killed_at["ok"] = time.monotonic()

    async def deadline():
        await asyncio.sleep(25)
        stop.set()

    guard = asyncio.create_task(deadline())
    await asyncio.gather(fault(), *(loop(s) for s in range(4)))
    guard.cancel()
    stats = tier.stats_dict()
    await tier.close()

    assert outcome["raised"] == 0
    assert outcome["missed_keys"] > 0, outcome
    assert stats["breaker_opened"] >= 1
    assert outcome["resumed_at"] is not None, (outcome, stats)
    assert outcome["resumed_at"] - killed_at["t"] < 15, outcome
    assert time.monotonic() - start < 30
    # After the failover: a full read of every key is served (promoted replica, reloaded slot map).
    tier = new_tier(cluster, timeout_s=2.0)
    got = await tier.get_many(keys)
    assert len(got) >= 290, (len(got), tier.stats_dict())  # a write-back racing the kill may be lost
    assert victim not in cluster.master_ports()
    await tier.close()

