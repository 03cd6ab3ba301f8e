"""Benchmark and load-test workloads: realistic request bodies per agent, drawn Zipf-distributed.

The topic pool of each agent is the labelled queries in ``data/eval/<collection>.jsonl`` (the queries the
retrieval evaluation uses), turned into that agent's request body: a support question, a documentation
lookup, a business brief, code to test, code to review, an evolution task with a candidate program.
Popularity follows Zipf's law (P(rank k) proportional to 1/k^s, s about 1.1) over a seeded permutation of
the topics, so a few topics repeat often and a long tail shows up once, like real support traffic.

Realistic traffic (``TrafficGenerator``, ``traffic_plan``) comes from the hand-written material in
``data/eval/traffic/<agent>.jsonl``: first sightings, rephrasings and edited code of topics already seen,
verbatim repeats and follow-up turns of conversations, each request tagged with its traffic class.

Everything here is pure and seeded: the harness, Locust and the unit tests build the same workloads.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "AGENT_SPECS",
    "AgentSpec",
    "TRAFFIC_CLASSES",
    "TrafficGenerator",
    "TrafficItem",
    "TrafficMix",
    "TrafficPlan",
    "TrafficTopic",
    "class_shares",
    "load_traffic",
    "traffic_capacity",
    "traffic_counts",
    "traffic_path",
    "traffic_plan",
    "warmup_sequence",
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


# -- realistic traffic: first sightings, rephrasings and edits, verbatim repeats, follow-up turns -------------
#
# The material is hand-written in ``data/eval/traffic/<agent>.jsonl`` (format: ``data/eval/traffic/README.md``):
# per topic its first wording, at least three rephrasings, edited code for the code agents and the follow-up
# turns of a conversation for support and documentation. ``TrafficGenerator`` turns it into a stream of
# requests, each tagged with its traffic class (the names of DESIGN.md's benchmark contract):
#
# - ``first``: a topic not seen before, in its first wording;
# - ``rephrased``: a rephrasing, or an edited snippet, of a topic already seen, never sent before itself;
# - ``repeat``: a verbatim copy of a standalone request already sent (never of a follow-up turn);
# - ``followup``: the next turn of a conversation already started, with its ``session_id`` and turn index.
#
# Topics are drawn Zipf over a seeded popularity ranking (the same ranking as ``ZipfSampler``), the class of
# each request from ``TrafficMix``; a class with no material at that point (no unseen topic left, no unused
# rephrasing of a seen topic, nothing sent yet, no open conversation, an agent without follow-ups) is left
# out and the others renormalized. Every draw comes from one seeded generator, so a seed gives one sequence.

TRAFFIC_CLASSES: tuple[str, ...] = ("first", "rephrased", "repeat", "followup")
TRAFFIC_SUBDIR = Path("eval") / "traffic"
DEFAULT_MAX_OPEN_SESSIONS = 16
_FOLLOWUP_FIELD = "query"  # the body field a follow-up turn's text goes into (support, documentation)


@dataclass(frozen=True, slots=True)
class TrafficTopic:
    """One topic's hand-written material: what a user asks first, in other words, edited, and next."""

    agent: str
    topic: str  # the eval label (document id) it came from
    relevant: tuple[str, ...]  # document ids a good retrieval returns, for recall@k on every wording
    first: dict[str, Any] = field(hash=False)
    rephrased: tuple[dict[str, Any], ...] = field(default=(), hash=False)
    edited: tuple[dict[str, Any], ...] = field(default=(), hash=False)
    followups: tuple[str, ...] = ()

    def variants(self) -> list[tuple[str, dict[str, Any]]]:
        """``[(variant name, body), ...]`` for the ``rephrased`` class: ``rephrased:i`` then ``edited:i``."""
        return [(f"rephrased:{i}", b) for i, b in enumerate(self.rephrased)] + [
            (f"edited:{i}", b) for i, b in enumerate(self.edited)
        ]


def traffic_path(agent: str, data_dir: Path = DEFAULT_DATA_DIR) -> Path:
    return Path(data_dir) / TRAFFIC_SUBDIR / f"{agent}.jsonl"


def load_traffic(agent: str, data_dir: Path = DEFAULT_DATA_DIR) -> list[TrafficTopic]:
    """The traffic material of one agent, in file order (the order of its eval file)."""
    if agent not in AGENT_SPECS:
        raise KeyError(f"unknown agent {agent!r}")
    topics = []
    for line in traffic_path(agent, data_dir).read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        topics.append(TrafficTopic(
            agent=agent, topic=row["topic"], relevant=tuple(row.get("relevant") or [row["topic"]]),
            first=dict(row["first"]), rephrased=tuple(dict(b) for b in row.get("rephrased", [])),
            edited=tuple(dict(b) for b in row.get("edited", [])), followups=tuple(row.get("followups", []))))
    return topics


