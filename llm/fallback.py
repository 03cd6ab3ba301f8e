"""A fallback for when the whole vLLM pool is unavailable: any OpenAI-compatible ``/v1/completions``.

``OpenAIFallbackClient`` sends a ``GenerateRequest`` as token IDs (the ``prompt`` list) with
``return_token_ids: true``, so vLLM's own server and this app's ``/v1/completions`` (a second deployment
of it) answer with the exact output IDs and nothing is re-tokenized. ``FallbackLLM`` wraps the pool
client: it asks the pool first and only on ``LLMUnavailableError`` (timeout, no replica, queue full)
sends the same request to the fallback. Errors that are the request's own fault
(``InvalidRequestError``) are never retried elsewhere.

Configured in ``serve_config.yaml`` under ``llm.fallback`` (``FallbackConfig``); the API key is read from
the environment variable it names, never from the file, and is never logged.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from llm.exceptions import InvalidRequestError, LLMUnavailableError
from llm.types import GenerateRequest, GenerateResult, StreamDelta

__all__ = ["FallbackConfig", "OpenAIFallbackClient", "FallbackLLM", "build_fallback_llm"]

logger = logging.getLogger(__name__)


class FallbackConfig(BaseModel):
    """Where requests go when the LLM pool cannot serve them (``llm.fallback`` in serve_config.yaml)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(description="OpenAI-compatible API root, e.g. http://host:8000/v1 (``/completions`` is appended).")
    model: str = Field(description="Model name sent as ``model``; it must use the served model's vocabulary.")
    api_key_env: str | None = Field(
        default=None, description="Name of the environment variable holding the API key (sent as a bearer token)."
    )
    timeout_s: float = Field(default=60.0, gt=0, description="Longest wait for one fallback completion.")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


class _Generator(Protocol):
    async def generate(self, request: GenerateRequest) -> GenerateResult: ...

    def generate_stream(self, request: GenerateRequest) -> AsyncIterator[StreamDelta]: ...


