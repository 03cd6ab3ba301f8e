"""Locust load test: one user class per agent, realistic bodies, Zipf-popular topics.

    locust -f loadtests/locustfile.py --headless -u 10 -r 5 -t 60s --host http://127.0.0.1:8000 \
        --exit-code-on-error 1

Bodies come from ``benchmarks.workloads`` (the labelled eval queries of each collection, code snippets for
the code agents), drawn Zipf-distributed so popular topics repeat. Support and documentation carry the
most users. A request fails on any non-200 answer or an answer missing a contract field, so Locust's
``--exit-code-on-error`` turns any such answer into a non-zero exit.

Environment knobs: ``TCRAG_LOAD_MAX_TOKENS`` (default 16), ``TCRAG_LOAD_SEED`` (default 0),
``TCRAG_LOAD_TIMEOUT_S`` (per request, default 120).
"""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

from locust import HttpUser, between, task

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere: find `benchmarks`

from benchmarks.contract import contract_error  # noqa: E402
from benchmarks.workloads import AGENT_SPECS, ZipfSampler, build_topics  # noqa: E402

MAX_TOKENS = int(os.environ.get("TCRAG_LOAD_MAX_TOKENS", "16"))
SEED = int(os.environ.get("TCRAG_LOAD_SEED", "0"))
TIMEOUT_S = float(os.environ.get("TCRAG_LOAD_TIMEOUT_S", "120"))

_user_ids = itertools.count()  # a distinct draw stream per simulated user


class _AgentUser(HttpUser):
    """Sends one agent's requests; subclasses name the agent and its weight."""

    abstract = True
    agent: str = ""
    wait_time = between(0.5, 2)

    def on_start(self) -> None:
        self.spec = AGENT_SPECS[self.agent]
        self.sampler = ZipfSampler(build_topics(self.agent), seed=SEED, stream=f"locust-{next(_user_ids)}")

    @task
    def ask(self) -> None:
        topic = self.sampler.one()
        body = {**topic.body, "max_tokens": MAX_TOKENS, "temperature": 0.0}
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