def traffic_counts(agent: str, data_dir: Path = DEFAULT_DATA_DIR) -> dict[str, int]:
    """How much material one agent has: topics, rephrasings, edited snippets, follow-up turns."""
    topics = load_traffic(agent, data_dir)
    return {"topics": len(topics), "rephrased": sum(len(t.rephrased) for t in topics),
            "edited": sum(len(t.edited) for t in topics), "followups": sum(len(t.followups) for t in topics)}


class TrafficMix(BaseModel):
    """The share of each traffic class, as configured (any non-negative weights; they are normalized).

    A class with no material at some point of the stream is left out and the others renormalized, so the
    realized shares (``class_shares``) can differ from these: report both."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    first: float = Field(default=0.2, ge=0.0, description="first sighting of a topic, first wording")
    rephrased: float = Field(default=0.4, ge=0.0, description="rephrasing or edited snippet of a seen topic")
    repeat: float = Field(default=0.2, ge=0.0, description="verbatim repeat of a request already sent")
    followup: float = Field(default=0.2, ge=0.0, description="next turn of a conversation already started")

    @model_validator(mode="after")
    def _some_weight(self) -> TrafficMix:
        if sum(self.weights().values()) <= 0:
            raise ValueError("at least one traffic class needs a positive share")
        return self

    def weights(self) -> dict[str, float]:
        return {c: float(getattr(self, c)) for c in TRAFFIC_CLASSES}

    def shares(self, available: Sequence[str] | None = None) -> dict[str, float]:
        """Normalized shares over ``available`` classes (all by default); the others get 0."""
        allowed = set(TRAFFIC_CLASSES if available is None else available)
        w = {c: (v if c in allowed else 0.0) for c, v in self.weights().items()}
        total = sum(w.values())
        return {c: (v / total if total > 0 else 0.0) for c, v in w.items()}

    @classmethod
    def parse(cls, text: str) -> TrafficMix:
        """``"first=0.2,rephrased=0.4,repeat=0.2,followup=0.2"`` (a command-line option); missing classes
        keep their defaults."""
        values: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, value = part.partition("=")
            if not sep or name.strip() not in TRAFFIC_CLASSES:
                raise ValueError(f"traffic mix: expected class=share with a class in {TRAFFIC_CLASSES}, got {part!r}")
            values[name.strip()] = float(value)
        return cls(**values)


@dataclass(frozen=True, slots=True)
class TrafficItem:
    """One request of a traffic stream and what it is."""

    index: int  # position in its agent's stream (0-based)
    agent: str
    route: str  # POST path
    traffic_class: str  # one of TRAFFIC_CLASSES
    topic: str
    variant: str  # "first", "rephrased:i", "edited:i", "followup:i" (a repeat names the variant it copies)
    body: dict[str, Any] = field(hash=False)  # the agent's own fields, without session or mode knobs
    relevant: tuple[str, ...] = ()
    session_id: str | None = None  # set on a conversation's opening turn and on its follow-ups
    turn: int | None = None  # 0 for the opening turn, 1.. for follow-ups
    history: tuple[str, ...] = ()  # follow-ups: the user texts of the earlier turns, oldest first
    repeat_of: int | None = None  # repeats: the index of the item they copy

    def request_body(self, extra: dict[str, Any] | None = None, session_prefix: str = "") -> dict[str, Any]:
        """The JSON body to send: the agent's fields, ``session_id`` (with ``session_prefix``, e.g. one per
        benchmark mode so modes never share a conversation) when the item has one, then ``extra`` (mode
        fields such as ``use_cache``, ``cache_salt``, ``max_tokens``)."""
        out = dict(self.body)
        if self.session_id is not None:
            out["session_id"] = f"{session_prefix}{self.session_id}"
        out.update(extra or {})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "agent": self.agent, "route": self.route, "class": self.traffic_class,
                "topic": self.topic, "variant": self.variant, "body": dict(self.body),
                "relevant": list(self.relevant), "session_id": self.session_id, "turn": self.turn,
                "history": list(self.history), "repeat_of": self.repeat_of}


@dataclass(slots=True)
class _Session:
    session_id: str
    topic: TrafficTopic
    history: list[str]
    next_turn: int = 1


class TrafficGenerator:
    """An endless, seeded stream of one agent's traffic (``next()``, ``take(n)``, iteration).

    The same (agent, mix, seed, s, stream, material) always gives the same sequence. Conversations: for an
    agent with follow-up material every ``first`` and ``rephrased`` request opens one (it carries a
    ``session_id`` and ``turn=0``); a ``followup`` continues one of the ``max_open_sessions`` most recently
    opened conversations that still has turns left (older ones count as abandoned)."""

    def __init__(self, agent: str, mix: TrafficMix | None = None, seed: int = 0, s: float = DEFAULT_ZIPF_S,
                 data_dir: Path = DEFAULT_DATA_DIR, topics: Sequence[TrafficTopic] | None = None,
                 stream: str = "traffic", max_open_sessions: int = DEFAULT_MAX_OPEN_SESSIONS) -> None:
        if agent not in AGENT_SPECS:
            raise KeyError(f"unknown agent {agent!r}")
        if max_open_sessions < 1:
            raise ValueError("max_open_sessions must be at least 1")
        material = list(topics) if topics is not None else load_traffic(agent, data_dir)
        if not material:
            raise ValueError(f"no traffic material for {agent!r}")
        self.agent, self.route = agent, AGENT_SPECS[agent].path
        self.mix = mix or TrafficMix()
        self.seed, self.stream = seed, stream
        self.ranked: list[TrafficTopic] = ZipfSampler(material, s=s, seed=seed).ranked
        self._weight = dict(zip((t.topic for t in self.ranked), zipf_weights(len(self.ranked), s)))
        self._rng = random.Random(f"traffic-{seed}-{agent}-{stream}")
        self._max_open = max_open_sessions
        self._unseen: list[TrafficTopic] = list(self.ranked)
        self._seen: list[TrafficTopic] = []
        self._unused: dict[str, list[tuple[str, dict[str, Any]]]] = {t.topic: t.variants() for t in self.ranked}
        self._sent: dict[str, list[TrafficItem]] = {}  # topic -> standalone items sent (first, rephrased)
        self._sent_topics: list[TrafficTopic] = []
        self._sessions: list[_Session] = []  # open conversations with turns left, oldest first
        self._opened = 0
        self.items: list[TrafficItem] = []

    # -- what can be drawn now
    def available(self) -> list[str]:
        """The classes with material at this point of the stream."""
        out = []
        if self._unseen:
            out.append("first")
        if any(self._unused[t.topic] for t in self._seen):
            out.append("rephrased")
        if self._sent_topics:
            out.append("repeat")
        if self._sessions:
            out.append("followup")
        return out

    def _zipf(self, candidates: Sequence[TrafficTopic]) -> TrafficTopic:
        return self._rng.choices(candidates, weights=[self._weight[t.topic] for t in candidates])[0]

    def next(self) -> TrafficItem:
        shares = self.mix.shares(self.available())
        classes = [c for c in TRAFFIC_CLASSES if shares[c] > 0]
        if not classes:
            raise ValueError(f"traffic mix {self.mix.weights()} has no class with material left for "
                             f"{self.agent!r} (available: {self.available()})")
        cls = self._rng.choices(classes, weights=[shares[c] for c in classes])[0]
        item = getattr(self, f"_draw_{cls}")()
        self.items.append(item)
        return item

    def take(self, n: int) -> list[TrafficItem]:
        return [self.next() for _ in range(n)]

    def __iter__(self) -> TrafficGenerator:
        return self

    def __next__(self) -> TrafficItem:
        return self.next()

    # -- one draw per class
    def _item(self, cls: str, topic: TrafficTopic, variant: str, body: dict[str, Any], **kw: Any) -> TrafficItem:
        return TrafficItem(index=len(self.items), agent=self.agent, route=self.route, traffic_class=cls,
                           topic=topic.topic, variant=variant, body=dict(body), relevant=topic.relevant, **kw)

    def _standalone(self, cls: str, topic: TrafficTopic, variant: str, body: dict[str, Any]) -> TrafficItem:
        session: dict[str, Any] = {}
        if topic.followups and _FOLLOWUP_FIELD in body:
            self._opened += 1
            sid = f"{self.stream}.{self.seed}.{self.agent}.{self._opened}"
            self._sessions.append(_Session(sid, topic, [str(body[_FOLLOWUP_FIELD])]))
            del self._sessions[:-self._max_open]  # the oldest open conversations are abandoned
            session = {"session_id": sid, "turn": 0}
        item = self._item(cls, topic, variant, body, **session)
        if topic.topic not in self._sent:
            self._sent[topic.topic] = []
            self._sent_topics.append(topic)
        self._sent[topic.topic].append(item)
        return item

    def _draw_first(self) -> TrafficItem:
        topic = self._zipf(self._unseen)
        self._unseen.remove(topic)
        self._seen.append(topic)
        return self._standalone("first", topic, "first", topic.first)

    def _draw_rephrased(self) -> TrafficItem:
        topic = self._zipf([t for t in self._seen if self._unused[t.topic]])
        unused = self._unused[topic.topic]
        variant, body = unused.pop(self._rng.randrange(len(unused)))
        return self._standalone("rephrased", topic, variant, body)

    def _draw_repeat(self) -> TrafficItem:
        topic = self._zipf(self._sent_topics)
        original = self._rng.choice(self._sent[topic.topic])
        return self._item("repeat", topic, original.variant, original.body, repeat_of=original.index)

    def _draw_followup(self) -> TrafficItem:
        session = self._sessions[self._rng.randrange(len(self._sessions))]
        turn = session.next_turn
        text = session.topic.followups[turn - 1]
        item = self._item("followup", session.topic, f"followup:{turn - 1}", {_FOLLOWUP_FIELD: text},
                          session_id=session.session_id, turn=turn, history=tuple(session.history))
        session.history.append(text)
        session.next_turn += 1
        if session.next_turn > len(session.topic.followups):
            self._sessions.remove(session)
        return item


def class_shares(items: Sequence[TrafficItem]) -> dict[str, float]:
    """The realized share of each traffic class in ``items`` (0 for an empty list)."""
    counts = {c: 0 for c in TRAFFIC_CLASSES}
    for item in items:
        counts[item.traffic_class] += 1
    return {c: (n / len(items) if items else 0.0) for c, n in counts.items()}


@dataclass(frozen=True, slots=True)
class TrafficPlan:
    """A benchmark's traffic: the warm-up, then the measured requests, agents interleaved round-robin.

    Both come from one seeded stream per agent, so the measured part continues where the warm-up left off
    (a measured ``repeat`` may copy a warm-up request, a measured ``followup`` may continue a conversation
    the warm-up opened). Nothing here depends on the benchmark mode: send the same warm-up in every mode
    (each mode with its own ``cache_salt`` and ``session_prefix``), then the measured items."""

    warmup: list[TrafficItem]
    measured: list[TrafficItem]
    mix: TrafficMix
    seed: int

    def stated(self) -> dict[str, Any]:
        """The configured mix and the realized shares, for the results file."""
        return {"configured": self.mix.shares(), "warmup": class_shares(self.warmup),
                "measured": class_shares(self.measured), "seed": self.seed,
                "requests": {"warmup": len(self.warmup), "measured": len(self.measured)}}


def _round_robin(per_agent: dict[str, list[TrafficItem]]) -> list[TrafficItem]:
    out: list[TrafficItem] = []
    for i in range(max((len(v) for v in per_agent.values()), default=0)):
        out.extend(items[i] for items in per_agent.values() if i < len(items))
    return out


def traffic_plan(agents: Sequence[str], requests_per_agent: int, seed: int = 0, warmup_per_agent: int = 0,
                 mix: TrafficMix | None = None, s: float = DEFAULT_ZIPF_S,
                 data_dir: Path = DEFAULT_DATA_DIR,
                 max_open_sessions: int = DEFAULT_MAX_OPEN_SESSIONS) -> TrafficPlan:
    """Per agent ``warmup_per_agent`` then ``requests_per_agent`` items of its seeded stream; each phase
    interleaves the agents round-robin in the order given."""
    mix = mix or TrafficMix()
    warm: dict[str, list[TrafficItem]] = {}
    measured: dict[str, list[TrafficItem]] = {}
    for agent in agents:
        gen = TrafficGenerator(agent, mix, seed=seed, s=s, data_dir=data_dir, max_open_sessions=max_open_sessions)
        warm[agent] = gen.take(warmup_per_agent)
        measured[agent] = gen.take(requests_per_agent)
    return TrafficPlan(_round_robin(warm), _round_robin(measured), mix, seed)


def warmup_sequence(agents: Sequence[str], warmup_per_agent: int, seed: int = 0, mix: TrafficMix | None = None,
                    s: float = DEFAULT_ZIPF_S, data_dir: Path = DEFAULT_DATA_DIR) -> list[TrafficItem]:
    """The warm-up of ``traffic_plan`` with the same arguments: the same list for every benchmark mode."""
    return traffic_plan(agents, 0, seed, warmup_per_agent, mix, s, data_dir).warmup


def traffic_capacity(agent: str, mix: TrafficMix | None = None, data_dir: Path = DEFAULT_DATA_DIR) -> int:
    """About how many requests of one agent's stream keep the configured mix: past this, unseen topics
    or unused rephrasings run out and the mix shifts towards repeats and follow-ups (renormalized)."""
    counts = traffic_counts(agent, data_dir)
    shares = (mix or TrafficMix()).shares(
        [c for c in TRAFFIC_CLASSES if c != "followup" or counts["followups"]])
    variants = counts["rephrased"] + counts["edited"]
    limits = [counts["topics"] / shares["first"] if shares["first"] else math.inf,
              variants / shares["rephrased"] if shares["rephrased"] else math.inf]
    return int(min(limits)) if min(limits) != math.inf else 10**9
