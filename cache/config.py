"""``TokenCacheConfig``: the settings of one agent's token cache client, and the Redis tier they describe."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cache.redis_tier import RedisTier

__all__ = ["TokenCacheConfig", "redis_tier_from_config"]


class TokenCacheConfig(BaseModel):
    """Settings of one agent's token cache client (the shard group and Redis are shared)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_cache_size_mb: float = Field(
        100.0, gt=0, description="Byte budget of this agent replica's in-process L0 tier, in MiB."
    )
    l0_ttl_s: float | None = Field(
        3600.0, gt=0, description="Seconds an L0 entry lives; None keeps entries until evicted."
    )
    redis_ttl_s: float | None = Field(
        86_400.0, gt=0, description="Seconds a Redis (L2) entry lives; None means no expiry."
    )
    redis_url: str | None = Field(
        None,
        description="Redis URL for the L2 tier, e.g. redis://127.0.0.1:6379/0, or a Redis Cluster as "
        "redis+cluster://host:port[,host:port...] (rediss+cluster:// for TLS); None disables Redis.",
    )
    redis_timeout_s: float = Field(0.2, gt=0, description="Timeout of one Redis round trip, in seconds (see serve_config.yaml for why 0.2).")
    shard_timeout_s: float = Field(0.25, gt=0, description="Timeout of one call to a cache shard, in seconds.")
    write_timeout_s: float = Field(
        1.0, gt=0, description="Timeout of one background write-through to the shards and Redis, in seconds."
    )
    max_pending_writes: int = Field(
        64, ge=1, description="Background write-through tasks allowed at once; beyond it writes are dropped."
    )
    tokenize_batch_size: int = Field(
        256, ge=1, description="Most texts passed to the tokenizer in one batch call."
    )
    shard_failure_threshold: int = Field(
        2, ge=1, description="Consecutive failures of one shard that open its circuit breaker (calls skipped)."
    )
    shard_cooldown_s: float = Field(
        1.0, gt=0, description="Seconds a shard's open breaker waits before one probe call is let through."
    )
    hash_ring_vnodes: int = Field(128, ge=1, description="Virtual nodes per shard on the consistent-hash ring.")
    shard_claim_lease_s: float = Field(
        0.5,
        gt=0,
        description="Seconds a key this replica claimed on its shard (it is computing it) makes other replicas "
        "wait for it; a claim whose owner dies or never writes back lapses after this.",
    )
    shard_claim_wait_s: float | None = Field(
        None,
        ge=0,
        description="Longest a shard lookup waits for keys another replica is computing before computing them "
        "itself; must be below shard_timeout_s. None: min(0.1, shard_timeout_s / 2).",
    )

    @model_validator(mode="after")
    def _claim_wait_under_shard_timeout(self) -> TokenCacheConfig:
        if self.shard_claim_wait_s is not None and self.shard_claim_wait_s >= self.shard_timeout_s:
            raise ValueError("shard_claim_wait_s must be below shard_timeout_s (the wait happens inside a shard call)")
        return self

    @property
    def claim_wait_s(self) -> float:
        """The shard claim wait in effect (see ``shard_claim_wait_s``)."""
        if self.shard_claim_wait_s is not None:
            return self.shard_claim_wait_s
        return min(0.1, self.shard_timeout_s / 2)


def redis_tier_from_config(config: TokenCacheConfig) -> RedisTier | None:
    """The L2 tier described by ``config``, or None when ``redis_url`` is not set."""
    if config.redis_url is None:
        return None
    return RedisTier.from_url(config.redis_url, ttl_s=config.redis_ttl_s, timeout_s=config.redis_timeout_s)
