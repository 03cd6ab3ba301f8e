"""A stand-in for vLLM's ``ZmqEventPublisher``: PUB frames ``(topic, seq, payload)`` and a ROUTER replay
endpoint answering ``[b"", start_seq]`` with every buffered ``(topic, seq, payload)`` then an end marker.

``publish(batch, lose=True)`` numbers and buffers the batch without sending it live: a lost message."""

from __future__ import annotations

import threading

import zmq

from routing.kv_events import KVEventBatch, encode_batch
from testbed.redis_server import free_port

END_SEQ = (-1).to_bytes(8, "big", signed=True)


class FakeKVPublisher:
    def __init__(self, topic: str) -> None:
        self.topic = topic.encode()
        self._ctx = zmq.Context()
        self._pub = self._ctx.socket(zmq.PUB)
        self.port = free_port()
        self._pub.bind(f"tcp://127.0.0.1:{self.port}")
        self._replay = self._ctx.socket(zmq.ROUTER)
        self.replay_port = free_port()
        self._replay.bind(f"tcp://127.0.0.1:{self.replay_port}")
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.replay_endpoint = f"tcp://127.0.0.1:{self.replay_port}"
        self.buffer: list[tuple[int, bytes]] = []
        self.replay_from_seq: int = 0  # the oldest seq the replay buffer still holds
        self._seq = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve_replay, daemon=True)
        self._thread.start()

    def publish(self, batch: KVEventBatch, lose: bool = False) -> int:
        payload = encode_batch(batch)
        with self._lock:
            seq, self._seq = self._seq, self._seq + 1
            self.buffer.append((seq, payload))
            if not lose:
                self._pub.send_multipart([self.topic, seq.to_bytes(8, "big"), payload])
        return seq

    def send_raw(self, payload: bytes) -> None:
        with self._lock:
            seq, self._seq = self._seq, self._seq + 1
            self._pub.send_multipart([self.topic, seq.to_bytes(8, "big"), payload])

    def _serve_replay(self) -> None:
        while not self._stop.is_set():
            if not self._replay.poll(50):
                continue
            client, _, start = self._replay.recv_multipart()
            start_seq = int.from_bytes(start, "big")
            with self._lock:
                for seq, payload in self.buffer:
                    if seq >= max(start_seq, self.replay_from_seq):
                        self._replay.send_multipart([client, b"", self.topic, seq.to_bytes(8, "big"), payload])
                self._replay.send_multipart([client, b"", b"", END_SEQ, b""])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._pub.close(0)
        self._replay.close(0)
        self._ctx.term()
