"""Token cache: chunk text -> the served model's token IDs, computed once, shared across tiers.

A pure library: of ours it imports only ``tokenization`` (tokenizer backends) and ``routing`` (the hash
ring). No Ray or Serve imports here; ``deployments/cache_group.py`` wraps ``CacheShard`` as a Serve
deployment. Every ``hit_rate`` it reports is a fraction 0..1.
"""

from cache.breaker import BreakerState, CircuitBreaker
from cache.client import TokenCache
from cache.codec import decode_tokens, encode_tokens
from cache.config import TokenCacheConfig, redis_tier_from_config
from cache.exceptions import (
    BackendTimeoutError,
    BackendUnavailableError,
    CorruptEntryError,
    ShardUnavailableError,
    TokenCacheError,
)
from cache.keys import ChunkKey, ChunkRef, hash_content
from cache.lookup import TokenLookup
from cache.lru import ByteBoundedLRU
from cache.redis_tier import RedisTier
from cache.shard import CacheShard, LocalShardClient, ShardClient
from cache.singleflight import SingleFlight
from cache.stats import LatencyReservoir, TierCounters, TierStats, TokenCacheStats
from tokenization import HuggingFaceTokenizer, TiktokenTokenizer, TokenizerBackend  # re-exported

__all__ = [
    "BackendTimeoutError",
    "BackendUnavailableError",
    "BreakerState",
    "ByteBoundedLRU",
    "CacheShard",
    "ChunkKey",
    "ChunkRef",
    "CircuitBreaker",
    "CorruptEntryError",
    "HuggingFaceTokenizer",
    "LatencyReservoir",
    "LocalShardClient",
    "RedisTier",
    "ShardClient",
    "ShardUnavailableError",
    "SingleFlight",
    "TiktokenTokenizer",
    "TierCounters",
    "TierStats",
    "TokenCache",
    "TokenCacheConfig",
    "TokenCacheError",
    "TokenCacheStats",
    "TokenLookup",
    "TokenizerBackend",
    "decode_tokens",
    "encode_tokens",
    "hash_content",
    "redis_tier_from_config",
]
