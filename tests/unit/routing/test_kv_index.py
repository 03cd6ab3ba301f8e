"""KVBlockIndex on synthetic event streams: store, remove, clear, salts, gaps and replay, restarts."""

from __future__ import annotations

import pytest

from routing.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEventBatch
from routing.kv_index import KVBlockIndex, block_keys

BS = 4
PROMPT = list(range(100, 116))  # 4 full blocks of 4 tokens


def stored(hashes: list[int], tokens: list[int], parent: int | None = None, **kw: object) -> BlockStored:
    return BlockStored(block_hashes=hashes, parent_block_hash=parent, token_ids=tokens, block_size=BS, **kw)


def batch(*events: object) -> KVEventBatch:
    return KVEventBatch(ts=0.0, events=list(events))


def matched(index: KVBlockIndex, tokens: list[int], replicas: list[str], salt: str | None = None) -> dict[str, int]:
    return index.matched_blocks(block_keys(tokens, BS, cache_salt=salt), replicas)


def test_block_keys_chain_over_the_whole_prefix() -> None:
    keys = block_keys(PROMPT, BS)
    assert len(keys) == 4
    assert block_keys(PROMPT + [1, 2], BS) == keys  # a trailing partial block has no key
    other = block_keys(PROMPT[:4] + [0] + PROMPT[5:], BS)
    assert other[0] == keys[0] and other[1:] != keys[1:] and all(a != b for a, b in zip(other[1:], keys[1:]))
    assert block_keys(PROMPT, BS, cache_salt="t") != keys
    assert block_keys(PROMPT[4:], BS, parent=keys[0]) == keys[1:]
    assert block_keys(PROMPT, BS, max_blocks=2) == keys[:2]
    with pytest.raises(ValueError):
        block_keys([-1, 0, 0, 0], BS)


def test_stored_blocks_match_their_prefix_only() -> None:
    index = KVBlockIndex()
    assert index.status("r1") == "unknown"
    result = index.ingest("r1", 0, batch(stored([11, 12, 13], PROMPT[:12])))
    assert result.action == "applied"
    assert index.status("r1") == "warm" and index.block_size("r1") == BS and index.num_blocks("r1") == 3
    assert matched(index, PROMPT, ["r1", "r2"]) == {"r1": 3, "r2": 0}
    assert matched(index, PROMPT[:8] + [0] * 8, ["r1"]) == {"r1": 2}
    assert matched(index, [0] + PROMPT[1:], ["r1"]) == {"r1": 0}


def test_a_later_event_extends_the_chain_through_its_parent_hash() -> None:
    index = KVBlockIndex()
    index.ingest("r1", 0, batch(stored([11, 12], PROMPT[:8])))
    index.ingest("r1", 1, batch(stored([13, 14], PROMPT[8:16], parent=12)))
    assert matched(index, PROMPT, ["r1"]) == {"r1": 4}


def test_removed_block_cuts_the_match_and_other_replicas_keep_theirs() -> None:
    index = KVBlockIndex()
    index.ingest("r1", 0, batch(stored([11, 12, 13], PROMPT[:12])))
    index.ingest("r2", 0, batch(stored([91, 92, 93], PROMPT[:12])))  # other engine hashes, same content
    index.ingest("r1", 1, batch(BlockRemoved(block_hashes=[12])))
    assert matched(index, PROMPT, ["r1", "r2"]) == {"r1": 1, "r2": 3}
    index.ingest("r1", 2, batch(BlockRemoved(block_hashes=[999])))  # unknown hash: ignored
    assert index.num_blocks("r1") == 2


def test_all_blocks_cleared_empties_the_replica_but_keeps_it_warm() -> None:
    index = KVBlockIndex()
    index.ingest("r1", 0, batch(stored([11, 12], PROMPT[:8])))
    index.ingest("r1", 1, batch(AllBlocksCleared()))
    assert index.num_blocks("r1") == 0 and index.status("r1") == "warm"
    assert matched(index, PROMPT, ["r1"]) == {"r1": 0}


def test_salted_blocks_match_only_the_same_salt() -> None:
    index = KVBlockIndex()
    index.ingest("r1", 0, batch(stored([21, 22], PROMPT[:8], extra_keys=[["tenant-1"], None])))
    assert matched(index, PROMPT, ["r1"]) == {"r1": 0}
    assert matched(index, PROMPT, ["r1"], salt="tenant-1") == {"r1": 2}
    assert matched(index, PROMPT, ["r1"], salt="tenant-2") == {"r1": 0}


def test_unmodelled_and_orphan_blocks_are_counted_not_indexed() -> None:
    index = KVBlockIndex()
    index.ingest("r1", 0, batch(
        stored([1], PROMPT[:4], lora_name="adapter"),
        stored([2], PROMPT[:4], medium="CPU"),
        stored([3], PROMPT[:4], extra_keys=[["image-hash", 0]]),
        stored([4, 5], PROMPT[4:12], parent=777),  # parent never seen
    ))
    (stats,) = index.stats()
    assert stats.num_blocks == 0 and stats.unmodelled_blocks == 3 and stats.orphan_blocks == 2
    assert matched(index, PROMPT, ["r1"]) == {"r1": 0}


