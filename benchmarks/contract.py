"""The HTTP contract (DESIGN.md, "Contracts") as the benchmark harness and the Locust users see it.

- The answer side: ``contract_error`` checks an agent's answer; a 200 whose JSON lacks a contract field counts
  as a failure.
- The request side: the benchmark modes, the request fields that select each one, and its KV isolation.
  Every mode that reuses KV gets its own constant ``cache_salt`` (``<tag>-<mode>-<run id>``), so modes never
  share KV blocks with each other or with an earlier run, while each still reuses its own; the modes that
  must not reuse KV send ``prefix_cache=false`` (the server then salts every request afresh). Conversation
  ids get a per-mode prefix (``<tag>-<mode>-<run id>.``), so modes never continue each other's sessions.
"""

from __future__ import annotations

import re
import time
from typing import Any

__all__ = [
    "REQUIRED_FIELDS",
    "contract_error",
    "MODES",
    "REQUIRED_MODES",
    "SALTED_MODES",
    "BASELINES",
    "SALT_PATTERN",
    "mode_fields",
    "mode_salt",
    "session_prefix",
    "new_run_id",
]

REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "": ("agent", "output", "sources", "usage", "cache", "latency_ms"),
    "usage": ("prompt_tokens", "prefix_cached_tokens", "completion_tokens"),
    "cache": ("hits", "misses", "hit_rate"),
    "latency_ms": ("retrieve", "tokens", "ttft", "generate", "total"),
}


def contract_error(body: Any, agent: str | None = None) -> str | None:
    """What is wrong with an agent's answer, or None when it honours the contract."""
    if not isinstance(body, dict):
        return f"answer is {type(body).__name__}, not an object"
    for section, names in REQUIRED_FIELDS.items():
        holder = body if not section else body.get(section)
        if not isinstance(holder, dict):
            return f"missing field {section!r}"
        for name in names:
            if name not in holder:
                return f"missing field {section + '.' if section else ''}{name}"
    if agent is not None and body["agent"] != agent:
        return f"agent is {body['agent']!r}, expected {agent!r}"
    if not isinstance(body["sources"], list):
        return "sources is not a list"
    return None


# -- request modes ------------------------------------------------------------------------------------------

MODES: tuple[str, ...] = ("plain_rag", "no_reuse", "token_cache", "full")
REQUIRED_MODES: tuple[str, ...] = ("plain_rag", "full")  # the headline compares these two
SALTED_MODES: tuple[str, ...] = ("plain_rag", "full")  # reuse KV, within their own constant salt

# What each mode is, in words (written into the results file and the audit).
BASELINES: dict[str, str] = {
    "plain_rag": "the peer, what users run instead: plain RAG on vLLM (use_cache=false). The prompt is text "
                 "in retrieval order, tokenized on every request, no token cache; vLLM's prefix cache is on "
                 "(its default), so verbatim repeats and shared prefixes are reused as vLLM reuses them. "
                 "Follow-up turns re-send the conversation as text, as a plain RAG client does. Own constant "
                 "cache_salt: it reuses its own KV only.",
    "no_reuse": "reference point, the old baseline: plain RAG (use_cache=false) with prefix_cache=false, "
                "i.e. a fresh salt per request, so no KV is ever reused. Nobody runs this; it shows what "
                "any KV reuse is worth.",
    "token_cache": "the token cache alone: use_cache=true (prompts assembled from cached token IDs in a "
                   "prefix-stable order, sessions extend exact token IDs) but prefix_cache=false (a fresh "
                   "salt per request, no KV reuse). Isolates what skipping tokenization saves.",
    "full": "everything on: use_cache=true with the token-ID cache, prefix-stable chunk order, session "
            "turns extended as exact token IDs, prefix-affinity routing and vLLM's prefix cache. Own "
            "constant cache_salt: it reuses its own KV only.",
}

SALT_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")  # cache_salt and session_id, DESIGN.md


def new_run_id(now: float | None = None) -> str:
    """A run id from the wall clock (UTC, to the millisecond): salts with it never match an earlier run's,
    so a run never starts on KV an earlier run left in the engines."""
    now = time.time() if now is None else now
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now * 1000) % 1000:03d}Z"


def _checked(value: str, what: str) -> str:
    if not SALT_PATTERN.match(value):
        raise ValueError(f"{what} {value!r} is not 1-128 characters of [A-Za-z0-9._:-]")
    return value


def mode_salt(mode: str, run_id: str, tag: str = "bench") -> str | None:
    """The constant ``cache_salt`` of a mode in one run, or None for the modes that send
    ``prefix_cache=false`` (the server salts each of their requests afresh)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    return _checked(f"{tag}-{mode}-{run_id}", "cache_salt") if mode in SALTED_MODES else None


def session_prefix(mode: str, run_id: str, tag: str = "bench") -> str:
    """What goes before a traffic item's session id in this mode: modes never share a conversation."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    return _checked(f"{tag}-{mode}-{run_id}.", "session prefix")


def mode_fields(mode: str, run_id: str, tag: str = "bench") -> dict[str, Any]:
    """The request fields that select a mode (``run_id`` and ``tag`` name its salt)."""
    if mode == "plain_rag":
        return {"use_cache": False, "cache_salt": mode_salt(mode, run_id, tag)}
    if mode == "no_reuse":
        return {"use_cache": False, "prefix_cache": False}
    if mode == "token_cache":
        return {"use_cache": True, "prefix_cache": False}
    if mode == "full":
        return {"use_cache": True, "cache_salt": mode_salt(mode, run_id, tag)}
    raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
