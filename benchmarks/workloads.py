"""Benchmark and load-test workloads: realistic request bodies per agent, drawn Zipf-distributed.

The topic pool of each agent is the labelled queries in ``data/eval/<collection>.jsonl`` (the queries the
retrieval evaluation uses), turned into that agent's request body: a support question, a documentation
lookup, a business brief, code to test, code to review, an evolution task with a candidate program.
Popularity follows Zipf's law (P(rank k) proportional to 1/k^s, s about 1.1) over a seeded permutation of
the topics, so a few topics repeat often and a long tail shows up once, like real support traffic.

Everything here is pure and seeded: the harness, Locust and the unit tests build the same workloads.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "AGENT_SPECS",
    "AgentSpec",
    "Topic",
    "ZipfSampler",
    "build_topics",
    "covering_order",
    "covered_warmup",
    "router_workload",
    "load_eval_queries",
    "zipf_weights",
    "DEFAULT_DATA_DIR",
]

DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent / "data"
DEFAULT_ZIPF_S = 1.1


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """Where an agent is served and which collection its topics come from."""

    name: str
    path: str  # POST route
    collection: str


AGENT_SPECS: dict[str, AgentSpec] = {
    spec.name: spec
    for spec in (
        AgentSpec("support", "/v1/agents/support/answer", "support_kb"),
        AgentSpec("documentation", "/v1/agents/documentation/lookup", "documentation"),
        AgentSpec("business", "/v1/agents/business/generate", "business_templates"),
        AgentSpec("qa", "/v1/agents/qa/generate-tests", "test_templates"),
        AgentSpec("code-review", "/v1/agents/code-review/review", "code_patterns"),
        AgentSpec("se-darwin", "/v1/agents/se-darwin/evolve", "darwin_operators"),
    )
}


@dataclass(frozen=True, slots=True)
class Topic:
    """One distinct request an agent's users send (the body without the shared knobs)."""

    agent: str
    key: str  # the eval label it came from, stable across runs
    body: dict[str, Any] = field(hash=False)


def load_eval_queries(collection: str, data_dir: Path = DEFAULT_DATA_DIR) -> list[dict[str, str]]:
    """The labelled queries of one collection: ``[{"query": ..., "expected_doc": ...}, ...]``."""
    path = Path(data_dir) / "eval" / f"{collection}.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{"query": r["query"], "expected_doc": r.get("expected_doc", "")} for r in rows]


# -- payload builders: realistic bodies for the code-centric agents ----------------------------------------

# Functions a QA user asks tests for; the test templates' eval label picks the test type.
_QA_CODE = (
    "def slugify(title: str) -> str:\n"
    "    \"\"\"Lowercase, ASCII-only, words joined by dashes.\"\"\"\n"
    "    words = ''.join(c if c.isalnum() else ' ' for c in title.lower()).split()\n"
    "    return '-'.join(words)\n",
    "def parse_duration(text: str) -> int:\n"
    "    \"\"\"'1h30m' -> 5400 seconds; raises ValueError on junk.\"\"\"\n"
    "    units = {'h': 3600, 'm': 60, 's': 1}\n"
    "    total, number = 0, ''\n"
    "    for ch in text.strip():\n"
    "        if ch.isdigit():\n"
    "            number += ch\n"
    "        elif ch in units and number:\n"
    "            total, number = total + int(number) * units[ch], ''\n"
    "        else:\n"
    "            raise ValueError(f'bad duration: {text!r}')\n"
    "    return total\n",
    "import httpx\n\n"
    "async def fetch_user(client: httpx.AsyncClient, user_id: int) -> dict:\n"
    "    response = await client.get(f'/users/{user_id}', timeout=5.0)\n"
    "    response.raise_for_status()\n"
    "    return response.json()\n",
    "import click\n\n"
    "@click.command()\n"
    "@click.argument('name')\n"
    "@click.option('--shout', is_flag=True)\n"
    "def greet(name: str, shout: bool) -> None:\n"
    "    message = f'Hello, {name}!'\n"
    "    click.echo(message.upper() if shout else message)\n",
    "from datetime import datetime, timezone\n\n"
    "def is_expired(expires_at: datetime) -> bool:\n"
    "    return datetime.now(timezone.utc) >= expires_at\n",
    "import json, os\n\n"
    "def load_settings(path: str) -> dict:\n"
    "    with open(path) as handle:\n"
    "        settings = json.load(handle)\n"
    "    settings['debug'] = os.environ.get('APP_DEBUG') == '1'\n"
    "    return settings\n",
)

