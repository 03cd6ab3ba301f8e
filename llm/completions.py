"""OpenAI-compatible ``/v1/completions`` subset over the LLM pool, as a plain class.

Token-ID prompts go to the pool untouched; text prompts are tokenized here with the served model's
tokenizer. ``return_token_ids`` answers ``prompt_token_ids`` and ``token_ids`` in the choice, as vLLM's own
server does for Agent Lightning-style trainers. Stop strings are applied to the decoded text after
generation (the engine runs without a tokenizer, so it can only stop on token IDs).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tokenization import TokenizerBackend
from llm.exceptions import InvalidRequestError
from llm.types import CacheSalt, GenerateRequest, GenerateResult

__all__ = ["CompletionRequest", "CompletionsService"]

MAX_STOP_SEQUENCES = 4


class CompletionRequest(BaseModel):
    """The supported subset of OpenAI's completion request. Strict: a value of the wrong JSON type is refused,
    never coerced (``"16"`` is not an int, ``[1, "2"]`` not a token-ID list); an integer is a valid float."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = Field(default=None, description="Served model name; optional, must match if given.")
    prompt: str | list[int] = Field(description="Prompt as text or as token IDs of the served model.")
    max_tokens: int = Field(default=16, ge=1, le=4096, description="Most tokens to generate.")
    temperature: float = Field(default=1.0, ge=0.0, le=2.0, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    stop: str | list[str] | None = Field(default=None, description="Up to 4 stop strings.")
    seed: int | None = Field(default=None, description="Sampling seed for reproducible non-greedy output.")
    return_token_ids: bool = Field(default=False, description="Return prompt and output token IDs.")
    user: str | None = Field(default=None, description="Caller id (accepted for compatibility, unused).")
    cache_salt: CacheSalt | None = Field(
        default=None, description="vLLM cache salt: requests with different salts never share KV blocks."
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_not_empty(cls, value: str | list[int]) -> str | list[int]:
        if len(value) == 0:
            raise ValueError("must not be empty")
        return value

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty")
        return value


def _apply_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class CompletionsService:
    """Serves completion requests with a tokenizer and an async ``generate`` (the pool handle in the app)."""

    def __init__(
        self,
        tokenizer: TokenizerBackend,
        generate: Callable[[GenerateRequest], Awaitable[GenerateResult]],
        model_name: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._tokenizer = tokenizer
        self._generate = generate
        self._model_name = model_name
        self._clock = clock

    @property
    def model_name(self) -> str:
        return self._model_name

    def models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": self._model_name, "object": "model", "owned_by": "token-cached-rag"}],
        }

    def _prompt_ids(self, request: CompletionRequest) -> list[int]:
        if isinstance(request.prompt, str):
            return self._tokenizer.encode(request.prompt)
        vocab = self._tokenizer.vocab_size
        for i, tid in enumerate(request.prompt):
            if not 0 <= tid < vocab:
                raise InvalidRequestError(f"prompt[{i}]", f"token id {tid} is outside the vocabulary (0..{vocab - 1})")
        return list(request.prompt)

    async def complete(self, request: CompletionRequest) -> dict[str, Any]:
        if request.model is not None and request.model != self._model_name:
            raise InvalidRequestError("model", f"unknown model {request.model!r}; this server serves {self._model_name!r}")
        prompt_ids = self._prompt_ids(request)
        result = await self._generate(
            GenerateRequest(
                prompt_token_ids=prompt_ids,
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                top_p=request.top_p,
                seed=request.seed,
                cache_salt=request.cache_salt,
                request_id=uuid.uuid4().hex,
            )
        )
        text = self._tokenizer.decode(result.token_ids)
        stops = [request.stop] if isinstance(request.stop, str) else (request.stop or [])
        text, stopped = _apply_stop(text, stops)
        finish_reason = "stop" if stopped else ("length" if result.finish_reason == "length" else "stop")
        choice: dict[str, Any] = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        if request.return_token_ids:
            choice["prompt_token_ids"] = prompt_ids
            choice["token_ids"] = list(result.token_ids)
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(self._clock()),
            "model": self._model_name,
            "choices": [choice],
            "usage": {
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
                "total_tokens": result.prompt_tokens + result.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": result.num_cached_tokens},
            },
        }