class OpenAIFallbackClient:
    """``generate``/``generate_stream`` over an OpenAI-compatible completions endpoint (httpx, async).

    Any transport failure, timeout, 429 or 5xx is ``LLMUnavailableError`` (retry later); a 400/422 is the
    request's fault and becomes ``InvalidRequestError`` naming the field the server named. Stop token IDs
    are applied here to the returned IDs, because the OpenAI completion schema has no field for them.
    """

    def __init__(
        self,
        config: FallbackConfig,
        client: httpx.AsyncClient | None = None,
        environ: Mapping[str, str] = os.environ,
        encode: Callable[[str], list[int]] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.config = config
        headers = {"Content-Type": "application/json"}
        if config.api_key_env:
            key = environ.get(config.api_key_env)
            if not key:
                raise ValueError(f"llm.fallback.api_key_env: environment variable {config.api_key_env} is not set")
            headers["Authorization"] = f"Bearer {key}"
        self._client = client or httpx.AsyncClient(timeout=config.timeout_s)
        self._headers = headers
        self._url = f"{config.base_url}/completions"
        self._encode = encode  # only for servers that ignore return_token_ids and answer text alone
        self._clock = clock
        self.calls = 0
        self.failures = 0

    def _body(self, request: GenerateRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.config.model,
            "prompt": list(request.prompt_token_ids),
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "return_token_ids": True,
        }
        if request.seed is not None:
            body["seed"] = request.seed
        return body

    async def generate(self, request: GenerateRequest) -> GenerateResult:
        self.calls += 1
        started = self._clock()
        try:
            response = await self._client.post(self._url, json=self._body(request), headers=self._headers,
                                               timeout=self.config.timeout_s)
        except httpx.TimeoutException as err:
            self.failures += 1
            raise LLMUnavailableError(f"fallback {self.config.base_url} did not answer within {self.config.timeout_s:.0f} s") from err
        except httpx.HTTPError as err:
            self.failures += 1
            raise LLMUnavailableError(f"fallback {self.config.base_url} unreachable: {type(err).__name__}") from err
        if response.status_code in (400, 422):
            field, message = _error_field(response)
            raise InvalidRequestError(field, f"rejected by the fallback server: {message}")
        if response.status_code != 200:
            self.failures += 1
            raise LLMUnavailableError(f"fallback {self.config.base_url} answered {response.status_code}")
        try:
            return self._result(request, response.json(), self._clock() - started)
        except (ValueError, KeyError, IndexError, TypeError) as err:
            self.failures += 1
            raise LLMUnavailableError(f"fallback {self.config.base_url} sent an unreadable completion: {err}") from err

    def _result(self, request: GenerateRequest, body: dict[str, Any], elapsed_s: float) -> GenerateResult:
        choice = body["choices"][0]
        ids = choice.get("token_ids")
        if ids is None:
            if self._encode is None:
                raise ValueError("no token_ids in the choice (server ignores return_token_ids)")
            ids = self._encode(choice.get("text", ""))
        ids = [int(i) for i in ids]
        finish_reason = choice.get("finish_reason")
        stops = set(request.stop_token_ids)
        for i, tid in enumerate(ids):
            if tid in stops:  # the pool's engine stops on these and leaves them out; do the same
                ids, finish_reason = ids[:i], "stop"
                break
        usage = body.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
        return GenerateResult(
            token_ids=ids,
            prompt_tokens=int(usage.get("prompt_tokens", len(request.prompt_token_ids))),
            num_cached_tokens=int(details.get("cached_tokens") or 0),
            completion_tokens=len(ids),
            finish_reason=finish_reason,
            ttft_s=elapsed_s,  # not streamed: the first token arrives with the last
            total_s=elapsed_s,
            replica_id=f"fallback:{self.config.base_url}",
        )

    async def generate_stream(self, request: GenerateRequest) -> AsyncIterator[StreamDelta]:
        """One delta carrying the whole output and the result (the fallback is not streamed)."""
        result = await self.generate(request)
        yield StreamDelta(token_ids=list(result.token_ids), result=result)

    async def aclose(self) -> None:
        await self._client.aclose()


def _error_field(response: httpx.Response) -> tuple[str, str]:
    try:
        error = response.json().get("error") or {}
    except ValueError:
        return "prompt", response.text[:200]
    if isinstance(error, dict):
        return str(error.get("field") or error.get("param") or "prompt"), str(error.get("message", ""))[:200]
    return "prompt", str(error)[:200]


class FallbackLLM:
    """The pool first; on ``LLMUnavailableError`` the same request goes to the fallback.

    A stream falls back only if the pool failed before its first delta: after that, output has already
    reached the client and a second generation would not continue it.
    """

    def __init__(self, primary: _Generator, fallback: _Generator) -> None:
        self._primary = primary
        self._fallback = fallback
        self.fallbacks = 0

    async def generate(self, request: GenerateRequest) -> GenerateResult:
        try:
            return await self._primary.generate(request)
        except LLMUnavailableError as err:
            logger.warning("LLM pool unavailable (%s); request %s goes to the fallback", err, request.request_id)
            self.fallbacks += 1
            return await self._fallback_generate(request, err)

    async def _fallback_generate(self, request: GenerateRequest, pool_err: LLMUnavailableError) -> GenerateResult:
        try:
            return await self._fallback.generate(request)
        except LLMUnavailableError as err:
            raise LLMUnavailableError(f"{pool_err}; fallback: {err}") from err

    async def generate_stream(self, request: GenerateRequest) -> AsyncIterator[StreamDelta]:
        started = False
        try:
            async for delta in self._primary.generate_stream(request):
                started = True
                yield delta
            return
        except LLMUnavailableError as err:
            if started:
                raise
            logger.warning("LLM pool unavailable (%s); stream %s goes to the fallback", err, request.request_id)
            self.fallbacks += 1
            pool_err = err
        result = await self._fallback_generate(request, pool_err)
        yield StreamDelta(token_ids=list(result.token_ids), result=result)


def build_fallback_llm(primary: _Generator, config: FallbackConfig | None,
                       encode: Callable[[str], list[int]] | None = None) -> _Generator:
    """``primary`` alone when no fallback is configured, else ``FallbackLLM(primary, client)``."""
    if config is None:
        return primary
    return FallbackLLM(primary, OpenAIFallbackClient(config, encode=encode))
