"""Locust load test: the benchmark's realistic traffic mix, one user class per agent, in one request mode.

    locust -f loadtests/locustfile.py --headless -u 10 -r 5 -t 60s --host http://127.0.0.1:8000 \
        --exit-code-on-error 1 [--tcrag-mode full|plain_rag]

Each simulated user follows its own seeded stream of ``benchmarks.workloads.TrafficGenerator`` for its
agent: the hand-written material in ``data/eval/traffic/`` (first sightings of Zipf-popular topics,
rephrasings and edited code of seen topics, verbatim repeats, follow-up turns of a conversation with its
``session_id``), classes drawn by the mix (``TCRAG_LOAD_MIX``, default the benchmark's). A user's requests
are sequential, so a follow-up always comes after the turns before it. Support and documentation carry the
most users.

The mode (``--tcrag-mode`` or ``TCRAG_LOAD_MODE``, default ``full``): ``full`` (everything on) or
``plain_rag`` (plain RAG on vLLM with its prefix cache on, the peer); the other benchmark modes work too.
Its fields come from ``benchmarks.contract.mode_fields`` with the tag ``locust`` and a run id from the clock
(or ``TCRAG_LOAD_RUN_ID``): each run and mode has its own ``cache_salt`` and session-id prefix, so two runs
(``python -m benchmarks.locust_compare`` runs ``plain_rag`` then ``full``) never share KV or conversations.

A request fails on any non-200 answer or an answer missing a contract field, so Locust's
``--exit-code-on-error`` turns any such answer into a non-zero exit (``make loadtest``).

Environment knobs: ``TCRAG_LOAD_MODE`` (default full), ``TCRAG_LOAD_MIX`` (e.g.
``first=0.2,rephrased=0.4,repeat=0.2,followup=0.2``), ``TCRAG_LOAD_MAX_TOKENS`` (default 16),
``TCRAG_LOAD_SEED`` (default 0), ``TCRAG_LOAD_RUN_ID``, ``TCRAG_LOAD_TIMEOUT_S`` (per request, default 120).
"""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path
from typing import Any

from locust import HttpUser, between, events, task

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere: find `benchmarks`

from benchmarks.contract import MODES, contract_error, mode_fields, new_run_id, session_prefix  # noqa: E402
from benchmarks.workloads import AGENT_SPECS, TrafficGenerator, TrafficMix  # noqa: E402

MAX_TOKENS = int(os.environ.get("TCRAG_LOAD_MAX_TOKENS", "16"))
SEED = int(os.environ.get("TCRAG_LOAD_SEED", "0"))
TIMEOUT_S = float(os.environ.get("TCRAG_LOAD_TIMEOUT_S", "120"))
MIX = TrafficMix.parse(os.environ["TCRAG_LOAD_MIX"]) if os.environ.get("TCRAG_LOAD_MIX") else TrafficMix()
RUN_ID = os.environ.get("TCRAG_LOAD_RUN_ID") or new_run_id()
DEFAULT_MODE = os.environ.get("TCRAG_LOAD_MODE", "full")

_user_ids = itertools.count()  # a distinct traffic stream per simulated user


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    parser.add_argument("--tcrag-mode", choices=MODES, default=DEFAULT_MODE,
                        help="request mode: full (everything on) or plain_rag (the peer); default $TCRAG_LOAD_MODE "
                             "or full")


def _mode(environment: Any) -> str:
    options = getattr(environment, "parsed_options", None)
    mode = getattr(options, "tcrag_mode", None) or DEFAULT_MODE
    if mode not in MODES:
        raise ValueError(f"TCRAG_LOAD_MODE / --tcrag-mode: {mode!r} is not one of {', '.join(MODES)}")
    return mode


@events.test_start.add_listener
def _announce(environment: Any, **_: Any) -> None:
    mode = _mode(environment)
    print(f"[locust] mode {mode}: {mode_fields(mode, RUN_ID, 'locust')}, sessions "
          f"{session_prefix(mode, RUN_ID, 'locust')}*, mix {MIX.shares()}", file=sys.stderr, flush=True)


class _AgentUser(HttpUser):
    """Sends one agent's traffic; subclasses name the agent and its weight."""

    abstract = True
    agent: str = ""
    wait_time = between(0.5, 2)

    def on_start(self) -> None:
        self.spec = AGENT_SPECS[self.agent]
        self.mode = _mode(self.environment)
        self.fields = {**mode_fields(self.mode, RUN_ID, "locust"), "max_tokens": MAX_TOKENS, "temperature": 0.0}
        self.prefix = session_prefix(self.mode, RUN_ID, "locust")
        self.traffic = TrafficGenerator(self.agent, MIX, seed=SEED, stream=f"locust-{next(_user_ids)}")

    @task
    def ask(self) -> None:
        item = self.traffic.next()
        body = item.request_body(self.fields, self.prefix)
        with self.client.post(self.spec.path, json=body, name=self.spec.path, timeout=TIMEOUT_S,
                              catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            try:
                answer = response.json()
            except ValueError:
                response.failure("answer is not JSON")
                return
            problem = contract_error(answer, self.agent)
            if problem:
                response.failure(problem)
            else:
                response.success()


class SupportUser(_AgentUser):
    agent = "support"
    weight = 4


class DocumentationUser(_AgentUser):
    agent = "documentation"
    weight = 4


class BusinessUser(_AgentUser):
    agent = "business"
    weight = 2


class QAUser(_AgentUser):
    agent = "qa"
    weight = 2


class CodeReviewUser(_AgentUser):
    agent = "code-review"
    weight = 2


class SEDarwinUser(_AgentUser):
    agent = "se-darwin"
    weight = 1
