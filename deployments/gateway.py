"""The HTTP ingress: routes, validation, auth and error mapping; every route delegates to a plain service
or to a deployment handle.

Errors map to responses in one place: bad input is a 4xx whose body names the field, an unreachable pool
is a 503 with ``Retry-After``, and nothing else leaks as a stack trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import re
from typing import Any

from fastapi import Depends, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.exceptions import RayTaskError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from agents.base import MAX_QUERY_CHARS, SESSION_ID_PATTERN, AgentRequest
from agents.registry import AGENTS
from deployments.cache_group import ServeShardClient
from deployments.embedder import make_remote_embed
from deployments.llm_client import REPLICA_LOST, LLMPoolClient, await_response
from llm import EngineDeadError, InvalidRequestError, LLMUnavailableError
from cache.config import TokenCacheConfig
from llm.completions import CompletionsService
from llm.fallback import FallbackConfig
from llm.model_files import model_on_this_node
from llm.openai_api import ChatCompletionRequest, CompletionRequest
from rag.builder import build_chat_context, build_llm, build_retrieval
from rag.reuse import ReuseConfig
from retrieval.config import RetrievalConfig
from retrieval.exceptions import (CollectionNotFoundError, DocumentNotFoundError, InvalidCollectionNameError,
                                  InvalidInputError, JobNotFoundError, RetrievalError)
from retrieval.jobs import IngestJobs
from retrieval.models import DEFAULT_TOP_K, MAX_TOP_K, Document, IngestJob, WriteResult
from routing.prefix_affinity import PrefixKeyConfig
from tokenization import HuggingFaceTokenizer

__all__ = ["GatewayConfig", "Gateway", "app"]

logger = logging.getLogger(__name__)

app = FastAPI(title="token-cached-rag", version="0.1.0")

RETRY_AFTER_S = 5  # hint sent with 503 answers; the pool usually recovers (replica restart) within seconds
AGENT_RETRIES = 1  # sends once more a request whose agent replica died under it (node or process lost)
API_KEY_ENV = "TCRAG_API_KEY"
SESSION_ID_PATH = Path(min_length=1, max_length=128, pattern=SESSION_ID_PATTERN, description="Conversation id.")
MAX_BODY_BYTES = 16 << 20  # above any valid request (an upsert of many large documents); see BodyLimit
# The OpenAI routes answer a body that does not validate with 400, as vLLM's server (and OpenAI) do.
OPENAI_ROUTES = frozenset({"/v1/completions", "/v1/chat/completions"})


class GatewayConfig(BaseModel):
    """Settings of the HTTP ingress."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_path: str = Field(description="Folder of the served model (its tokenizer encodes text prompts).")
    model_name: str = Field(description="Name reported by /v1/models and checked against `model`.")
    request_timeout_s: float = Field(default=120.0, gt=0, description="Longest wait for the LLM pool or an agent.")
    retrieval: RetrievalConfig = Field(description="The app's retrieval config (store, chunking, top_k limits).")
    prefix_key: PrefixKeyConfig = Field(default_factory=PrefixKeyConfig, description="Shared with the router.")
    agent_collections: dict[str, str] = Field(description="Agent name -> the collection it retrieves from.")
    protect_reads: bool = Field(default=False, description="Also require TCRAG_API_KEY on read routes.")
    llm_fallback: FallbackConfig | None = Field(default=None, description="Endpoint used when the pool is unavailable.")
    max_model_len: int = Field(default=4096, gt=0, description="The engines' context length (/v1/models, budgets).")
    token_cache: TokenCacheConfig | None = Field(
        default=None, description="Token cache of the chat completions RAG hook (`collection`); None: no hook.")
    reuse: ReuseConfig = Field(default_factory=ReuseConfig, description="Context order of the RAG hook.")
    open_prompt_prefix_tokens: int = Field(
        default=256, ge=1, description="Leading tokens of an OpenAI prompt the router keys on (no known context end).")


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    id: str = Field(min_length=1, max_length=128, description="Document id, unique in its collection.")
    text: str = Field(min_length=1, description="Document text (Markdown or plain).")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Free-form metadata; `title` is shown.")


class UpsertDocumentsBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    documents: list[DocumentIn] = Field(min_length=1, description="Documents to add or replace.")


class SearchBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS, description="Text to search the collection with.")
    top_k: int = Field(default=DEFAULT_TOP_K, ge=1, le=MAX_TOP_K, description="Chunks to return, best first.")


class CollectionBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    collection: str = Field(min_length=1, max_length=64, description="Collection name.")


# ----------------------------------------------------------------------------- errors


def _error(status: int, kind: str, message: str, field: str | None = None, headers: dict | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": {"type": kind, "message": message}}
    if field is not None:
        body["error"]["field"] = field
        body["error"]["param"] = field  # where OpenAI clients look for it (openai's APIError.param)
    return JSONResponse(status_code=status, content=body, headers=headers)


# pydantic locates an error inside a union member under the member's type ("prompt", "list[int]", 3); no
# field of our bodies is named like a type, so such parts are dropped from the field name.
_TYPE_NAMES = frozenset({"str", "int", "float", "bool", "bytes", "none", "dict", "list", "tuple", "set"})
_TYPE_TAG = re.compile(r"[\[\](),\s-]")


def _loc_parts(loc: tuple) -> tuple:
    # FastAPI locations look like ("body", "prompt", 3); the first part says where, not which field.
    parts = loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc
    return tuple(p for p in parts if not (isinstance(p, str) and (p in _TYPE_NAMES or _TYPE_TAG.search(p))))


def _field_name(parts: tuple) -> str:
    """``documents[0].id`` from ("documents", 0, "id")."""
    name = ""
    for part in parts:
        part = str(part)
        name += f"[{part}]" if part.isdigit() else (f".{part}" if name else part)
    return name or "body"


def _invalid_field(errors: list[dict[str, Any]]) -> tuple[str, str]:
    """Field name and message of the first invalid field. A value matching no member of a union (``prompt``:
    text or token IDs) gives one error per member: the deepest names the field most precisely (``prompt[1]``
    in a token list), and at equal depth the members' messages are joined."""
    located = [(_loc_parts(tuple(e.get("loc", ()))), str(e.get("msg", "invalid request"))) for e in errors]
    first = located[0][0]
    same = [(parts, msg) for parts, msg in located if first and parts[:len(first)] == first] or located[:1]
    depth = max(len(parts) for parts, _ in same)
    deepest = [(parts, msg) for parts, msg in same if len(parts) == depth]
    return _field_name(deepest[0][0]), " or ".join(dict.fromkeys(msg for _, msg in deepest))


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors()) or [{"loc": ("body",), "msg": "invalid request"}]
    if errors[0].get("type") == "json_invalid":
        return _error(400, "invalid_json", f"request body is not valid JSON: {errors[0].get('msg')}", "body")
    field, message = _invalid_field(errors)
    status = 400 if request is not None and request.url.path in OPENAI_ROUTES else 422
    return _error(status, "invalid_request", f"{field}: {message}", field)


# One table: which exception becomes which answer. Raised here or inside a deployment (then it arrives
# wrapped in a RayTaskError), the same cause gets the same status, error type and Retry-After.
_ERROR_TABLE: tuple[tuple[type[BaseException], int, str, bool], ...] = (
    # (exception, status, error type, retry_after)
    (InvalidRequestError, 400, "invalid_request", False),
    (InvalidInputError, 400, "invalid_request", False),
    (CollectionNotFoundError, 404, "not_found", False),
    (DocumentNotFoundError, 404, "not_found", False),
    (JobNotFoundError, 404, "not_found", False),
    # The pool (or its fallback) could not serve in time: tell the client when to come back.
    (LLMUnavailableError, 503, "unavailable", True),
    (EngineDeadError, 503, "unavailable", True),
    # A deployment's queue is full (max_queued_requests): shed load instead of queueing without bound.
    (BackPressureError, 503, "overloaded", True),
    (RetrievalError, 503, "unavailable", True),
)


def _mapped_error(exc: BaseException) -> JSONResponse | None:
    """The table's answer for `exc`; a 4xx names the field from the error's own `field` (every 4xx error type
    of the table has one: the request field, path parameter included, that was wrong)."""
    for kind, status, error_type, retry in _ERROR_TABLE:
        if isinstance(exc, kind):
            return _error(status, error_type, str(exc), getattr(exc, "field", None),
                          headers={"Retry-After": str(RETRY_AFTER_S)} if retry else None)
    return None


