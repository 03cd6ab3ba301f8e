"""KVEventSubscriber against a fake vLLM-style publisher over real ZMQ sockets on localhost."""

from __future__ import annotations

import asyncio

import pytest
import zmq.asyncio

from deployments.kv_subscriber import KVEventSubscriber, ReplicaEndpoints, kv_topic, parse_kv_topic
from routing.kv_events import BlockStored, KVEventBatch
from routing.kv_index import KVBlockIndex, block_keys
from tests.fakes.fake_kv_publisher import FakeKVPublisher

BS = 4
PROMPT = list(range(200, 216))


def stored(i: int) -> KVEventBatch:
    parent = None if i == 0 else 100 + i - 1
    return KVEventBatch(0.0, [BlockStored([100 + i], parent, PROMPT[i * BS:(i + 1) * BS], BS)])


def matched(index: KVBlockIndex) -> int:
    return index.matched_blocks(block_keys(PROMPT, BS), ["r1"])["r1"]


async def until(predicate, timeout_s: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


@pytest.fixture
async def wired():
    """A fake publisher for replica r1, an index and a running subscriber connected to it."""
    publisher = FakeKVPublisher(kv_topic("r1", "a"))
    index = KVBlockIndex()
    sub = KVEventSubscriber(index, replay_timeout_s=1.0, context=zmq.asyncio.Context())
    sub.connect("r1", ReplicaEndpoints(publisher.endpoint, publisher.replay_endpoint))
    task = asyncio.get_running_loop().create_task(sub.run())
    await asyncio.sleep(0.3)  # ZMQ's slow joiner: let the subscription reach the publisher
    yield publisher, index, sub
    task.cancel()
    await sub.close()
    publisher.close()


def test_topics_round_trip() -> None:
    assert parse_kv_topic(kv_topic("SERVE_REPLICA::app#LLM#abc", "n1")) == ("SERVE_REPLICA::app#LLM#abc", "n1")
    assert parse_kv_topic("other") is None and parse_kv_topic("kv@") is None


async def test_live_events_reach_the_index_and_a_lost_one_is_replayed(wired) -> None:
    publisher, index, _ = wired
    publisher.publish(stored(0))
    await until(lambda: matched(index) == 1)
    publisher.publish(stored(1), lose=True)  # never arrives live
    publisher.publish(stored(2))
    publisher.publish(stored(3))
    await until(lambda: matched(index) == 4 and index.status("r1") == "warm")
    (stats,) = index.stats()
    assert stats.gaps == 1 and stats.next_seq == 4


async def test_a_gap_the_replay_buffer_no_longer_holds_turns_the_replica_cold(wired) -> None:
    publisher, index, _ = wired
    publisher.publish(stored(0))
    await until(lambda: matched(index) == 1)
    publisher.publish(stored(1), lose=True)
    publisher.replay_from_seq = 2  # the publisher's buffer has moved past the lost message
    publisher.publish(stored(2))
    await until(lambda: index.status("r1") == "cold")
    assert matched(index) == 0


async def test_undecodable_message_marks_the_replica_cold(wired) -> None:
    publisher, index, sub = wired
    publisher.publish(stored(0))
    await until(lambda: matched(index) == 1)
    publisher.send_raw(b"\x00not msgpack")
    await until(lambda: index.status("r1") == "cold")
    assert sub.undecodable == 1
    sub.disconnect("r1")
    assert index.status("r1") == "unknown"
