import pytest

from cache.lru import ByteBoundedLRU


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def size(key, n):
    return ByteBoundedLRU(1).entry_size(key, b"x" * n)


def test_evicts_least_recently_used_first():
    lru = ByteBoundedLRU(max_bytes=3 * size("a", 100))
    for k in "abc":
        lru.put(k, b"x" * 100)
    assert lru.get("a") is not None  # a becomes most recent; b is now LRU
    lru.put("d", b"x" * 100)
    assert lru.get("b") is None
    assert [k for k in "acd" if lru.get(k) is not None] == ["a", "c", "d"]
    assert lru.evictions == 1


def test_byte_bound_holds_when_filled_past_it():
    lru = ByteBoundedLRU(max_bytes=10_000)
    for i in range(1000):
        lru.put(f"k{i}", b"y" * (i % 300 + 1))
        assert lru.size_bytes <= 10_000
    assert lru.entries < 1000
    assert lru.size_bytes == sum(lru.entry_size(k, lru.get(k, touch=False)) for k in lru.keys())


def test_entry_larger_than_budget_is_not_stored():
    lru = ByteBoundedLRU(max_bytes=1000)
    lru.put("small", b"s")
    assert lru.put("huge", b"h" * 1000) is False
    assert lru.get("huge") is None
    assert lru.get("small") == b"s"


def test_replace_updates_size():
    lru = ByteBoundedLRU(max_bytes=10_000)
    lru.put("k", b"a" * 100)
    lru.put("k", b"b" * 10)
    assert lru.entries == 1
    assert lru.size_bytes == size("k", 10)
    assert lru.get("k") == b"b" * 10


def test_ttl_with_injected_clock():
    clock = FakeClock()
    removed = []
    lru = ByteBoundedLRU(max_bytes=10_000, ttl_s=10, clock=clock, on_remove=removed.append)
    lru.put("k", b"v")
    clock.now += 9.9
    assert lru.get("k") == b"v"
    clock.now += 0.2
    assert lru.get("k") is None
    assert lru.entries == 0 and lru.size_bytes == 0
    assert removed == ["k"] and lru.expirations == 1


def test_delete_and_clear():
    lru = ByteBoundedLRU(max_bytes=10_000)
    lru.put("a", b"1")
    lru.put("b", b"2")
    assert lru.delete("a") and not lru.delete("a")
    lru.clear()
    assert lru.entries == 0 and lru.size_bytes == 0


def test_invalid_args():
    with pytest.raises(ValueError):
        ByteBoundedLRU(0)
    with pytest.raises(ValueError):
        ByteBoundedLRU(10, ttl_s=0)


def test_value_size_is_pluggable():
    import sys
    from array import array

    lru = ByteBoundedLRU(10_000, value_size=sys.getsizeof, entry_overhead_bytes=0)
    arr = array("H", range(100))
    assert lru.put("k", arr)
    assert lru.size_bytes == sys.getsizeof(arr) + 1 and lru.get("k") is arr