@contextlib.contextmanager
def _collection_from(field: str):
    """Errors about the collection's name name `field`, the request field that held it (the retrieval
    package says "collection"; the collection routes take it as the path parameter ``name``)."""
    try:
        yield
    except CollectionNotFoundError as err:
        raise CollectionNotFoundError(err.name, field) from None
    except InvalidCollectionNameError as err:
        raise InvalidCollectionNameError(field, err.message) from None


async def _table_error(request: Request, exc: Exception) -> JSONResponse:
    response = _mapped_error(exc)
    assert response is not None  # registered only for the table's exception types
    return response


for _kind, *_ in _ERROR_TABLE:
    app.add_exception_handler(_kind, _table_error)


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    # FastAPI's and Starlette's own answers (an unreadable body, no such route, wrong method) in our error
    # shape, naming what was wrong.
    field = {400: "body", 404: "path", 405: "method"}.get(exc.status_code)
    kind = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _error(exc.status_code, kind, str(exc.detail), field, headers=getattr(exc, "headers", None))


@app.exception_handler(RayTaskError)
async def _remote_error(request: Request, exc: RayTaskError) -> JSONResponse:
    # A deployment raised: answer as if the cause had been raised here.
    cause = getattr(exc, "cause", None)
    response = _mapped_error(cause) if cause is not None else None
    if response is not None:
        return response
    logger.error("deployment failed: %s", exc)
    return _error(500, "internal", f"internal error: {type(cause or exc).__name__}")


class BodyLimit:
    """ASGI wrapper that refuses a request body over `max_bytes` with a 413 naming the body.

    A declared Content-Length over the limit is refused before anything is read. Otherwise the body is read
    here with a running count, whatever its framing (a chunked upload declares no length): past the limit
    the read stops and the 413 is sent, so at most `max_bytes` plus one received message is ever held. A
    body within the limit is handed to the app as one message; later ``receive`` calls (a streaming
    response waiting for a disconnect) go to the server.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._refuse(scope, receive, send, f" (Content-Length {length.decode(errors='replace')})")
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away before sending the whole body
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send, "")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body: dict[str, Any] | None = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        chunks.clear()

        async def replay() -> dict[str, Any]:
            nonlocal body
            if body is not None:
                message, body = body, None
                return message
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: dict, receive: Any, send: Any, detail: str) -> None:
        response = _error(413, "payload_too_large", f"body: request body over {self.max_bytes} bytes{detail}",
                          "body", headers={"Connection": "close"})
        await response(scope, receive, send)


app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)


# ----------------------------------------------------------------------------- auth


def _require_key(request: Request) -> None:
    """When TCRAG_API_KEY is set, require it as a bearer token; compare in constant time, never log it."""
    expected = os.environ.get(API_KEY_ENV)
    if not expected:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise _AuthError()


class _AuthError(Exception):
    pass


@app.exception_handler(_AuthError)
async def _unauthorized(request: Request, exc: Exception) -> JSONResponse:
    return _error(401, "unauthorized", "missing or wrong API key (Authorization: Bearer ...)", "Authorization",
                  headers={"WWW-Authenticate": "Bearer"})


def _require_key_for_reads(request: Request) -> None:
    instance = serve.get_replica_context().servable_object
    if instance.config.protect_reads:
        _require_key(request)


# Helpers used by Gateway's methods are defined before the class: @serve.ingress serializes the routes
# when the class is decorated, so names bound later in this module would be missing in the replica.


def _info(info: Any) -> dict[str, Any]:
    return {"name": info.name, "documents": info.documents, "chunks": info.chunks, "version": info.version}


def _write(result: WriteResult) -> dict[str, Any]:
    return result.summary()


def _job(job: IngestJob) -> dict[str, Any]:
    return {"job": job.id, "status_url": f"/v1/jobs/{job.id}", "collection": job.collection,
            "state": job.state.value, "documents": job.documents, "done": job.done, "total": job.total,
            "error": job.error, "result": job.result, "created_at": job.created_at,
            "started_at": job.started_at, "finished_at": job.finished_at}


def _merge_agent_stats(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum one agent's replicas: hits, misses and bytes add up; the hit rate is recomputed."""
    hits = sum(e["summary"]["cache_hits"] for e in entries)
    misses = sum(e["summary"]["cache_misses"] for e in entries)
    return {
        "collection": entries[0]["collection"],
        "replicas": len(entries),
        "hits": hits,
        "misses": misses,
        "hit_rate": hits / (hits + misses) if hits + misses else 0.0,
        "bytes": sum(e["tiers"].get("l0", {}).get("size_bytes", 0) for e in entries),
        "entries": sum(e["tiers"].get("l0", {}).get("entries", 0) for e in entries),
        "summary": [e["summary"] for e in entries],
        "tiers": [e["tiers"] for e in entries],
        "warmup": [e["warmup"] for e in entries],
    }