def test_gap_is_closed_by_replay_then_buffered_live_messages() -> None:
    index = KVBlockIndex()
    index.ingest("r1", 0, batch(stored([11], PROMPT[:4])))
    gap = index.ingest("r1", 2, batch(stored([13], PROMPT[8:12], parent=12)))
    assert (gap.action, gap.replay_from) == ("gap", 1)
    assert index.status("r1") == "resyncing"
    assert index.ingest("r1", 3, batch(stored([14], PROMPT[12:16], parent=13))).action == "buffered"
    assert matched(index, PROMPT, ["r1"]) == {"r1": 1}  # entries stay usable meanwhile
    # The replay answer overlaps what is buffered; duplicates are applied once.
    result = index.replay("r1", [(1, batch(stored([12], PROMPT[4:8], parent=11))),
                                 (2, batch(stored([13], PROMPT[8:12], parent=12)))])
    assert result.action == "applied" and index.status("r1") == "warm"
    assert matched(index, PROMPT, ["r1"]) == {"r1": 4}
    assert index.ingest("r1", 4, batch(BlockRemoved(block_hashes=[14]))).action == "applied"
    assert matched(index, PROMPT, ["r1"]) == {"r1": 3}


def test_gap_the_replay_cannot_close_turns_the_replica_cold() -> None:
    index = KVBlockIndex()
    index.ingest("r1", 0, batch(stored([11, 12], PROMPT[:8])))
    index.ingest("r1", 5, batch(stored([31], [7, 7, 7, 7])))
    # The publisher's buffer starts after the first missing seq (1): the removals in 1..3 are lost.
    result = index.replay("r1", [(4, batch(stored([32], [8, 8, 8, 8])))])
    assert result.action == "cold" and index.status("r1") == "cold"
    # Old entries dropped (some may have been evicted unseen); what came after the hole is kept.
    assert matched(index, PROMPT, ["r1"]) == {"r1": 0}
    assert index.matched_blocks(block_keys([7, 7, 7, 7], BS), ["r1"]) == {"r1": 1}
    assert index.ingest("r1", 6, batch(stored([33], [9, 9, 9, 9]))).action == "applied"
    index.mark_warm("r1")
    assert index.status("r1") == "warm"


def test_failed_replay_turns_the_replica_cold() -> None:
    index = KVBlockIndex()
    index.ingest("r1", 0, batch(stored([11], PROMPT[:4])))
    index.ingest("r1", 3, batch())
    assert index.replay("r1", [], complete=False).action == "cold"
    assert index.status("r1") == "cold" and index.num_blocks("r1") == 0
    assert index.ingest("r1", 4, batch()).action == "applied"  # continues after the buffered message


def test_too_many_buffered_messages_during_a_replay_turn_the_replica_cold() -> None:
    index = KVBlockIndex(max_pending_batches=2)
    index.ingest("r1", 0, batch(stored([11], PROMPT[:4])))
    index.ingest("r1", 2, batch())
    index.ingest("r1", 3, batch())
    assert index.ingest("r1", 4, batch()).action == "cold"
    assert index.ingest("r1", 5, batch()).action == "applied"


def test_joining_a_running_engine_asks_for_its_history() -> None:
    index = KVBlockIndex()
    result = index.ingest("r1", 7, batch(stored([18], PROMPT[:4])))
    assert (result.action, result.replay_from) == ("gap", 0)
    index.replay("r1", [(s, batch()) for s in range(7)])
    assert index.status("r1") == "warm" and matched(index, PROMPT, ["r1"]) == {"r1": 1}


def test_seq_going_back_is_a_restarted_engine_with_an_empty_cache() -> None:
    index = KVBlockIndex()
    for seq in range(3):
        index.ingest("r1", seq, batch(stored([11 + seq], PROMPT[4 * seq: 4 * seq + 4], parent=(10 + seq) or None)
                                      if seq else stored([11], PROMPT[:4])))
    assert matched(index, PROMPT, ["r1"]) == {"r1": 3}
    result = index.ingest("r1", 0, batch(stored([55], [5, 5, 5, 5])))
    assert result.action == "restart"
    assert matched(index, PROMPT, ["r1"]) == {"r1": 0} and index.num_blocks("r1") == 1
    (stats,) = index.stats()
    assert stats.restarts == 1 and stats.next_seq == 1


def test_new_incarnation_is_a_restart_even_with_a_higher_seq() -> None:
    index = KVBlockIndex()
    index.ingest("r1", 0, batch(stored([11], PROMPT[:4])), incarnation="a")
    result = index.ingest("r1", 4, batch(), incarnation="b")
    assert (result.action, result.replay_from) == ("restart", 0)
    assert index.num_blocks("r1") == 0


def test_removing_a_replica_forgets_its_blocks() -> None:
    index = KVBlockIndex()
    index.ingest("r1", 0, batch(stored([11], PROMPT[:4])))
    index.ingest("r2", 0, batch(stored([11], PROMPT[:4])))
    index.remove_replica("r1")
    assert index.replicas() == ["r2"]
    assert matched(index, PROMPT, ["r1", "r2"]) == {"r1": 0, "r2": 1}


def test_the_same_engine_hash_restored_with_other_content_moves_the_key() -> None:
    index = KVBlockIndex()
    index.ingest("r1", 0, batch(stored([11], PROMPT[:4])))
    index.ingest("r1", 1, batch(stored([11], [1, 2, 3, 4])))
    assert matched(index, PROMPT, ["r1"]) == {"r1": 0}
    assert index.matched_blocks(block_keys([1, 2, 3, 4], BS), ["r1"]) == {"r1": 1}


def test_a_replica_cleared_before_its_first_message_adopts_the_streams_name() -> None:
    index = KVBlockIndex()
    index.clear("r1")  # the subscriber's bootstrap found no history
    assert index.ingest("r1", 0, batch(stored([11], PROMPT[:4])), incarnation="n1").action == "applied"
    assert index.stats()[0].restarts == 0
    index.clear("r2")
    result = index.ingest("r2", 3, batch(), incarnation="n1")  # published between bootstrap and now
    assert (result.action, result.replay_from) == ("gap", 0)
