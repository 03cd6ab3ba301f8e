"""Prefix-affinity routing policy: which vLLM replica should serve a prompt, given its prefix key.

Pure Python, no Ray: the Serve ``RequestRouter`` in ``deployments/prefix_router.py`` only adapts Ray's
types (replicas, pending requests, queue-length cache) to the functions here, so the decision can be
tested and reasoned about as a function of plain inputs.

The policy is consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam, "Consistent
Hashing with Bounded Loads", SODA 2018): a prefix key is owned by a replica on a hash ring, so every
request that shares the prefix goes to the replica that already holds its KV blocks, yet no replica is
allowed more than ``ceil(c * (in_flight + 1) / n)`` requests; a hot prefix spills to the next replica
in ring order instead of queueing behind itself.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from routing.hashring import ConsistentHashRing

__all__ = [
    "DEFAULT_LOAD_FACTOR",
    "PrefixKeyConfig",
    "PrefixAffinityPolicy",
    "PromptTokens",
    "RoutingDecision",
    "RoutingReason",
    "extract_prompt_tokens",
    "prefix_key",
]

RoutingReason = Literal["affinity", "overflow", "no_key"]

# Granularity of the key in tokens: vLLM's GPU block size, and a divisor of the CPU backend's 128, so the
# key covers exactly the whole blocks of the context on either (the prefix cache reuses whole blocks only).
DEFAULT_BLOCK_SIZE = 16
# c of the load bound. A spilled request pays a full prefill on a replica without its prefix (about 1.3 s
# for a 1,300-token context on one CPU core), far more than waiting behind a few decodes on the owner, so
# the bound only guards against real hot spots: no replica above twice the mean load. Measured with
# ``benchmarks.routers`` (2 replicas, six agents, concurrency 4): c=1.25 spilled often enough to drop the
# prefix-cache hit rate from 0.952 to 0.874 and raise p95 from 866 to 1,913 ms. With two replicas c=2
# never spills (the owner's load m < c(m+1)/2); Ray's own fallback still takes over when the owner is at
# max_ongoing_requests. With more replicas it caps each at 2x the mean.
DEFAULT_LOAD_FACTOR = 2.0
# 64 blocks = 1,024 tokens: long enough to tell apart contexts that share a system prompt, short
# enough that hashing costs microseconds. Beyond it two prompts almost surely share their context.
DEFAULT_MAX_BLOCKS = 64


def prefix_key(
    token_ids: Sequence[int],
    block_size: int = DEFAULT_BLOCK_SIZE,
    max_blocks: int = DEFAULT_MAX_BLOCKS,
    context_end: int | None = None,
    *,
    cache_salt: str | None = None,
) -> str | None:
    """Hash of the prompt's leading whole token blocks: the part a replica's prefix cache can reuse.

    vLLM's automatic prefix caching stores the KV cache in blocks (16 tokens by default on the CPU
    backend) and looks blocks up by the hash of all tokens up to and including them, so only whole
    blocks are ever reused; a trailing partial block is recomputed wherever the request goes.
    Hashing exactly the whole blocks therefore gives two prompts the same key precisely when they can
    share cached blocks, and a prompt that differs only inside its last partial block keeps its key.

    ``context_end`` is the index where the shared context ends (system prompt and retrieved chunks,
    before the user's query), when the caller knows it. Without it the key would cover the query's
    whole blocks too and two questions over the same context would land on different replicas.
    ``max_blocks`` caps the work and makes very long shared contexts key on their first
    ``max_blocks * block_size`` tokens only.

    ``cache_salt`` is the request's vLLM ``cache_salt``: vLLM mixes it into the first block's hash, so
    requests with different salts never share blocks and must not share a key either (a per-request
    salt, as the plain-RAG baseline uses, then spreads like a random key; a per-tenant salt keeps
    tenants apart). ``None`` and ``""`` both mean no salt.

    Returns ``None`` when fewer than one whole block is available: there is nothing to reuse, so the
    request has no affinity and should simply go to the least loaded replica. Raises ``ValueError``
    when a hashed token ID is not an int in [0, 2**32).
    """
    if block_size < 1:
        raise ValueError("block_size must be >= 1")
    if max_blocks < 1:
        raise ValueError("max_blocks must be >= 1")
    end = len(token_ids) if context_end is None else max(0, min(context_end, len(token_ids)))
    num_blocks = min(end // block_size, max_blocks)
    if num_blocks == 0:
        return None
    num_tokens = num_blocks * block_size
    # Packed little-endian uint32: the same bytes in every process and on every platform (token IDs
    # of any real vocabulary fit in 32 bits). struct raises on a negative or non-int ID, which is
    # what we want: such a prompt is malformed and the caller treats it as having no key.
    try:
        packed = struct.pack(f"<{num_tokens}I", *token_ids[:num_tokens])
    except struct.error as err:
        raise ValueError(f"token_ids must be ints in [0, 2**32): {err}") from err
    digest = hashlib.blake2b(packed, digest_size=16)
    if cache_salt:
        # Length-prefixed so that no salt can collide with a different token sequence.
        salt = cache_salt.encode("utf-8")
        digest.update(struct.pack("<Q", len(salt)) + salt)
    return digest.hexdigest()


class PrefixKeyConfig(BaseModel):
    """How a prompt's prefix key is cut: one config, read by the LLM pool client and the router alike.

    Both must agree, or the session id the client sets and the key the router computes name different
    prefixes; the app builder makes one from ``llm.router.request_router_kwargs`` and hands it to both.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    block_size: int = Field(
        default=DEFAULT_BLOCK_SIZE, ge=1, description="vLLM KV block size in tokens; only whole blocks enter the key."
    )
    max_blocks: int = Field(default=DEFAULT_MAX_BLOCKS, ge=1, description="Most leading blocks hashed into the key.")

    def key(self, token_ids: Sequence[int], context_end: int | None = None, cache_salt: str | None = None) -> str | None:
        """``prefix_key`` with this config's block size and block cap."""
        return prefix_key(token_ids, self.block_size, self.max_blocks, context_end, cache_salt=cache_salt)


@dataclass(frozen=True, slots=True)
class PromptTokens:
    """What the router needs from an LLM request: its token IDs, context end and cache salt."""

    token_ids: Sequence[int]
    prefix_len: int | None = None
    cache_salt: str | None = None


def extract_prompt_tokens(request: Any) -> PromptTokens | None:
    """The prompt's token IDs, the end of its shared context and its cache salt, from a ``generate``
    argument.

    Accepts the shapes the LLM deployment's ``generate(request)`` is called with: an object with a
    ``prompt_token_ids`` attribute and optional ``prefix_len`` and ``cache_salt`` (``llm.types.
    GenerateRequest``, any pydantic model or dataclass), a dict with the same keys, or a bare
    list/tuple of token IDs. Anything else yields ``None`` (no key): routing must never fail a
    request because of its shape; the replica validates it.
    """
    if isinstance(request, (list, tuple)):
        return PromptTokens(request)
    if isinstance(request, Mapping):
        tokens = request.get("prompt_token_ids")
        prefix_len = request.get("prefix_len")
        cache_salt = request.get("cache_salt")
    else:
        tokens = getattr(request, "prompt_token_ids", None)
        prefix_len = getattr(request, "prefix_len", None)
        cache_salt = getattr(request, "cache_salt", None)
    if not isinstance(tokens, (list, tuple)):
        return None
    if not isinstance(prefix_len, int) or isinstance(prefix_len, bool):
        prefix_len = None
    if not isinstance(cache_salt, str):
        cache_salt = None
    return PromptTokens(tokens, prefix_len, cache_salt)


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    """Where a request goes and why.

    ``reason`` is ``"affinity"`` when the key's owner took it, ``"overflow"`` when the owner was at
    its load bound and a later replica in ring order took it, ``"no_key"`` when the prompt had no
    prefix key and the least loaded replica took it.
    """

    replica_id: str
    reason: RoutingReason


class PrefixAffinityPolicy:
    """Consistent hashing with bounded loads over a changing set of replica ids.

    ``choose`` is a pure function of its arguments; the only state is a cache of the hash ring for the
    last candidate set, because rebuilding a ring (``vnodes`` hashes per replica) on every request
    would cost more than the decision itself while the replica set changes only on scaling events.
    """

    def __init__(self, load_factor: float = DEFAULT_LOAD_FACTOR, vnodes: int = 128) -> None:
        # c >= 1 is what guarantees some replica is under the bound (see ``choose``). c close to 1
        # balances tightly but breaks affinity often; large c approaches plain consistent hashing.
        # See DEFAULT_LOAD_FACTOR for why the default is loose.
        if not load_factor >= 1.0:
            raise ValueError("load_factor must be >= 1.0")
        if vnodes < 1:
            raise ValueError("vnodes must be >= 1")
        self._load_factor = float(load_factor)
        self._vnodes = vnodes
        self._ring_nodes: frozenset[str] = frozenset()
        self._ring = ConsistentHashRing((), vnodes=vnodes)

    @property
    def load_factor(self) -> float:
        return self._load_factor

    def _ring_for(self, candidates: Sequence[str]) -> ConsistentHashRing:
        nodes = frozenset(candidates)
        if nodes != self._ring_nodes:
            # A fresh ring rather than add/remove: the result is identical (points depend only on the
            # node ids), and a rebuild cannot drift from the candidate set.
            self._ring = ConsistentHashRing(sorted(nodes), vnodes=self._vnodes)
            self._ring_nodes = nodes
        return self._ring

    def owner(self, candidates: Sequence[str], key: str) -> str:
        """The replica that owns ``key`` on the ring of ``candidates``, ignoring load."""
        if not candidates:
            raise ValueError("no candidate replicas")
        return self._ring_for(sorted(set(candidates))).lookup(key)

    def preference(self, candidates: Sequence[str], key: str) -> list[str]:
        """``candidates`` in ring order from the owner of ``key``: the order every router process agrees
        on, used to break ties the same way everywhere."""
        if not candidates:
            return []
        return list(self._ring_for(sorted(set(candidates))).preference_list(key))

    def load_bound(self, num_replicas: int, total_in_flight: int) -> int:
        """Most requests a replica may hold before the next one overflows: ceil(c * (m + 1) / n).

        ``m + 1`` counts the request being placed, so with an idle pool the bound is at least 1 and
        the owner always takes its key. The small epsilon keeps float error (1.1 * 10 / 1 =
        11.000000000000002) from adding a whole slot.
        """
        return max(1, math.ceil(self._load_factor * (total_in_flight + 1) / num_replicas - 1e-9))

    def choose(
        self,
        candidates: Sequence[str],
        key: str | None,
        queue_lengths: Mapping[str, int],
    ) -> RoutingDecision:
        """Pick the replica for a request with prefix ``key`` among ``candidates``.

        ``queue_lengths`` holds each candidate's in-flight requests as last known; a missing entry
        counts as 0 (a new replica, or one whose cached length expired: better to try it than to
        starve it). Raises ``ValueError`` when there are no candidates.
        """
        if not candidates:
            raise ValueError("no candidate replicas to route to")
        # Duplicates would count a replica's load twice and skew the bound; order is irrelevant.
        unique = sorted(set(candidates))
        loads = {r: max(0, int(queue_lengths.get(r, 0) or 0)) for r in unique}

        if key is None:
            # No reusable prefix: affinity buys nothing, so balance. (load, id) breaks ties by id so
            # the same inputs always give the same answer.
            least = min(unique, key=lambda r: (loads[r], r))
            return RoutingDecision(least, "no_key")

        bound = self.load_bound(len(unique), sum(loads.values()))
        # Walk the ring from the key's owner. Each replica below the bound is acceptable; taking the
        # first keeps the key on its owner whenever possible, and when the owner is full it sends
        # the overflow to the same successor every time, so a hot prefix warms at most a couple of
        # replicas instead of scattering over all of them.
        #
        # The walk always succeeds: the loads sum to m and n * bound >= c * (m + 1) > m, so at least
        # one replica has load < bound.
        ring = self._ring_for(unique)
        for rank, replica in enumerate(ring.preference_list(key)):
            if loads[replica] < bound:
                return RoutingDecision(replica, "affinity" if rank == 0 else "overflow")
        # Unreachable by the argument above; kept so a future change to the bound fails safe.
        least = min(unique, key=lambda r: (loads[r], r))
        return RoutingDecision(least, "overflow")