def _openai_answer(answer: Any) -> Any:
    """A completions answer: its JSON, or its server-sent events."""
    if isinstance(answer, dict):
        return answer
    return StreamingResponse(answer, media_type="text/event-stream")


async def _guarded_stream(stream):
    try:
        async for event in stream:
            yield event
    except Exception as err:  # headers are sent: report the failure as a last event, not a broken stream
        import json

        yield f"data: {json.dumps({'error': {'type': 'unavailable', 'message': str(err)}})}\n\n"


def _make_agent_route(agent_cls: type) -> Any:
    async def route(self, body):  # `self` is injected by Serve's class-based view
        return await self._call_agent(agent_cls.name, body)

    route.__annotations__ = {"body": agent_cls.request_model, "return": Any}
    route.__name__ = f"agent_{agent_cls.name.replace('-', '_')}"
    route.__qualname__ = f"Gateway.{route.__name__}"  # Serve binds routes whose qualname names the class
    return route


# POST /v1/agents/{name}/{route} for each agent in the registry, typed by its request model so that the
# OpenAPI schema documents every body. Registered before the class so that @serve.ingress binds them.
for _agent_cls in AGENTS:
    app.post(f"/v1/agents/{_agent_cls.name}/{_agent_cls.route}", dependencies=[Depends(_require_key_for_reads)],
             name=f"agent_{_agent_cls.name}")(_make_agent_route(_agent_cls))


# ----------------------------------------------------------------------------- the ingress


