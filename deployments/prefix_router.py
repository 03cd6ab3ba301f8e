"""Ray Serve request router for the vLLM pool: prefix affinity with bounded loads.

Thin adapter: it turns Ray's pending request into a prefix key and Ray's replica queue-length cache
into a plain mapping, asks ``routing.prefix_affinity.PrefixAffinityPolicy`` for a decision, and turns
the decision back into Ray's ranked tiers. The policy itself lives, and is tested, without Ray.

Configure it on the LLM deployment (``serve_config.yaml``)::

    request_router_config:
      request_router_class: deployments.prefix_router:PrefixAffinityRouter
      request_router_kwargs: {load_factor: 2.0, block_size: 16, max_blocks: 64, vnodes: 128,
                              kv_routing: {enabled: false}}

With ``kv_routing.enabled`` (and ``llm.kv_events.enabled`` on the replicas) the decision is
``routing.kv_policy.KVAwarePolicy``'s instead: the replicas' KV events, read by a subscriber per router
process (``deployments/kv_subscriber.py``), say which blocks each holds; it falls back to the affinity
policy while the index is cold. Not yet run in a live app. It then also exports, per replica unique id,
the index's resident blocks and status and the prompt tokens it predicted cached
(``routing/kv_metrics.py``), to compare with the replicas' own ``tcrag_llm_prefix_cached_tokens``.

One router instance runs in every process that holds a handle to the LLM deployment (each agent
replica, the gateway, the proxy); they agree on the owner of a key without talking to each other
because the ring is a pure function of the replica ids, which every router gets from the controller.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica
from ray.util import metrics

from deployments.kv_subscriber import KVEventSubscriber, ReplicaEndpoints
from routing.kv_index import KVBlockIndex
from routing.kv_metrics import KVIndexMetrics, MetricsFactory
from routing.kv_policy import KVAwarePolicy, KVPolicyConfig, KVRoutingDecision, LoadTracker
from routing.prefix_affinity import (
    DEFAULT_LOAD_FACTOR,
    PrefixAffinityPolicy,
    PrefixKeyConfig,
    PromptTokens,
    extract_prompt_tokens,
)

if TYPE_CHECKING:
    from ray.serve._private.replica_result import ReplicaResult

__all__ = ["KVRoutingArgs", "PrefixAffinityRouter", "PrefixRouterConfig", "RayMetricsFactory"]

logger = logging.getLogger(__name__)


class KVRoutingArgs(BaseModel):
    """Route by the replicas' KV-cache events (issue 15). Needs ``llm.kv_events.enabled`` on the replicas;
    off by default, and without events the decision stays the affinity policy's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=False, description="Score replicas by the KV blocks their events report.")
    policy: KVPolicyConfig = Field(default_factory=KVPolicyConfig, description="Scoring knobs (routing.kv_policy).")
    replay_timeout_s: float = Field(default=1.0, gt=0, description="Wait for a replica's replay answer.")
    metrics_interval_s: float = Field(
        default=5.0, ge=0, description="Refresh the index gauges (routing.kv_metrics) at most this often.",
    )


