"""KV-aware routing policy: send a prompt where its time to first token is expected to be shortest.

Plain Python, no Ray, no I/O. Inputs: the candidates, the prompt's token IDs (and cache salt), what each
replica holds (``routing.kv_index.KVBlockIndex``, fed by the replicas' KV events) and the work each has
queued (``ReplicaLoad``, e.g. from ``LoadTracker``). For every candidate

    expected TTFT = queued work / rates + uncached prompt tokens / prefill rate

where the uncached tokens are the prompt minus the leading blocks the replica holds. The first term is
the load the request would wait behind, in seconds of the replica's time rather than in request counts
(one queued 3,000-token cold prefill costs more than ten cached follow-ups); the second is the work the
request itself adds. The score weighs that work by ``work_weight`` (2 by default, see
``DEFAULT_WORK_WEIGHT``): a cold prefill delays the requests that queue behind it too. The smallest
score wins; ties (typically a new prefix on an idle pool) go to the prefix key's owner on the
consistent-hash ring, so every router process breaks them the same way.

Requests routed but not yet reported by events (vLLM publishes ``BlockStored`` once a step has computed
the blocks) are remembered per router for ``pending_ttl_s``, so that a burst of one new prefix follows
its first request instead of scattering before the first event arrives.

When the index cannot be trusted (fewer than ``min_warm_fraction`` of the candidates warm: at start,
when the event stream is lost, when most replicas are new) the decision is
``routing.prefix_affinity.PrefixAffinityPolicy``'s: consistent hashing with bounded loads, today's
router. The policy never waits on the index: it only reads what the index holds at the moment.

Known weakness (simulator, ``benchmarks/results/simulate_scaleout.json``): the load term copies hot
prefixes onto idle replicas, so the pool holds fewer distinct blocks than under consistent hashing, which
partitions them. With 727-block caches, after scaling 8 -> 16 (load doubled) the cached share slid from
0.97-0.99 of the oracle to ~0.88-0.91 over the next minutes, below consistent hashing's 0.94-0.95 at the
end; with 3,000-block caches it stayed at 0.96-0.99. The score does not yet count eviction pressure.

The default rates are placeholders, fitted roughly on this machine (2 cores, SmolLM2-135M, vLLM CPU):
``benchmarks/results/latest.json`` (288 sequential requests, max_tokens 16) gives TTFT ~ 281 ms +
2.16 ms per uncached prompt token (460 tokens/s of prefill) and 54 ms per decoded token for a single
stream; decode batches across sequences, so the queued-decode rate is set at 4 streams' worth. Fit them
to the serving hardware before trusting the load term.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from routing.kv_index import BlockKey, KVBlockIndex, block_keys, leading_matches
from routing.prefix_affinity import PrefixAffinityPolicy, PromptTokens, prefix_key

__all__ = [
    "KVAwarePolicy",
    "KVPolicyConfig",
    "KVRoutingDecision",
    "KVRoutingReason",
    "LoadTracker",
    "ReplicaLoad",
]

KVRoutingReason = Literal["kv_match", "kv_load", "fallback_affinity", "fallback_overflow", "fallback_no_key"]

DEFAULT_PREFILL_TOKENS_PER_S = 460.0
DEFAULT_DECODE_TOKENS_PER_S = 4 * 18.6
DEFAULT_ENGINE_BLOCK_SIZE = 128  # vLLM's default KV block on the CPU backend
# Weight of the request's own uncached prefill in the score. 1.0 would be the literal expected TTFT, and
# it loses: under load it sends a prefix away from a busy holder, the cold prefill elsewhere eats capacity
# that later requests wait for, queues grow, more requests spill. In benchmarks/simulate_routing.py
# (8 and 16 replicas, load 0.5, 727-block caches) weight 1 reached 0.69-0.74 of the oracle's cached share
# and TTFT p50 ~4.1 s; weight 2 reached 0.97 and ~2.3 s; 3-4 gained under 2% more cache and worse balance.
DEFAULT_WORK_WEIGHT = 2.0


class KVPolicyConfig(BaseModel):
    """Knobs of ``KVAwarePolicy``; see the module docstring for where the defaults come from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    block_size: int = Field(
        default=DEFAULT_ENGINE_BLOCK_SIZE, ge=1,
        description="Engine KV block size in tokens, used until the index has seen the engines' own.",
    )
    max_blocks: int = Field(default=64, ge=1, description="Most leading prompt blocks looked up per request.")
    prefill_tokens_per_s: float = Field(
        default=DEFAULT_PREFILL_TOKENS_PER_S, gt=0, description="Prefill rate of one replica (placeholder fit)."
    )
    decode_tokens_per_s: float = Field(
        default=DEFAULT_DECODE_TOKENS_PER_S, gt=0,
        description="Rate at which a replica works off queued decode tokens, batching included (placeholder).",
    )
    work_weight: float = Field(
        default=DEFAULT_WORK_WEIGHT, ge=0.0,
        description="Weight of the request's own uncached prefill against the queue it would wait behind; "
        "above 1 a cold prefill also counts for the requests it will delay.",
    )
    min_warm_fraction: float = Field(
        default=0.5, ge=0.0, le=1.0,
        description="Below this share of warm candidates the index is ignored and affinity routing decides.",
    )
    pending_ttl_s: float = Field(
        default=5.0, ge=0.0, description="How long a routed prompt's blocks count as present before events confirm.",
    )
    max_pending_keys: int = Field(default=200_000, ge=1, description="Cap on remembered routed-but-unconfirmed blocks.")


