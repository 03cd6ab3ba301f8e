"""Errors of the token cache, grouped by cause.

Tiers translate third-party errors (redis-py, Ray) into these at their boundary with ``raise ... from``.
``TokenCache`` itself never lets a tier error reach its caller: a failing tier counts as a miss and the
lookup falls through to the next tier or to local tokenization.
"""

from __future__ import annotations

__all__ = [
    "TokenCacheError",
    "BackendUnavailableError",
    "BackendTimeoutError",
    "CorruptEntryError",
    "ShardUnavailableError",
]


class TokenCacheError(Exception):
    """Base of every token cache error."""


class BackendUnavailableError(TokenCacheError):
    """A storage backend (Redis) cannot be reached, or its circuit breaker is open.

    Raised by a tier when the connection is refused or dropped. A retry helps only later, after the
    backend is back; the circuit breaker decides when to try again.
    """


class BackendTimeoutError(TokenCacheError):
    """A backend call did not answer within its ``timeout_s``.

    The backend may be overloaded or hung. An immediate retry rarely helps; repeated timeouts open
    the circuit breaker.
    """


class CorruptEntryError(TokenCacheError):
    """A stored value failed decoding: bad magic, unknown version, wrong length or checksum mismatch.

    Raised by ``codec.decode_tokens``. Retrying the read does not help; the entry must be treated as a
    miss, rebuilt by tokenizing, and rewritten.
    """


class ShardUnavailableError(TokenCacheError):
    """A cache shard (a Ray actor in the shard group) failed, died or timed out.

    Raised by ``ShardClient`` implementations. Serve restarts a dead shard replica, so a later retry
    helps; the current lookup falls through to Redis or local tokenization instead of waiting.
    """
