"""Fuzz the real app from its own OpenAPI schema (schemathesis + hypothesis): no input may cause a 5xx.

Every operation in ``/openapi.json`` gets valid (positive) and invalid (negative) cases, a bounded
number in all (``TCRAG_FUZZ_EXAMPLES``, default 160) within a time budget (``TCRAG_FUZZ_BUDGET_S``,
default 180 s, shared out across operations); cases past an operation's share are generated but not sent. Valid
``max_tokens`` values are capped at 4 so generation stays fast on a CPU engine. The counts are printed.
"""

from __future__ import annotations

import os
import sys
import time

import pytest

pytestmark = pytest.mark.e2e

TOTAL_EXAMPLES = int(os.environ.get("TCRAG_FUZZ_EXAMPLES", "160"))
BUDGET_S = float(os.environ.get("TCRAG_FUZZ_BUDGET_S", "180"))
MAX_TOKENS_CAP = 4
# Operations the fuzzer must not drive: none today. Writes are safe to fuzz because a random collection
# name is a 404 and the real collections' names are not in the schema.
SKIP_OPERATIONS: set[str] = set()


def _cap_generation(case) -> None:
    body = case.body
    if isinstance(body, dict):
        for name in ("max_tokens", "max_completion_tokens"):
            value = body.get(name)
            # Only valid values are capped (an invalid one must reach the app unchanged to be refused); JSON
            # 1774.0 is a valid integer to pydantic, so integral floats are capped too.
            if (isinstance(value, int | float) and not isinstance(value, bool) and float(value).is_integer()
                    and 1 <= value <= 4096):
                body[name] = min(int(value), MAX_TOKENS_CAP)
        # A chat completion without a max generates what the context leaves (as on vLLM): cap it too.
        if "messages" in body and body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
            body["max_completion_tokens"] = MAX_TOKENS_CAP


def test_no_input_from_the_schema_causes_a_5xx(base_url):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable

    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    operations = [op for op in operations if op.label not in SKIP_OPERATIONS]
    # Cheap operations first, generating ones (seconds per valid case) last, so the budget cuts the latter.
    operations.sort(key=lambda op: ("/v1/agents/" in op.label or "completions" in op.label, op.label))
    assert len(operations) >= 10, [op.label for op in operations]
    modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    per_run = max(2, TOTAL_EXAMPLES // (len(operations) * len(modes)))
    started = time.monotonic()
    tried: dict[str, int] = {}
    server_errors: list[str] = []
    over_budget = 0
    no_cases: list[str] = []  # (operation, mode) pairs with nothing to generate, e.g. invalid input for GET /healthz

    for index, op in enumerate(operations):
        # Cumulative deadlines: every operation gets its share of the budget, plus what cheaper ones left.
        op_deadline = started + BUDGET_S * (index + 1) / len(operations)
        for mode in modes:

            @settings(max_examples=per_run, deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def run(case) -> None:
                nonlocal over_budget
                if time.monotonic() > op_deadline:
                    over_budget += 1
                    return
                _cap_generation(case)
                response = case.call(base_url=base_url, timeout=150)
                tried[op.label] = tried.get(op.label, 0) + 1
                if response.status_code >= 500:
                    server_errors.append(f"{response.status_code} {op.label} body={case.body!r:.300} "
                                         f"query={case.query!r:.100} -> {response.text[:300]}")

            try:
                run()
            except Unsatisfiable:
                no_cases.append(f"{op.label} ({mode.value})")

    total = sum(tried.values())
    line = (f"[fuzz] {total} cases sent over {len(tried)} of {len(operations)} operations in "
            f"{time.monotonic() - started:.0f} s ({over_budget} generated after the budget, not sent); "
            f"5xx: {len(server_errors)}")
    print(line, file=sys.stderr, flush=True)
    print(line)
    for label, count in sorted(tried.items()):
        print(f"[fuzz]   {label}: {count}")
    if no_cases:
        print(f"[fuzz]   nothing to generate for: {', '.join(no_cases)}")
    assert total >= min(TOTAL_EXAMPLES // 2, 50), f"too few cases reached the app: {tried}"
    assert not server_errors, "\n".join(server_errors[:10])