_QA_TYPE_BY_LABEL = (  # substring of the eval label -> test type (first match wins)
    ("property", "property"), ("fuzz", "fuzz"), ("load-test", "load"), ("contract", "contract"),
    ("snapshot", "snapshot"), ("regression", "regression"), ("database-integration", "integration"),
    ("mocking-http", "integration"), ("async", "unit"),
)

# Code a reviewer would flag, keyed by the code-pattern document it should retrieve.
_REVIEW_CODE: dict[str, tuple[str, str]] = {
    "mutable-default-arguments": ("python", "def add_tag(tag, tags=[]):\n    tags.append(tag)\n    return tags\n"),
    "bare-except-clauses": ("python", "while True:\n    try:\n        process(queue.get())\n    except:\n        pass\n"),
    "sql-injection-string-formatting": (
        "python", "def find(db, slug):\n    return db.execute(f\"SELECT * FROM posts WHERE slug = '{slug}'\")\n"),
    "hard-coded-secrets": ("python", "API_KEY = 'sk_live_51Habc123'\nclient = Client(api_key=API_KEY)\n"),
    "missing-timeouts-on-network-calls": (
        "python", "import requests\n\ndef price(sku):\n    return requests.get(f'https://api/prices/{sku}').json()\n"),
    "blocking-calls-in-async-code": (
        "python", "import time, requests\n\nasync def poll(url):\n    time.sleep(1)\n    return requests.get(url).text\n"),
    "float-arithmetic-for-money": ("python", "def total(prices):\n    return sum(p * 1.2 for p in prices)  # VAT\n"),
    "n-plus-one-queries": (
        "python", "for order in Order.objects.all():\n    print(order.customer.name, order.customer.email)\n"),
    "race-condition-shared-state": (
        "python", "counter = 0\n\ndef worker():\n    global counter\n    for _ in range(1000):\n        counter += 1\n"),
    "resource-leak-without-context-manager": (
        "python", "def read_lines(path):\n    f = open(path)\n    return f.read().splitlines()\n"),
    "shadowing-builtins": ("python", "def summarize(list, id):\n    dict = {}\n    return len(list), id, dict\n"),
    "string-concatenation-in-loops": (
        "python", "def render(rows):\n    out = ''\n    for row in rows:\n        out += ','.join(row) + '\\n'\n"
        "    return out\n"),
    "swallowed-errors": (
        "javascript", "async function save(doc) {\n  try {\n    await db.put(doc);\n  } catch (e) {}\n}\n"),
    "unbounded-caches": ("python", "_cache = {}\n\ndef lookup(key):\n    if key not in _cache:\n"
                                   "        _cache[key] = expensive(key)\n    return _cache[key]\n"),
    "missing-input-validation": (
        "python", "@app.post('/transfer')\ndef transfer(body: dict):\n    move(body['from'], body['to'], body['amount'])\n"),
    "wildcard-and-overly-broad-imports": ("python", "from os import *\nfrom utils import *\n\nprint(path.join('a', 'b'))\n"),
}

# Candidate programs an evolutionary loop would hand SE-Darwin.
_DARWIN_CANDIDATES = (
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "def best_threshold(scores, labels):\n    t = 0.5\n    return sum((s > t) == l for s, l in zip(scores, labels)) / len(labels)\n",
    "def dedupe(items):\n    out = []\n    for x in items:\n        if x not in out:\n            out.append(x)\n    return out\n",
    "def clamp(x, lo, hi):\n    if x < lo:\n        return lo\n    else:\n        if x > hi:\n            return hi\n"
    "        else:\n            return x\n",
    "def mean(xs):\n    total = 0\n    for x in xs:\n        total = total + x\n    return total / len(xs)\n",
)


def _qa_type(label: str) -> str:
    return next((t for key, t in _QA_TYPE_BY_LABEL if key in label), "unit")


