"""Values passed between the gateway, the agents, the router and the LLM replicas."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from pydantic import StringConstraints

__all__ = ["CacheSalt", "GenerateRequest", "GenerateResult", "StreamDelta", "TokenLogprob"]

CacheSalt = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]
"""vLLM's ``cache_salt`` as our HTTP bodies accept it: requests with different salts never share KV blocks
(a tenant, or a benchmark mode, keeps its own prefix cache); 1-128 characters of ``[A-Za-z0-9._:-]``."""


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """A token-ID prompt for one vLLM replica.

    ``prefix_len`` marks where the shared context ends (system prompt plus retrieved chunks), so the
    prefix-affinity router can key on the part of the prompt that repeats across requests.
    ``cache_salt`` isolates prefix-cache blocks: requests with different salts never share them.
    The sampling fields mean what vLLM's ``SamplingParams`` fields of the same name mean (their defaults
    are vLLM's "off" values); ``logprobs`` asks for that many top alternatives per output token.
    """

    prompt_token_ids: list[int]
    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    stop_token_ids: list[int] = field(default_factory=list)
    cache_salt: str | None = None
    prefix_len: int | None = None
    seed: int | None = None
    request_id: str | None = None
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    ignore_eos: bool = False
    logprobs: int | None = None


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One output position's log-probabilities, as vLLM reports them: ``entries`` are (token id, logprob)
    pairs in vLLM's order (the sampled token first, then the top alternatives by rank; a token appears
    once, so the list is one shorter when the sampled token is also a top alternative)."""

    token_id: int
    logprob: float
    entries: tuple[tuple[int, float], ...]


@dataclass(frozen=True, slots=True)
class StreamDelta:
    """New output tokens of a streamed request; the last delta of a stream has ``result`` set.

    ``logprobs`` (when asked for) are aligned with ``token_ids``; ``num_cached_tokens`` is known from the
    first step on, so a caller that stops reading early (a stop string) still has it."""

    token_ids: list[int]
    result: "GenerateResult | None" = None
    logprobs: list[TokenLogprob] | None = None
    num_cached_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class GenerateResult:
    """What a replica returns: output token IDs plus the accounting that benchmarks and clients need."""

    token_ids: list[int]
    prompt_tokens: int
    num_cached_tokens: int
    completion_tokens: int
    finish_reason: str | None
    ttft_s: float
    total_s: float
    replica_id: str = ""
    logprobs: list[TokenLogprob] | None = None  # aligned with token_ids, when the request asked for them
