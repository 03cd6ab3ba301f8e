"""The agent routes' answer contract (DESIGN.md, "Contracts"), checked the same way by the benchmark
harness and the Locust users: a 200 whose JSON lacks a contract field counts as a failure."""

from __future__ import annotations

from typing import Any

__all__ = ["REQUIRED_FIELDS", "contract_error"]

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