def _body(agent: str, index: int, row: dict[str, str]) -> dict[str, Any]:
    query, label = row["query"], row["expected_doc"]
    if agent in ("support", "documentation"):
        return {"query": query}
    if agent == "business":
        return {"brief": query}
    if agent == "qa":
        code = f"# {query}\n" + _QA_CODE[index % len(_QA_CODE)]
        return {"code": code, "test_type": _qa_type(label)}
    if agent == "code-review":
        language, code = _REVIEW_CODE.get(label, ("python", f"# {query}\n" + _QA_CODE[index % len(_QA_CODE)]))
        return {"code": code, "language": language}
    if agent == "se-darwin":
        return {"task": query, "candidate": _DARWIN_CANDIDATES[index % len(_DARWIN_CANDIDATES)]}
    raise KeyError(f"unknown agent {agent!r}")


def build_topics(agent: str, data_dir: Path = DEFAULT_DATA_DIR) -> list[Topic]:
    """Every distinct request body of one agent, in the eval file's order."""
    rows = load_eval_queries(AGENT_SPECS[agent].collection, data_dir)
    return [Topic(agent, row["expected_doc"] or str(i), _body(agent, i, row)) for i, row in enumerate(rows)]


# -- Zipf ---------------------------------------------------------------------------------------------------

def zipf_weights(n: int, s: float = DEFAULT_ZIPF_S) -> list[float]:
    """Normalized Zipf probabilities for ranks 1..n: p_k = k^-s / H(n, s)."""
    if n <= 0:
        raise ValueError("n must be positive")
    raw = [1.0 / (k ** s) for k in range(1, n + 1)]
    total = sum(raw)
    return [w / total for w in raw]


class ZipfSampler:
    """Draws items with Zipf popularity. Which item is popular is a seeded permutation, so it does not
    depend on the order of the eval file; the same seed gives the same ranks and the same draws."""

    def __init__(self, items: Sequence[Any], s: float = DEFAULT_ZIPF_S, seed: int = 0,
                 stream: str = "") -> None:
        """``seed`` fixes the popularity ranking; ``stream`` names an independent sequence of draws over
        that same ranking (the harness's warm-up, cold-start and measurement phases)."""
        if not items:
            raise ValueError("no items to sample from")
        ranked = list(items)
        random.Random(f"rank-{seed}").shuffle(ranked)
        self.ranked = ranked
        self.weights = zipf_weights(len(ranked), s)
        self._rng = random.Random(f"{seed}-{stream}" if stream else seed)

    def sample(self, n: int) -> list[Any]:
        return self._rng.choices(self.ranked, weights=self.weights, k=n)

    def one(self) -> Any:
        return self.sample(1)[0]


def covering_order(topics: Sequence[Topic], seed: int = 0) -> list[Topic]:
    """Every topic once, in a seeded shuffled order: a warm-up that leaves no context first-seen, so the
    measurement that follows sees the steady state of repeated traffic rather than a cold tail."""
    ordered = list(topics)
    random.Random(f"cover-{seed}").shuffle(ordered)
    return ordered


def router_workload(
    requests: int, seed: int, agents: list[str], cover: bool = False
) -> list[tuple[str, dict[str, Any]]]:
    """The same seeded sequence of (path, body) for every router: agents round-robin, topics Zipf.

    With ``cover`` the sequence starts with every topic of every agent once (agents interleaved), so a
    warm-up of that length leaves the pool in the steady state of repeated traffic."""
    topics = {a: build_topics(a) for a in agents}
    out: list[tuple[str, dict[str, Any]]] = []
    if cover:
        orders = {a: covering_order(topics[a], seed) for a in agents}
        for i in range(max(len(o) for o in orders.values())):
            out.extend((AGENT_SPECS[a].path, dict(o[i].body)) for a, o in orders.items() if i < len(o))
    samplers = {a: ZipfSampler(topics[a], seed=seed, stream="routers") for a in agents}
    for i in range(requests):
        agent = agents[i % len(agents)]
        out.append((AGENT_SPECS[agent].path, dict(samplers[agent].one().body)))
    return out


def covered_warmup(agents: list[str], extra: int) -> int:
    """Length of a warm-up that covers every topic once and then sends ``extra`` Zipf draws."""
    return sum(len(build_topics(a)) for a in agents) + extra
