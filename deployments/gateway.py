"""The HTTP ingress: routes, validation and error mapping; every route delegates to a plain service.

Errors map to responses in one place (``_error_response``): bad input is a 4xx whose body names the
field, an unreachable pool is a 503 with ``Retry-After``, and nothing else leaks as a stack trace.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from cache.tokenizers import HuggingFaceTokenizer
from deployments.llm_client import LLMPoolClient
from llm import EngineDeadError, InvalidRequestError, LLMUnavailableError
from llm.completions import CompletionRequest, CompletionsService

__all__ = ["GatewayConfig", "Gateway", "app"]

logger = logging.getLogger(__name__)

app = FastAPI(title="token-cached-rag", version="0.1.0")

RETRY_AFTER_S = 5  # hint sent with 503 answers; the pool usually recovers (replica restart) within seconds


class GatewayConfig(BaseModel):
    """Settings of the HTTP ingress."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_path: str = Field(description="Folder of the served model (its tokenizer encodes text prompts).")
    model_name: str = Field(description="Name reported by /v1/models and checked against `model`.")
    request_timeout_s: float = Field(default=120.0, gt=0, description="Longest wait for the LLM pool.")


def _error(status: int, kind: str, message: str, field: str | None = None, headers: dict | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": {"type": kind, "message": message}}
    if field is not None:
        body["error"]["field"] = field
    return JSONResponse(status_code=status, content=body, headers=headers)


def _field_name(loc: tuple) -> str:
    # FastAPI locations look like ("body", "prompt", 3); the first part says where, not which field.
    parts = [str(p) for p in loc[1:]] if loc and loc[0] in ("body", "query", "path") else [str(p) for p in loc]
    name = ""
    for part in parts:
        name += f"[{part}]" if part.isdigit() else (f".{part}" if name else part)
    return name or "body"


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
    field = _field_name(tuple(first.get("loc", ())))
    if first.get("type") == "json_invalid":
        return _error(400, "invalid_json", f"request body is not valid JSON: {first.get('msg')}", "body")
    return _error(422, "invalid_request", f"{field}: {first.get('msg')}", field)


@app.exception_handler(InvalidRequestError)
async def _invalid_request(request: Request, exc: InvalidRequestError) -> JSONResponse:
    return _error(400, "invalid_request", str(exc), exc.field)


@app.exception_handler(LLMUnavailableError)
@app.exception_handler(EngineDeadError)
async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    # The pool (or its fallback) could not serve in time: tell the client when to come back.
    return _error(503, "unavailable", str(exc), headers={"Retry-After": str(RETRY_AFTER_S)})


@serve.deployment(name="gateway")
@serve.ingress(app)
class Gateway:
    def __init__(self, config: GatewayConfig, llm: DeploymentHandle) -> None:
        self._config = config
        self._pool = LLMPoolClient(llm, timeout_s=config.request_timeout_s)
        self._completions = CompletionsService(
            tokenizer=HuggingFaceTokenizer(config.model_path),
            generate=self._pool.generate,
            model_name=config.model_name,
        )
        self._app_name = serve.get_replica_context().app_name

    @app.get("/healthz")
    async def healthz(self) -> JSONResponse:
        """200 once every deployment of the app has its replicas running and healthy."""
        status = await asyncio.to_thread(serve.status)
        application = status.applications.get(self._app_name)
        deployments = {name: str(d.status.value if hasattr(d.status, "value") else d.status)
                       for name, d in (application.deployments.items() if application else [])}
        healthy = bool(deployments) and all(s == "HEALTHY" for s in deployments.values())
        body = {"status": "ok" if healthy else "starting", "deployments": deployments, "model": self._config.model_name}
        return JSONResponse(status_code=200 if healthy else 503, content=body)

    @app.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        return self._completions.models()

    @app.post("/v1/completions")
    async def completions(self, body: CompletionRequest) -> Any:
        return await self._completions.complete(body)
