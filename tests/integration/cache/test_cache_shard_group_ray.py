"""A real Ray Serve shard group: two TokenCacheShardServer deployments, one replica killed mid-run."""

import asyncio
import time

import pytest

from cache import TokenCache, TokenCacheConfig
from cache.keys import ChunkRef
from tokenization import TiktokenTokenizer

pytestmark = pytest.mark.integration

APP = "token_cache_shards_test"
NUM_SHARDS = 2


@pytest.fixture(scope="module")
def shard_group():
    import ray
    from ray import serve

    from deployments.cache_group import TokenCacheShardServer, shard_deployment_name

    @serve.deployment(ray_actor_options={"num_cpus": 0.05})
    class _Group:
        """Ingress that only exists so both shards deploy as one app."""

        def __init__(self, *shards) -> None:
            self._shards = shards

        async def __call__(self) -> str:
            return "ok"

    # A machine shared with a running app can be slow enough for the raylet to miss its start deadline
    # once; a second attempt has always come up.
    for attempt in range(2):
        try:
            # Its own temp dir: a test cluster must not take over /tmp/ray/session_latest from an app
            # running on the same machine.
            ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, _temp_dir="/tmp/ray_tcrag_it")
            break
        except Exception:
            ray.shutdown()
            if attempt == 1:
                raise
    shards = [
        TokenCacheShardServer.options(name=shard_deployment_name(i), ray_actor_options={"num_cpus": 0.05}).bind(
            1 << 24, 600.0
        )
        for i in range(NUM_SHARDS)
    ]
    serve.run(_Group.bind(*shards), name=APP, route_prefix=None)
    handles = [serve.get_deployment_handle(shard_deployment_name(i), app_name=APP) for i in range(NUM_SHARDS)]
    yield handles
    serve.delete(APP)
    serve.shutdown()
    ray.shutdown()


def find_replica_actor(deployment: str):
    import ray

    for entry in ray.util.list_named_actors(all_namespaces=True):
        name = entry["name"]
        if name.startswith("SERVE_REPLICA::") and f"#{deployment}#" in name:
            return ray.get_actor(name, namespace=entry["namespace"])
    raise LookupError(deployment)


def chunks(n, doc):
    return [ChunkRef("code_patterns", f"{doc}-{i}", f"{doc}-{i}#0", f"def f_{doc}_{i}(x): return x * {i}") for i in range(n)]


async def test_serve_shard_client_meets_the_contract(shard_group):
    from deployments.cache_group import ServeShardClient
    from tests.unit.cache.shard_contract import check_shard_client_contract

    client = ServeShardClient(shard_group[1], timeout_s=5.0)
    assert client.shard_id == "token_cache_shard_1"
    await check_shard_client_contract(client)


async def test_two_clients_racing_on_the_same_keys_tokenize_them_once(shard_group):
    """Two TokenCache instances (two agent replicas, tiny L0) miss the same chunks at once: the shard
    grants each key's claim to one of them and parks the other until the owner's write-through."""
    from deployments.cache_group import ServeShardClient
    from tests.fakes.fake_tokenizer import FakeTokenizer

    tokenizer = FakeTokenizer(delay_s=0.1)
    config = TokenCacheConfig(shard_timeout_s=3.0, shard_claim_wait_s=2.0, write_timeout_s=3.0, max_cache_size_mb=0.001)
    a, b = (
        TokenCache(tokenizer, [ServeShardClient(h, timeout_s=3.0) for h in shard_group], None, config) for _ in "ab"
    )
    race = chunks(6, "race")
    results = await asyncio.gather(*((a if i % 2 else b).get_tokens(race) for i in range(8)))
    expected = [tokenizer.encode(c.text) for c in race]
    assert all(r.token_ids == expected for r in results)
    assert tokenizer.texts_encoded == 6, tokenizer.texts_encoded
    claimed = sum(s["claimed"] for cache in (a, b) for s in cache.stats()["shards"].values())
    assert claimed == 6
    await a.flush()
    await b.flush()
    await a.invalidate_all()  # the shard group is shared by the module's tests


async def test_shard_killed_mid_run_no_failed_lookup(shard_group):
    import ray

    from deployments.cache_group import ServeShardClient

    tokenizer = TiktokenTokenizer()
    clients = [ServeShardClient(h, timeout_s=1.0) for h in shard_group]
    config = TokenCacheConfig(shard_timeout_s=1.0, write_timeout_s=2.0, max_cache_size_mb=0.001)
    writer = TokenCache(tokenizer, clients, None, config)
    corpus = chunks(40, "warm")
    await writer.warmup(corpus, batch_size=10)
    stats = [await c.stats() for c in clients]
    assert sum(s["entries"] for s in stats) == 40 and all(s["entries"] > 0 for s in stats)

    # A second replica with a tiny L0 reads through the shards.
    reader = TokenCache(tokenizer, clients, None, config)
    res = await reader.get_tokens(corpus[:5])
    assert res.hits_by_tier == {"shard": 5}
    expected = tokenizer.encode_batch([c.text for c in corpus])

    failures: list[BaseException] = []

    async def lookups(rounds: int) -> None:
        for r in range(rounds):
            part = corpus[(r * 5) % 40 : (r * 5) % 40 + 5] + chunks(2, f"new{r}")
            try:
                got = await reader.get_tokens(part)
                start = (r * 5) % 40
                assert got.token_ids[:5] == expected[start : start + 5]
            except BaseException as err:  # noqa: BLE001
                failures.append(err)
            await asyncio.sleep(0.02)

    task = asyncio.create_task(lookups(100))
    await asyncio.sleep(0.3)
    ray.kill(find_replica_actor("token_cache_shard_0"), no_restart=True)
    await task
    assert failures == []
    shard0 = reader.stats()["shards"]["token_cache_shard_0"]
    assert shard0["errors"] >= 1, shard0  # the kill was felt, and absorbed

    # Serve brings the shard back; it serves again (empty, then refilled by write-through).
    for _ in range(120):
        try:
            await clients[0].stats()
            break
        except Exception:  # noqa: BLE001
            await asyncio.sleep(0.5)
    # The reader's breaker for shard 0 lets a probe through after its cooldown; from then on lookups
    # write through to the restarted shard again.
    deadline = time.monotonic() + 30
    entries = 0
    while entries == 0 and time.monotonic() < deadline:
        await reader.get_tokens(corpus)
        await reader.flush()
        entries = (await clients[0].stats())["entries"]
        if entries == 0:
            await asyncio.sleep(0.5)
    assert entries > 0