@dataclass(frozen=True, slots=True)
class ReplicaLoad:
    """Work a replica has accepted and not finished, as the router estimates it."""

    prefill_tokens: int = 0  # uncached prompt tokens not yet prefilled
    decode_tokens: int = 0  # output tokens still to generate
    requests: int = 0


@dataclass(frozen=True, slots=True)
class KVRoutingDecision:
    """Where a request goes, why, and what the policy expected there."""

    replica_id: str
    reason: KVRoutingReason
    matched_tokens: int = 0  # prompt tokens the chosen replica is believed to hold
    expected_ttft_s: float | None = None  # None for fallback decisions
    # Prompt tokens every scored candidate is believed to hold (the chosen one's is ``matched_tokens``),
    # for when Ray places the request on another replica than the chosen one; empty for fallbacks.
    matched_tokens_by_replica: Mapping[str, int] = field(default_factory=dict, hash=False)

    def predicted_cached_tokens(self, replica_id: str) -> int:
        """Prompt tokens the policy expects ``replica_id`` to serve from its cache (0 when unscored)."""
        if replica_id == self.replica_id:
            return self.matched_tokens
        return self.matched_tokens_by_replica.get(replica_id, 0)


class LoadTracker:
    """Per-replica work of the requests this router placed: add on routing, move on first token, drop on
    completion. A plain dict per request; the simulator and the Serve router both drive it."""

    def __init__(self) -> None:
        self._requests: dict[str, tuple[str, int, int]] = {}  # id -> (replica, prefill, decode)
        self._loads: dict[str, list[int]] = {}  # replica -> [prefill, decode, requests]

    def routed(self, request_id: str, replica_id: str, prefill_tokens: int, decode_tokens: int) -> None:
        self.finished(request_id)
        self._requests[request_id] = (replica_id, prefill_tokens, decode_tokens)
        load = self._loads.setdefault(replica_id, [0, 0, 0])
        load[0] += prefill_tokens
        load[1] += decode_tokens
        load[2] += 1

    def first_token(self, request_id: str) -> None:
        """The prefill is done: its tokens no longer delay others."""
        entry = self._requests.get(request_id)
        if entry is None:
            return
        replica, prefill, decode = entry
        self._loads[replica][0] -= prefill
        self._requests[request_id] = (replica, 0, decode)

    def finished(self, request_id: str) -> None:
        entry = self._requests.pop(request_id, None)
        if entry is None:
            return
        replica, prefill, decode = entry
        load = self._loads[replica]
        load[0] -= prefill
        load[1] -= decode
        load[2] -= 1

    def remove_replica(self, replica_id: str) -> None:
        self._loads.pop(replica_id, None)
        for rid in [r for r, e in self._requests.items() if e[0] == replica_id]:
            del self._requests[rid]

    def loads(self) -> dict[str, ReplicaLoad]:
        return {r: ReplicaLoad(max(0, p), max(0, d), max(0, n)) for r, (p, d, n) in self._loads.items()}


class _PendingBlocks:
    """Blocks this router sent somewhere and has not yet seen confirmed: key -> {replica: expiry}."""

    def __init__(self, ttl_s: float, max_keys: int, clock: Callable[[], float]) -> None:
        self._ttl_s = ttl_s
        self._max_keys = max_keys
        self._clock = clock
        self._entries: dict[BlockKey, dict[str, float]] = {}

    def note(self, replica_id: str, keys: Sequence[BlockKey]) -> None:
        if self._ttl_s <= 0 or not keys:
            return
        now = self._clock()
        if len(self._entries) + len(keys) > self._max_keys:
            self._purge(now)
        expiry = now + self._ttl_s
        for key in keys:
            self._entries.setdefault(key, {})[replica_id] = expiry

    def matched(self, keys: Sequence[BlockKey], replicas: Sequence[str]) -> dict[str, int]:
        now = self._clock()

        def holders(key: BlockKey) -> list[str]:
            return [r for r, expiry in self._entries.get(key, {}).items() if expiry > now]

        return leading_matches(keys, replicas, holders)

    def _purge(self, now: float) -> None:
        for key in list(self._entries):
            live = {r: t for r, t in self._entries[key].items() if t > now}
            if live:
                self._entries[key] = live
            else:
                del self._entries[key]
        while len(self._entries) >= self._max_keys:  # still full: drop the oldest insertions
            del self._entries[next(iter(self._entries))]