class PrefixRouterConfig(PrefixKeyConfig):
    """``request_router_kwargs`` of ``PrefixAffinityRouter``, validated once at router start.

    The prefix-key fields (``block_size``, ``max_blocks``) are inherited: the same config the LLM pool
    client keys its session ids with.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    load_factor: float = Field(
        default=DEFAULT_LOAD_FACTOR,
        ge=1.0,
        description="c in the load bound ceil(c * (in_flight + 1) / replicas); 1.0 is strict balance.",
    )
    vnodes: int = Field(default=128, ge=1, description="Virtual nodes per replica on the hash ring.")
    kv_routing: KVRoutingArgs = Field(default_factory=KVRoutingArgs, description="KV-event routing (off by default).")


class RayMetricsFactory:
    """``routing.kv_metrics.MetricsFactory`` over ``ray.util.metrics``, every metric carrying ``default_tags``."""

    def __init__(self, default_tags: dict[str, str]) -> None:
        self._default_tags = dict(default_tags)

    def _keys(self, tag_keys: Sequence[str]) -> tuple[str, ...]:
        return (*self._default_tags, *(k for k in tag_keys if k not in self._default_tags))

    def gauge(self, name: str, description: str, tag_keys: Sequence[str]) -> metrics.Gauge:
        return metrics.Gauge(name, description=description, tag_keys=self._keys(tag_keys)).set_default_tags(
            self._default_tags)

    def counter(self, name: str, description: str, tag_keys: Sequence[str]) -> metrics.Counter:
        return metrics.Counter(name, description=description, tag_keys=self._keys(tag_keys)).set_default_tags(
            self._default_tags)


class _KVRouting:
    """The router's KV-event state: index, subscriber, this router's load estimates, the policy.

    Each router process keeps its own (they agree only through the events, which every router sees).
    Loads count the requests this router placed, from routing to completion (Ray reports no first
    token to routers, so a decoding request still counts its prefill): an estimate, not the truth.
    """

    _MAX_MEMO = 10_000

    def __init__(self, config: PrefixRouterConfig, fallback: PrefixAffinityPolicy,
                 metrics_factory: MetricsFactory) -> None:
        self.index = KVBlockIndex()
        self.tracker = LoadTracker()
        self.policy = KVAwarePolicy(self.index, fallback, config.kv_routing.policy,
                                    fallback_key_block_size=config.block_size,
                                    fallback_key_max_blocks=config.max_blocks)
        self.metrics = KVIndexMetrics(self.index, metrics_factory, config.kv_routing.metrics_interval_s)
        self._replay_timeout_s = config.kv_routing.replay_timeout_s
        self.subscriber: KVEventSubscriber | None = None
        self._task: asyncio.Task[None] | None = None
        # internal request id -> (decision, prompt tokens, decode tokens), from choose to on_request_routed
        self.memo: OrderedDict[str, tuple[KVRoutingDecision, int, int]] = OrderedDict()

    def sync(self, replicas: list[RunningReplica], running: set[str]) -> None:
        """Connect to the candidates' publishers as ``record_routing_stats`` reveals them, and drop the
        replicas no longer ``running`` (on the router's loop)."""
        if self.subscriber is None or self._task is None or self._task.done():
            self.subscriber = self.subscriber or KVEventSubscriber(self.index, self._replay_timeout_s)
            self._task = asyncio.get_running_loop().create_task(self.subscriber.run())
        for replica in replicas:
            rid = replica.replica_id.unique_id
            stats = getattr(replica, "routing_stats", None) or {}
            endpoints = stats.get("kv_events") if isinstance(stats, dict) else None
            if isinstance(endpoints, dict) and endpoints.get("endpoint"):
                self.subscriber.connect(rid, ReplicaEndpoints(endpoints["endpoint"], endpoints.get("replay_endpoint")))
        left = [rid for rid in self.subscriber.connected() if rid not in running]
        for rid in left:
            self.subscriber.disconnect(rid)
            self.tracker.remove_replica(rid)
        if left:
            self.metrics.refresh()  # their gauges drop to 0 now rather than at the next refresh

    def remember(self, request_id: str, decision: KVRoutingDecision, prompt_tokens: int, decode_tokens: int) -> None:
        self.memo[request_id] = (decision, prompt_tokens, decode_tokens)
        self.memo.move_to_end(request_id)
        while len(self.memo) > self._MAX_MEMO:  # requests cancelled before routing never come back
            self.memo.popitem(last=False)


class PrefixAffinityRouter(RequestRouter):
    """Routes LLM ``generate(request)`` calls by the prompt's token prefix; see the module docstring.

    Returns two tiers: the policy's choice, then every other replica. Ray tries the first tier and,
    only if that replica is at ``max_ongoing_requests`` (or does not answer its queue-length probe),
    the least loaded of the second, so a request is never stuck behind a full replica. The first
    attempt for a keyed request offers the chosen replica alone (see ``choose_replicas``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._config = PrefixRouterConfig()
        self._policy = PrefixAffinityPolicy(self._config.load_factor, self._config.vnodes)
        self._kv: _KVRouting | None = None
        self._routed_counter = metrics.Counter(
            "tcrag_prefix_router_requests_routed",
            description="LLM requests placed by the prefix-affinity router, by replica and reason.",
            tag_keys=("deployment", "replica", "reason"),
        ).set_default_tags({"deployment": self._deployment_id.name})
        # Makes the KV-routing metrics (routing.kv_metrics) once kv_routing is on; tests swap in a fake.
        self._kv_metrics_factory: MetricsFactory = RayMetricsFactory({"deployment": self._deployment_id.name})

    def initialize_state(self, **kwargs: Any) -> None:
        """Called by Serve with ``request_router_config.request_router_kwargs``."""
        try:
            self._config = PrefixRouterConfig(**kwargs)
        except ValidationError as err:
            raise ValueError(f"invalid request_router_kwargs for PrefixAffinityRouter: {err}") from err
        self._policy = PrefixAffinityPolicy(self._config.load_factor, self._config.vnodes)
        self._kv = (_KVRouting(self._config, self._policy, self._kv_metrics_factory)
                    if self._config.kv_routing.enabled else None)
        logger.info("PrefixAffinityRouter for %s: %s", self._deployment_id, self._config)

    @staticmethod
    def _request(pending_request: PendingRequest | None) -> Any:
        """The request object the LLM deployment's ``generate(request)`` will receive: Serve resolves
        ``DeploymentResponse`` arguments before routing, so it is ``args[0]``."""
        if pending_request is None:
            return None
        if pending_request.args:
            return pending_request.args[0]
        return pending_request.kwargs.get("request")

    def _prompt(self, pending_request: PendingRequest | None) -> PromptTokens | None:
        return extract_prompt_tokens(self._request(pending_request))

    def _request_key(self, pending_request: PendingRequest | None) -> str | None:
        """The prefix key of the request's prompt, or None when it has none or is not recognised."""
        prompt = self._prompt(pending_request)
        if prompt is None:
            return None
        try:
            return self._config.key(prompt.token_ids, context_end=prompt.prefix_len, cache_salt=prompt.cache_salt)
        except ValueError:
            # Malformed token IDs: the replica will reject the request with a proper error; routing
            # it anywhere is fine.
            logger.debug("no prefix key for request %s", pending_request.metadata.request_id)
            return None

    async def _queue_lengths(self, replicas: list[RunningReplica]) -> dict[str, int]:
        """In-flight requests per replica id, as Ray's own routers see them.

        Ray keeps a per-router cache of replica queue lengths: set from each replica's answer when a
        request is sent (the rejection protocol reports ``num_ongoing_requests``), bumped on send,
        decremented on completion, and expired after ``RAY_SERVE_QUEUE_LENGTH_CACHE_TIMEOUT_S``
        (10 s). Like Ray's PrefixCacheAffinityRouter we read the cache and actively probe only the
        replicas that are missing from it (new, expired, or the cache is off under Ray Client); a
        replica that does not answer the probe counts as 0 here and is skipped by Ray's own
        selection step, which probes again.
        """
        lengths: dict[str, int] = {}
        missing: list[RunningReplica] = []
        for replica in replicas:
            queue_len = (
                self._replica_queue_len_cache.get(replica.replica_id)
                if self._use_replica_queue_len_cache
                else None
            )
            if queue_len is None:
                missing.append(replica)
            else:
                lengths[replica.replica_id.unique_id] = queue_len
        if missing:
            for replica, queue_len in await self._probe_queue_lens(missing, 0):
                if queue_len is not None:
                    lengths[replica.replica_id.unique_id] = queue_len
        return lengths

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        # The routing context of a new request starts with should_backoff=False, and Ray's retry loop
        # re-calls choose_replicas without sleeping while it is False (that is meant for the
        # locality tiers); with every replica full it would spin on queue-length probes. So we set
        # it on the first call, which also makes it our stateless "first attempt" flag.
        first_attempt = pending_request is None or not pending_request.routing_context.should_backoff
        if pending_request is not None:
            pending_request.routing_context.should_backoff = True

        # The ring is keyed by ReplicaID.unique_id: stable for a replica's lifetime and the same in
        # every router process, so all routers agree on each key's owner.
        by_id = {replica.replica_id.unique_id: replica for replica in candidate_replicas}
        key = self._request_key(pending_request)
        lengths = await self._queue_lengths(candidate_replicas)
        prompt = self._prompt(pending_request) if self._kv is not None else None
        if self._kv is not None and prompt is not None and pending_request is not None:
            # Reads the index as it is now; the subscriber updates it in the background.
            self._kv.sync(candidate_replicas, set(by_id) | set(self._replicas_by_unique_id()))
            kv_decision = self._kv.policy.choose(list(by_id), prompt, self._kv.tracker.loads(), lengths)
            max_tokens = getattr(self._request(pending_request), "max_tokens", None)
            self._kv.remember(pending_request.metadata.internal_request_id, kv_decision, len(prompt.token_ids),
                              max_tokens if isinstance(max_tokens, int) else 0)
            self._kv.metrics.maybe_refresh()  # one pass over the index's replicas, at most every few seconds
            chosen_id = kv_decision.replica_id
        else:
            chosen_id = self._policy.choose(list(by_id), key, lengths).replica_id

        chosen = by_id[chosen_id]
        others = [replica for rid, replica in by_id.items() if rid != chosen_id]
        if not others or (key is not None and first_attempt):
            # First attempt: the chosen replica alone. Ray skips a replica whose queue-length probe
            # misses its 0.1 s deadline (a cold or CPU-starved replica), and with the other replicas
            # in a second tier that miss alone would send the request, and its prefix, elsewhere.
            # Offering only the chosen replica makes Ray retry at once with a doubled deadline; from
            # the retry on, the others follow as the fallback tier for a full replica.
            return [[chosen]]
        return [[chosen], others]

    def on_request_routed(
        self,
        pending_request: PendingRequest,
        replica_id: ReplicaID,
        result: ReplicaResult,
    ) -> None:
        """Ray calls this once the replica accepted the request: count the actual placement.

        The reason is recomputed rather than remembered from ``choose_replicas``: a request can be
        chosen several times (full replicas, rejections) and a per-request memo would need cleanup
        on paths Ray does not report (cancellation before routing). Recomputing costs one hash.
        Under Ray Client, where the rejection protocol is off, Ray does not call this hook and the
        counter stays at zero.
        """
        replica = replica_id.unique_id
        if self._kv is not None:
            memo = self._kv.memo.pop(pending_request.metadata.internal_request_id, None)
            if memo is not None:
                decision, prompt_tokens, decode = memo
                # Ray may have placed it off the chosen replica (full): count what the policy believed there.
                predicted = decision.predicted_cached_tokens(replica)
                self._kv.tracker.routed(pending_request.metadata.internal_request_id, replica,
                                        max(1, prompt_tokens - predicted), decode)
                self._kv.metrics.routed(replica, predicted)
                self._routed_counter.inc(tags={"replica": replica, "reason": decision.reason})
                return
        key = self._request_key(pending_request)
        if key is None:
            reason = "no_key"
        elif self._policy.owner(list(self._replicas_by_unique_id()), key) == replica:
            reason = "affinity"
        else:
            # Placed off the key's owner: by our load bound, or by Ray because the owner was at
            # max_ongoing_requests or did not answer its probe.
            reason = "overflow"
        self._routed_counter.inc(tags={"replica": replica, "reason": reason})

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        """Ray calls this when a request finished (or failed): its work leaves the replica's load."""
        if self._kv is not None:
            self._kv.tracker.finished(internal_request_id)

    def _replicas_by_unique_id(self) -> dict[str, RunningReplica]:
        return {replica_id.unique_id: r for replica_id, r in self.curr_replicas.items()}
