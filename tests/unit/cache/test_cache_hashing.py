"""The shard group spreads keys with routing.hashring; check spread and movement on resize."""

from collections import Counter

from cache.keys import ChunkKey, ChunkRef
from routing.hashring import ConsistentHashRing

SHARDS = [f"token_cache_shard_{i}" for i in range(4)]


def keys(n=20_000):
    return [
        ChunkKey.for_chunk(ChunkRef("support_kb", f"d{i}", f"d{i}#0", f"chunk text {i}"), "f" * 64).storage_key
        for i in range(n)
    ]


def test_spread_is_roughly_even_over_four_shards():
    ring = ConsistentHashRing(SHARDS, vnodes=128)
    counts = Counter(ring.lookup(k) for k in keys())
    assert set(counts) == set(SHARDS)
    expected = 20_000 / 4
    assert all(abs(c - expected) / expected < 0.2 for c in counts.values()), counts


def test_adding_a_fifth_shard_moves_about_one_fifth():
    ks = keys()
    before = ConsistentHashRing(SHARDS, vnodes=128)
    after = ConsistentHashRing(SHARDS + ["token_cache_shard_4"], vnodes=128)
    moved = [k for k in ks if before.lookup(k) != after.lookup(k)]
    assert 0.13 < len(moved) / len(ks) < 0.27
    # Every moved key moved TO the new shard; nothing reshuffles among the old ones.
    assert all(after.lookup(k) == "token_cache_shard_4" for k in moved)
