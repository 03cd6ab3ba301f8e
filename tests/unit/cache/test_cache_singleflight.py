import asyncio

import pytest

from cache.singleflight import SingleFlight


async def test_concurrent_callers_share_one_computation():
    sf: SingleFlight[int] = SingleFlight()
    calls = 0

    async def compute():
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return 42

    results = await asyncio.gather(*(sf.do("k", compute) for _ in range(100)))
    assert results == [42] * 100 and calls == 1 and len(sf) == 0


async def test_error_reaches_every_waiter_and_key_is_released():
    sf: SingleFlight[int] = SingleFlight()

    async def boom():
        await asyncio.sleep(0.01)
        raise RuntimeError("x")

    results = await asyncio.gather(*(sf.do("k", boom) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert await sf.do("k", lambda: asyncio.sleep(0, result=1)) == 1


async def test_claim_splits_owned_and_waiting():
    sf: SingleFlight[str] = SingleFlight()
    owned, waiting = sf.claim(["a", "b", "a"])
    assert owned == ["a", "b"] and waiting == {}
    owned2, waiting2 = sf.claim(["b", "c"])
    assert owned2 == ["c"] and set(waiting2) == {"b"}
    sf.resolve("b", "B")
    assert await waiting2["b"] == "B"
    fut_a = sf.future("a")
    sf.fail("a", KeyError("a"))
    sf.resolve("c", "C")
    assert len(sf) == 0
    with pytest.raises(KeyError):
        await fut_a