@serve.deployment(name="gateway")
@serve.ingress(app)
class Gateway:
    def __init__(self, config: GatewayConfig, llm: DeploymentHandle, embedder: DeploymentHandle,
                 agents: dict[str, DeploymentHandle], shards: list[DeploymentHandle]) -> None:
        self.config = config
        self._shards = [ServeShardClient(h, timeout_s=5.0) for h in shards]
        tokenizer = HuggingFaceTokenizer(model_on_this_node(config.model_path))  # prepared here on first use
        self._pool = build_llm(LLMPoolClient(llm, timeout_s=config.request_timeout_s, prefix_key=config.prefix_key),
                               config.llm_fallback)
        self._agents = agents
        # The embedder call's own timeout is the batch timeout: either firing is reported as the batch's.
        embed = make_remote_embed(embedder, timeout_s=config.retrieval.ingest.batch_timeout_s)
        self._retrieval = build_retrieval(config.retrieval, tokenizer, embed)
        self._ingest = IngestJobs(self._retrieval, on_done=self._invalidate_removed)
        self._ingest.recover()  # jobs a previous run left unfinished are reported failed
        chat_context = None
        if config.token_cache is not None:
            chat_context = build_chat_context(tokenizer=tokenizer, shards=self._shards, llm=self._pool,
                                              retrieval=self._retrieval, token_cache=config.token_cache,
                                              max_model_len=config.max_model_len, reuse=config.reuse)
        self._completions = CompletionsService(tokenizer=tokenizer, llm=self._pool, model_name=config.model_name,
                                               max_model_len=config.max_model_len, chat_context=chat_context,
                                               open_prompt_prefix_tokens=config.open_prompt_prefix_tokens)
        self._app_name = serve.get_replica_context().app_name

    # -- health and models

    @app.get("/healthz")
    async def healthz(self) -> JSONResponse:
        """200 once every deployment of the app has its replicas running and healthy."""
        status = await asyncio.to_thread(serve.status)
        application = status.applications.get(self._app_name)
        deployments = {name: str(getattr(d.status, "value", d.status))
                       for name, d in (application.deployments.items() if application else [])}
        healthy = bool(deployments) and all(s == "HEALTHY" for s in deployments.values())
        body = {"status": "ok" if healthy else "starting", "deployments": deployments, "model": self.config.model_name}
        return JSONResponse(status_code=200 if healthy else 503, content=body)

    @app.get("/v1/models", dependencies=[Depends(_require_key_for_reads)])
    async def models(self) -> dict[str, Any]:
        return self._completions.models()

    @app.post("/v1/completions", dependencies=[Depends(_require_key_for_reads)])
    async def completions(self, body: CompletionRequest) -> Any:
        return _openai_answer(await self._completions.complete(body))

    @app.post("/v1/chat/completions", dependencies=[Depends(_require_key_for_reads)])
    async def chat_completions(self, body: ChatCompletionRequest) -> Any:
        with _collection_from("collection"):
            return _openai_answer(await self._completions.chat(body))

    # -- agents

    async def _call_agent(self, name: str, body: AgentRequest) -> Any:
        handle = self._agents[name]
        if body.stream:
            stream = handle.options(stream=True).answer_stream.remote(body)
            return StreamingResponse(_guarded_stream(stream), media_type="text/event-stream")
        # SE-Darwin's `generations` runs that many LLM rounds in one request: each gets the usual budget.
        budget_s = self.config.request_timeout_s * getattr(body, "generations", 1)
        # An agent replica lost under the request (its process or its whole node) has not answered: the
        # request is sent once more, and Serve routes it to a live replica.
        for attempt in range(AGENT_RETRIES + 1):
            response = handle.answer.remote(body)
            try:
                return await asyncio.wait_for(await_response(response), timeout=budget_s + 5)
            except TimeoutError as err:
                response.cancel()
                raise LLMUnavailableError(f"agent {name} did not answer within {budget_s:.0f} s") from err
            except REPLICA_LOST as err:
                if attempt == AGENT_RETRIES:
                    raise LLMUnavailableError(f"agent {name} lost its replica: {err}") from err
                logger.warning("agent %s: replica lost, sending the request again: %s", name, err)

    # -- collections

    @app.get("/v1/collections", dependencies=[Depends(_require_key_for_reads)])
    async def list_collections(self) -> dict[str, Any]:
        infos = await self._retrieval.list_collections()
        return {"collections": [_info(i) for i in infos]}

    @app.get("/v1/collections/{name}", dependencies=[Depends(_require_key_for_reads)])
    async def get_collection(self, name: str) -> dict[str, Any]:
        with _collection_from("name"):
            return _info(await self._retrieval.get_collection(name))

    @app.post("/v1/collections/{name}/search", dependencies=[Depends(_require_key_for_reads)])
    async def search_collection(self, name: str, body: SearchBody) -> dict[str, Any]:
        """What the agents would retrieve: ranked chunks, for external RAG clients and for debugging."""
        with _collection_from("name"):
            hits = await self._retrieval.search(name, body.query, body.top_k)
        return {"collection": name, "results": [
            {"chunk_id": h.chunk_id, "doc_id": h.doc_id, "score": round(float(h.score), 6), "text": h.text}
            for h in hits]}

    @app.put("/v1/collections/{name}/documents", dependencies=[Depends(_require_key)])
    async def upsert_documents(self, name: str, body: UpsertDocumentsBody) -> Any:
        """200 with the write when it is small; 202 with a job to follow when it has more chunks to embed
        than `retrieval.settings.ingest.job_threshold_chunks` (the collection switches when the job is done)."""
        docs = [Document(id=d.id, text=d.text, metadata=d.metadata) for d in body.documents]
        with _collection_from("name"):
            outcome = await self._ingest.submit(name, docs)
        if isinstance(outcome, IngestJob):
            return JSONResponse(status_code=202, content=_job(outcome))
        await self._invalidate_removed(outcome)
        return _write(outcome)

    @app.delete("/v1/collections/{name}/documents/{doc_id}", dependencies=[Depends(_require_key)])
    async def delete_document(self, name: str, doc_id: str) -> dict[str, Any]:
        with _collection_from("name"):
            result = await self._retrieval.delete(name, doc_id)
        await self._invalidate_removed(result)
        return _write(result)

    @app.get("/v1/jobs/{job_id}", dependencies=[Depends(_require_key_for_reads)])
    async def get_job(self, job_id: str) -> dict[str, Any]:
        """An ingestion job: `state` (queued, running, done, failed), `done`/`total` chunks, `error`."""
        return _job(await self._ingest.get(job_id))

    async def _invalidate_removed(self, result: WriteResult) -> None:
        """Drop token-cache entries of replaced or deleted chunks from every tier of every agent.

        Keys are content-addressed, so a changed chunk can never be served its old IDs anyway; this
        frees the memory of entries no request will ask for again.
        """
        for doc_id in sorted({c.doc_id for c in result.removed_chunks}):
            await self._broadcast_to_agents(result.collection, "invalidate", result.collection, doc_id)

    async def _broadcast_to_agents(self, collection: str | None, method: str, *args: Any) -> list[Any]:
        names = [n for n, c in self.config.agent_collections.items() if collection is None or c == collection]
        results: list[Any] = []
        for name in names:
            try:
                results.extend(await asyncio.wait_for(
                    self._agents[name].broadcast(method, *args).results_async(), self.config.request_timeout_s))
            except Exception as err:  # one agent's failure must not fail the write that already committed
                logger.warning("broadcast %s to %s failed: %s", method, name, err)
        return results

    # -- sessions

    @app.get("/v1/sessions/{session_id}", dependencies=[Depends(_require_key_for_reads)])
    async def get_session(self, session_id: str = SESSION_ID_PATH) -> Any:
        """A conversation's turns with their exact prompt and response token IDs."""
        for found in await self._broadcast_to_agents(None, "get_session", session_id):
            if found is not None:
                return found
        return _error(404, "not_found", f"session_id: no session {session_id!r}", "session_id")

    @app.delete("/v1/sessions/{session_id}", dependencies=[Depends(_require_key_for_reads)])
    async def delete_session(self, session_id: str = SESSION_ID_PATH) -> Any:
        if not any(await self._broadcast_to_agents(None, "delete_session", session_id)):
            return _error(404, "not_found", f"session_id: no session {session_id!r}", "session_id")
        return {"session_id": session_id, "deleted": True}

    # -- cache

    @app.get("/v1/cache/stats", dependencies=[Depends(_require_key_for_reads)])
    async def cache_stats(self) -> dict[str, Any]:
        replicas = await self._broadcast_to_agents(None, "cache_stats")
        per_agent: dict[str, Any] = {}
        for entry in replicas:
            per_agent.setdefault(entry["agent"], []).append(entry)
        agents = {name: _merge_agent_stats(entries) for name, entries in per_agent.items()}
        shards: dict[str, Any] = {}
        for shard in self._shards:  # the shared L1 tier, as each shard itself counts it
            try:
                shards[shard.shard_id] = await shard.stats()
            except Exception as err:  # a restarting shard is reported, not fatal
                shards[shard.shard_id] = {"error": str(err)}
        return {
            "agents": agents,
            "shards": shards,
            "bytes": {
                "agents_l0": sum(a["bytes"] for a in agents.values()),
                "shards_l1": sum(s.get("size_bytes", 0) for s in shards.values()),
            },
        }

    @app.post("/v1/cache/warmup", dependencies=[Depends(_require_key)])
    async def cache_warmup(self, body: CollectionBody) -> dict[str, Any]:
        await self._retrieval.get_collection(body.collection)  # 404 naming "collection" for an unknown one
        results = await self._broadcast_to_agents(body.collection, "warm")
        return {"collection": body.collection, "replicas": results}

    @app.post("/v1/cache/invalidate", dependencies=[Depends(_require_key)])
    async def cache_invalidate(self, body: CollectionBody) -> dict[str, Any]:
        await self._retrieval.get_collection(body.collection)
        results = await self._broadcast_to_agents(None, "invalidate", body.collection, None)
        return {"collection": body.collection, "invalidated": results}
