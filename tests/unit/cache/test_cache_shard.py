from cache.shard import CacheShard, LocalShardClient


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_invalidate_by_document_and_collection():
    shard = CacheShard(max_bytes=1 << 20)
    shard.put_many(
        {"k1": b"a", "k2": b"b", "k3": b"c", "k4": b"d"},
        {"k1": ("col", "d1"), "k2": ("col", "d1"), "k3": ("col", "d2"), "k4": ("other", "d1")},
    )
    assert shard.invalidate("col", "d1") == 2
    assert shard.get_many(["k1", "k2", "k3", "k4"]) == {"k3": b"c", "k4": b"d"}
    assert shard.invalidate("col") == 1
    assert shard.get_many(["k3", "k4"]) == {"k4": b"d"}
    assert shard.invalidate("missing") == 0


def test_shared_content_key_is_indexed_under_each_owner():
    shard = CacheShard(max_bytes=1 << 20)
    shard.put_many({"k": b"v"}, {"k": ("col", "d1")})
    shard.put_many({"k": b"v"}, {"k": ("col", "d2")})
    assert shard.invalidate("col", "d2") == 1
    assert shard.get_many(["k"]) == {}
    assert shard.invalidate("col", "d1") == 0  # index cleaned up with the entry


def test_index_follows_eviction_and_expiry():
    clock = FakeClock()
    probe = CacheShard(max_bytes=1 << 20).lru.entry_size("k0", b"x" * 100)
    shard = CacheShard(max_bytes=2 * probe, ttl_s=10, clock=clock)
    shard.put_many({f"k{i}": b"x" * 100 for i in range(5)}, {f"k{i}": ("col", f"d{i}") for i in range(5)})
    stats = shard.stats()
    assert stats["entries"] == 2 and stats["evictions"] == 3 and stats["size_bytes"] <= stats["max_bytes"]
    assert shard.collections() == {"col"} and shard.invalidate("col", "d0") == 0
    clock.now += 11
    assert shard.get_many(["k3", "k4"]) == {}
    assert shard.collections() == set()
    assert shard.stats()["misses"] == 2


async def test_local_client_contract():
    client = LocalShardClient(CacheShard(max_bytes=1 << 20), shard_id="s0")
    assert client.shard_id == "s0"
    await client.put_many({"k": b"v"}, {"k": ("c", "d")})
    assert await client.get_many(["k", "nope"]) == {"k": b"v"}
    assert await client.invalidate("c", "d") == 1
    await client.put_many({"k": b"v"}, {"k": ("c", "d")})
    await client.clear()
    assert (await client.stats())["entries"] == 0


async def test_local_shard_client_meets_the_contract():
    from tests.unit.cache.shard_contract import check_shard_client_contract

    await check_shard_client_contract(LocalShardClient(CacheShard(max_bytes=1 << 20), "local-0"))
