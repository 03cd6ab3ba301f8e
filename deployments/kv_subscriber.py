"""ZMQ subscriber that feeds ``routing.kv_index.KVBlockIndex`` from the LLM replicas' KV-event publishers.

It runs without Ray, on the asyncio loop that reads the index (the index is not thread-safe), and is
tested against a fake vLLM-style publisher.

Protocol (vLLM's ``ZmqEventPublisher``, see ``routing/kv_events.py``): one SUB socket connects to every
replica's PUB endpoint; the topic names the replica, ``kv@<replica id>@<incarnation>``, so one socket
serves any number of replicas. When the index reports a gap (or a new replica that did not start at seq
0) the subscriber asks that replica's ROUTER replay endpoint, through a DEALER socket, for every batch
from the first missing seq, with a timeout; the index applies the answer or marks the replica cold.
Replays run as their own tasks, so live messages of other replicas keep flowing meanwhile (the index
buffers the resyncing replica's). An undecodable message marks its replica cold.

Wiring (behind ``llm.kv_events.enabled`` and the router's ``kv_routing.enabled``, both off by default):
each LLM replica starts its engine with ``KVEventsConfig(enable_kv_cache_events=True, publisher="zmq",
endpoint="tcp://*:<port>", replay_endpoint="tcp://*:<port+1>", topic="kv@<replica id>@<start nonce>")``
and reports ``tcp://<node ip>:<port>`` in ``record_routing_stats`` (Ray Serve polls it and hands it to
every router as ``RunningReplica.routing_stats``); each router process owns one index and one
subscriber, connects to the candidates' endpoints as they appear (``bootstrap`` replays a new
replica's history), and asks ``routing.kv_policy.KVAwarePolicy``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import zmq
import zmq.asyncio

from routing.kv_events import KVEventDecodeError, KVEventMessage, parse_message
from routing.kv_index import KVBlockIndex

__all__ = ["KVEventSubscriber", "ReplicaEndpoints", "kv_topic", "parse_kv_topic"]

logger = logging.getLogger(__name__)

TOPIC_PREFIX = "kv@"


def kv_topic(replica_id: str, incarnation: str) -> str:
    """The publisher topic of one engine instance of one replica."""
    return f"{TOPIC_PREFIX}{replica_id}@{incarnation}"


def parse_kv_topic(topic: str) -> tuple[str, str] | None:
    """``(replica id, incarnation)`` from a topic made by ``kv_topic``; None for anything else."""
    if not topic.startswith(TOPIC_PREFIX):
        return None
    replica_id, sep, incarnation = topic[len(TOPIC_PREFIX):].rpartition("@")
    if not sep or not replica_id:
        return None
    return replica_id, incarnation


@dataclass(frozen=True, slots=True)
class ReplicaEndpoints:
    """Where one replica publishes (PUB) and answers replay requests (ROUTER)."""

    endpoint: str
    replay_endpoint: str | None = None


class KVEventSubscriber:
    """See the module docstring. ``run()`` until cancelled; ``connect``/``disconnect`` as replicas change."""

    def __init__(self, index: KVBlockIndex, replay_timeout_s: float = 1.0,
                 context: zmq.asyncio.Context | None = None) -> None:
        self._index = index
        self._replay_timeout_s = replay_timeout_s
        self._ctx = context or zmq.asyncio.Context.instance()
        self._sub = self._ctx.socket(zmq.SUB)
        self._sub.setsockopt(zmq.SUBSCRIBE, TOPIC_PREFIX.encode())
        self._endpoints: dict[str, ReplicaEndpoints] = {}
        self._replays: set[asyncio.Task[None]] = set()
        self.messages = 0
        self.undecodable = 0

    def connect(self, replica_id: str, endpoints: ReplicaEndpoints) -> None:
        """Listen to a replica; on a running loop, also learn what it published before (``bootstrap``)."""
        old = self._endpoints.get(replica_id)
        if old == endpoints:
            return
        if old is not None:
            self._sub.disconnect(old.endpoint)
        self._endpoints[replica_id] = endpoints
        self._sub.connect(endpoints.endpoint)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(self.bootstrap(replica_id))
        self._replays.add(task)
        task.add_done_callback(self._replays.discard)

    async def bootstrap(self, replica_id: str) -> None:
        """Replay a newly connected replica's history: none means known and empty (warm at once rather
        than unknown until its first event); some is applied in order. Live messages that arrived
        first already started the replica's sequence (and asked for their own replay)."""
        messages = await self.replay_all(replica_id, 0)
        if messages is None or self._index.status(replica_id) != "unknown":
            return
        if not messages:
            self._index.clear(replica_id)
            return
        for message in sorted(messages, key=lambda m: m.seq):
            self._index.ingest(replica_id, message.seq, message.batch, self._incarnation(message.topic))

    @staticmethod
    def _incarnation(topic: str) -> str:
        names = parse_kv_topic(topic)
        return "" if names is None else names[1]

    def connected(self) -> list[str]:
        return sorted(self._endpoints)

    def disconnect(self, replica_id: str) -> None:
        """Stop listening to a replica that left the pool and forget its blocks."""
        old = self._endpoints.pop(replica_id, None)
        if old is not None:
            try:
                self._sub.disconnect(old.endpoint)
            except zmq.ZMQError:
                pass
        self._index.remove_replica(replica_id)

    def handle(self, frames: list[bytes]) -> None:
        """Apply one received message (public for tests and for callers with their own socket)."""
        self.messages += 1
        names = parse_kv_topic(frames[0].decode("utf-8", errors="replace")) if len(frames) >= 3 else None
        if names is None:
            return
        replica_id, incarnation = names
        try:
            message = parse_message(frames)
        except KVEventDecodeError as err:
            self.undecodable += 1
            logger.warning("undecodable KV event batch from %s, marking it cold: %s", replica_id, err)
            self._index.mark_cold(replica_id)
            return
        if message is None:
            return
        result = self._index.ingest(replica_id, message.seq, message.batch, incarnation)
        if result.replay_from is not None:
            task = asyncio.get_running_loop().create_task(self._replay(replica_id, result.replay_from))
            self._replays.add(task)
            task.add_done_callback(self._replays.discard)

    async def run(self) -> None:
        while True:
            self.handle(await self._sub.recv_multipart())

    async def replay_all(self, replica_id: str, from_seq: int = 0) -> list[KVEventMessage] | None:
        """Every batch the replica's replay endpoint still holds from ``from_seq``; None on timeout or
        when the replica has no replay endpoint."""
        endpoints = self._endpoints.get(replica_id)
        if endpoints is None or endpoints.replay_endpoint is None:
            return None
        sock = self._ctx.socket(zmq.DEALER)
        sock.connect(endpoints.replay_endpoint)
        try:
            await sock.send_multipart([b"", from_seq.to_bytes(8, "big")])
            out: list[KVEventMessage] = []
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._replay_timeout_s
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
                try:
                    frames = await asyncio.wait_for(sock.recv_multipart(), remaining)
                except asyncio.TimeoutError:
                    return None
                message = parse_message(frames)
                if message is None:
                    return out
                out.append(message)
        except KVEventDecodeError as err:
            logger.warning("undecodable replay answer from %s: %s", replica_id, err)
            return None
        finally:
            sock.close(0)

    async def _replay(self, replica_id: str, from_seq: int) -> None:
        messages = await self.replay_all(replica_id, from_seq)
        if messages is None:
            logger.warning("KV event replay for %s from seq %d failed; marking it cold", replica_id, from_seq)
            self._index.replay(replica_id, [], complete=False)
            return
        result = self._index.replay(replica_id, [(m.seq, m.batch) for m in messages])
        logger.info("KV event replay for %s from seq %d: %d batches, %s", replica_id, from_seq, len(messages),
                    result.action)

    async def close(self) -> None:
        for task in list(self._replays):
            task.cancel()
        self._sub.close(0)
