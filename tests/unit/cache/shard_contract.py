"""The ShardClient contract, run against every implementation (local here, Serve in integration)."""

from __future__ import annotations

from cache.shard import ShardClient


async def check_shard_client_contract(client: ShardClient) -> None:
    await client.clear()
    assert isinstance(client.shard_id, str) and client.shard_id
    assert await client.get_many([]) == {}
    items = {"tcrag:tok:c:fp:1": b"one", "tcrag:tok:c:fp:2": b"two", "tcrag:tok:d:fp:3": b"three"}
    owners = {"tcrag:tok:c:fp:1": ("c", "doc1"), "tcrag:tok:c:fp:2": ("c", "doc2"), "tcrag:tok:d:fp:3": ("d", "doc1")}
    await client.put_many(items, owners)
    assert await client.get_many(list(items) + ["absent"]) == items
    assert await client.invalidate("c", "doc1") == 1
    assert await client.get_many(list(items)) == {k: v for k, v in items.items() if k != "tcrag:tok:c:fp:1"}
    assert await client.invalidate("c") == 1
    assert await client.invalidate("c") == 0
    stats = await client.stats()
    assert stats["entries"] == 1 and stats["size_bytes"] > 0
    await client.clear()
    assert await client.get_many(list(items)) == {}

    # Claims: a missing key is claimed by the first caller; a second caller (no wait) sees it waiting;
    # the owner's put releases it and the value is found.
    await client.put_many({"tcrag:tok:c:fp:1": b"one"}, {"tcrag:tok:c:fp:1": ("c", "doc1")})
    first = await client.get_or_claim(["tcrag:tok:c:fp:1", "tcrag:tok:c:fp:9"], 30.0, 0.0)
    assert first.found == {"tcrag:tok:c:fp:1": b"one"} and first.claimed == ["tcrag:tok:c:fp:9"]
    second = await client.get_or_claim(["tcrag:tok:c:fp:9"], 30.0, 0.0)
    assert second.found == {} and second.claimed == [] and list(second.waiting) == ["tcrag:tok:c:fp:9"]
    await client.put_many({"tcrag:tok:c:fp:9": b"nine"}, {"tcrag:tok:c:fp:9": ("c", "doc9")})
    third = await client.get_or_claim(["tcrag:tok:c:fp:9"], 30.0, 0.0)
    assert third.found == {"tcrag:tok:c:fp:9": b"nine"} and third.claimed == [] and third.waiting == {}
    await client.clear()