class KVAwarePolicy:
    """See the module docstring. ``choose`` reads the index and the loads; it records only the
    routed-but-unconfirmed blocks of its own decisions."""

    def __init__(
        self,
        index: KVBlockIndex,
        fallback: PrefixAffinityPolicy | None = None,
        config: KVPolicyConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        fallback_key_block_size: int = 16,
        fallback_key_max_blocks: int = 64,
    ) -> None:
        self._index = index
        self._fallback = fallback or PrefixAffinityPolicy()
        self._config = config or KVPolicyConfig()
        self._pending = _PendingBlocks(self._config.pending_ttl_s, self._config.max_pending_keys, clock)
        # The fallback keys prompts exactly as today's router does (routing.prefix_affinity.PrefixKeyConfig).
        self._key_block_size = fallback_key_block_size
        self._key_max_blocks = fallback_key_max_blocks

    @property
    def config(self) -> KVPolicyConfig:
        return self._config

    def block_size(self, candidates: Sequence[str]) -> int:
        """The engines' block size as their events state it, else the configured one."""
        for replica in candidates:
            size = self._index.block_size(replica)
            if size:
                return size
        return self._config.block_size

    def queue_s(self, load: ReplicaLoad | None) -> float:
        """Seconds of work ahead of a new request on a replica with ``load``."""
        if load is None:
            return 0.0
        config = self._config
        return load.prefill_tokens / config.prefill_tokens_per_s + load.decode_tokens / config.decode_tokens_per_s

    def choose(
        self,
        candidates: Sequence[str],
        prompt: PromptTokens,
        loads: Mapping[str, ReplicaLoad],
        queue_lengths: Mapping[str, int] | None = None,
    ) -> KVRoutingDecision:
        """Pick the replica for ``prompt`` among ``candidates``. Raises ``ValueError`` with no candidates.

        ``queue_lengths`` (in-flight requests per replica) feed the fallback's load bound; when absent
        the request counts of ``loads`` are used.
        """
        if not candidates:
            raise ValueError("no candidate replicas to route to")
        unique = sorted(set(candidates))
        try:
            affinity_key = prefix_key(prompt.token_ids, self._key_block_size, self._key_max_blocks,
                                      prompt.prefix_len, cache_salt=prompt.cache_salt)
        except ValueError:
            affinity_key = None
        warm = [r for r in unique if self._index.status(r) in ("warm", "resyncing")]
        if len(warm) < self._config.min_warm_fraction * len(unique) or not warm:
            return self._fall_back(unique, affinity_key, loads, queue_lengths)

        block_size = self.block_size(unique)
        try:
            keys = block_keys(prompt.token_ids, block_size, prompt.cache_salt, self._config.max_blocks)
        except ValueError:
            return self._fall_back(unique, None, loads, queue_lengths)
        # Cold or unknown replicas score only what this router itself sent them: the index's entries for
        # them undercount (a cold replica's were dropped), which would merely make them look empty.
        matched = self._index.matched_blocks(keys, warm)
        pending = self._pending.matched(keys, unique)
        rank = {r: i for i, r in enumerate(self._fallback.preference(unique, affinity_key))} if affinity_key else {}
        n_tokens = len(prompt.token_ids)
        best: tuple[float, int, str] | None = None
        best_matched, best_ttft = 0, 0.0
        by_replica: dict[str, int] = {}
        for replica in unique:
            hit_blocks = max(matched.get(replica, 0), pending[replica])
            by_replica[replica] = min(n_tokens, hit_blocks * block_size)
            # vLLM always computes at least the prompt's last token, so a fully cached prompt still
            # prefills one token (it then reports one block fewer cached when the prompt ends on a
            # block boundary; the difference is negligible here).
            uncached = max(1, n_tokens - hit_blocks * block_size)
            queue_s = self.queue_s(loads.get(replica))
            prefill_s = uncached / self._config.prefill_tokens_per_s
            score = queue_s + self._config.work_weight * prefill_s
            candidate = (round(score, 9), rank.get(replica, len(unique)), replica)
            if best is None or candidate < best:
                best, best_matched, best_ttft = candidate, hit_blocks, queue_s + prefill_s
        assert best is not None
        chosen = best[2]
        self._pending.note(chosen, keys)
        reason: KVRoutingReason = "kv_match" if best_matched > 0 else "kv_load"
        return KVRoutingDecision(chosen, reason, min(n_tokens, best_matched * block_size), best_ttft, by_replica)

    def _fall_back(
        self,
        candidates: list[str],
        key: str | None,
        loads: Mapping[str, ReplicaLoad],
        queue_lengths: Mapping[str, int] | None,
    ) -> KVRoutingDecision:
        lengths = queue_lengths if queue_lengths is not None else {r: load.requests for r, load in loads.items()}
        decision = self._fallback.choose(candidates, key, lengths)
        reason: KVRoutingReason = {"affinity": "fallback_affinity", "overflow": "fallback_overflow"}.get(
            decision.reason, "fallback_no_key")  # type: ignore[assignment]
        return KVRoutingDecision(decision.replica_id, reason)
