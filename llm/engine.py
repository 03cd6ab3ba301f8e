"""The LLM replica's logic as a plain class: token IDs in, token IDs out, with timing and error handling.

``LLMServer`` takes an engine *factory* (so tests inject a fake engine and the Serve deployment injects
vLLM) and speaks only in ``GenerateRequest``/``GenerateResult``. ``VLLMEngine`` adapts vLLM's ``AsyncLLM``
to the small ``TokenEngine`` contract, which is the only place that knows vLLM's types.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from llm.engine_lifetime import install_engine_core_guard
from llm.exceptions import EngineDeadError, GenerationError, InvalidRequestError
from llm.types import GenerateRequest, GenerateResult, StreamDelta

__all__ = ["EngineConfig", "EngineSettings", "EngineStep", "TokenEngine", "VLLMEngine", "LLMServer", "read_eos_token_ids"]

logger = logging.getLogger(__name__)


class EngineSettings(BaseModel):
    """vLLM engine settings for one replica; defaults are the ones verified on a 2-core CPU machine."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dtype: str = Field(default="bfloat16", description="Weight and activation dtype.")
    max_model_len: int = Field(default=4096, gt=0, description="Longest prompt plus output, in tokens.")
    enable_prefix_caching: bool = Field(default=True, description="Reuse KV blocks of repeated prefixes.")
    enforce_eager: bool = Field(default=True, description="Skip graph capture: ~20 s start instead of ~80 s on CPU.")
    gpu_memory_utilization: float = Field(
        default=0.15, gt=0, le=1, description="Fraction of memory vLLM may claim; low on CPU or it refuses to start."
    )
    kv_cache_memory_bytes: int | None = Field(
        default=1 << 30, description="KV cache size in bytes (None: derive from gpu_memory_utilization)."
    )
    max_num_seqs: int = Field(default=16, gt=0, description="Most sequences batched at once by the engine.")
    seed: int = Field(default=0, description="Engine sampling seed.")
    block_size: int | None = Field(
        default=None, gt=0,
        description="KV block size in tokens (None: vLLM's default, 128 on CPU; the CPU build needs a multiple "
        "of 32). Only whole blocks are reused, so smaller blocks lose less of a prefix at its edge.",
    )


class EngineConfig(EngineSettings):
    """Engine settings plus the model they serve (resolved by the app builder)."""

    model: str = Field(description="Path of a local Hugging Face model folder (or a hub id where reachable).")


@dataclass(frozen=True, slots=True)
class EngineStep:
    """Cumulative state of one request after an engine step."""

    token_ids: list[int]
    num_cached_tokens: int
    finished: bool
    finish_reason: str | None


class TokenEngine(abc.ABC):
    """The engine contract ``LLMServer`` needs: stream steps, abort, health, shutdown."""

    @abc.abstractmethod
    def generate(self, request: GenerateRequest, request_id: str) -> AsyncIterator[EngineStep]: ...

    @abc.abstractmethod
    async def abort(self, request_id: str) -> None: ...

    @abc.abstractmethod
    async def check_health(self) -> None:
        """Raise ``EngineDeadError`` when the engine cannot serve any more."""

    @abc.abstractmethod
    def shutdown(self) -> None: ...


class VLLMEngine(TokenEngine):
    """``AsyncLLM`` with the tokenizer skipped: prompts arrive as token IDs and leave as token IDs."""

    def __init__(self, config: EngineConfig) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        # The engine core process must not outlive this one (a SIGKILLed replica would leak its GBs).
        install_engine_core_guard()

        args = AsyncEngineArgs(
            model=config.model,
            dtype=config.dtype,
            max_model_len=config.max_model_len,
            enable_prefix_caching=config.enable_prefix_caching,
            enforce_eager=config.enforce_eager,
            skip_tokenizer_init=True,
            gpu_memory_utilization=config.gpu_memory_utilization,
            kv_cache_memory_bytes=config.kv_cache_memory_bytes,
            max_num_seqs=config.max_num_seqs,
            seed=config.seed,
            **({"block_size": config.block_size} if config.block_size else {}),
        )
        self._engine = AsyncLLM.from_engine_args(args)

    async def generate(self, request: GenerateRequest, request_id: str) -> AsyncIterator[EngineStep]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.v1.engine.exceptions import EngineDeadError as VLLMEngineDeadError

        prompt: dict[str, Any] = {"prompt_token_ids": request.prompt_token_ids}
        if request.cache_salt:
            prompt["cache_salt"] = request.cache_salt
        params = SamplingParams(
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stop_token_ids=list(request.stop_token_ids),
            seed=request.seed,
            detokenize=False,
        )
        try:
            async for out in self._engine.generate(TokensPrompt(**prompt), params, request_id=request_id):
                completion = out.outputs[0]
                yield EngineStep(
                    token_ids=list(completion.token_ids),
                    num_cached_tokens=out.num_cached_tokens or 0,
                    finished=out.finished,
                    finish_reason=completion.finish_reason,
                )
        except VLLMEngineDeadError as err:
            raise EngineDeadError(str(err)) from err

    async def abort(self, request_id: str) -> None:
        await self._engine.abort(request_id)

    async def check_health(self) -> None:
        if self._engine.errored:
            raise EngineDeadError(str(self._engine.dead_error))

    def shutdown(self) -> None:
        self._engine.shutdown()


def read_eos_token_ids(model_dir: str) -> list[int]:
    """EOS token IDs from a local model folder; the engine runs without a tokenizer, so we pass them."""
    ids: list[int] = []
    for name in ("generation_config.json", "config.json"):
        path = Path(model_dir) / name
        if not path.is_file():
            continue
        value = json.loads(path.read_text()).get("eos_token_id")
        for tid in value if isinstance(value, list) else [value]:
            if isinstance(tid, int) and tid not in ids:
                ids.append(tid)
    return ids


class LLMServer:
    """Serves ``GenerateRequest``s on one engine: validation, timing, abort on cancel, health.

    Time to first token is measured here, from arrival at the replica to the first output step, so it
    includes queueing in the engine and the prefill that the prefix cache may skip.
    """

    def __init__(
        self,
        engine_factory: Callable[[], TokenEngine],
        max_model_len: int,
        eos_token_ids: list[int] | None = None,
        replica_id: str = "",
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._engine = engine_factory()
        self._max_model_len = max_model_len
        self._eos_token_ids = list(eos_token_ids or [])
        self._replica_id = replica_id
        self._clock = clock
        self._dead: EngineDeadError | None = None

    @property
    def replica_id(self) -> str:
        return self._replica_id

    def _validate(self, request: GenerateRequest) -> None:
        if not request.prompt_token_ids:
            raise InvalidRequestError("prompt", "must not be empty")
        if request.max_tokens < 1:
            raise InvalidRequestError("max_tokens", "must be at least 1")
        total = len(request.prompt_token_ids) + request.max_tokens
        if total > self._max_model_len:
            raise InvalidRequestError(
                "max_tokens",
                f"prompt ({len(request.prompt_token_ids)} tokens) plus max_tokens ({request.max_tokens}) "
                f"exceeds the model's context of {self._max_model_len} tokens",
            )

    async def generate_stream(self, request: GenerateRequest) -> AsyncIterator[StreamDelta]:
        """Stream new output tokens; the final delta carries the ``GenerateResult``."""
        if self._dead is not None:
            raise self._dead
        self._validate(request)
        request_id = request.request_id or uuid.uuid4().hex
        stop_ids = list(dict.fromkeys([*request.stop_token_ids, *self._eos_token_ids]))
        engine_request = dataclasses.replace(request, stop_token_ids=stop_ids, request_id=request_id)
        started = self._clock()
        first_token_at: float | None = None
        emitted = 0
        final_new: list[int] = []
        last: EngineStep | None = None
        finished = False
        try:
            async for step in self._engine.generate(engine_request, request_id):
                last = step
                if first_token_at is None and step.token_ids:
                    first_token_at = self._clock()
                new = step.token_ids[emitted:]
                emitted = len(step.token_ids)
                if step.finished:
                    finished = True
                    final_new = new
                    break
                if new:
                    yield StreamDelta(token_ids=new)
        except EngineDeadError as err:
            self._dead = err
            logger.error("engine dead on replica %s: %s", self._replica_id, err)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except InvalidRequestError:
            raise
        except Exception as err:  # anything else from the engine fails this request only
            raise GenerationError(f"generation failed: {err}") from err
        finally:
            if not finished:
                # Cancelled or failed mid-stream: free the engine's slot and KV blocks now.
                await _abort_quietly(self._engine, request_id)
        if last is None:
            raise GenerationError("engine returned no output")
        now = self._clock()
        result = GenerateResult(
            token_ids=list(last.token_ids),
            prompt_tokens=len(request.prompt_token_ids),
            num_cached_tokens=last.num_cached_tokens,
            completion_tokens=len(last.token_ids),
            finish_reason=last.finish_reason,
            ttft_s=(first_token_at or now) - started,
            total_s=now - started,
            replica_id=self._replica_id,
        )
        yield StreamDelta(token_ids=final_new, result=result)

    async def generate(self, request: GenerateRequest) -> GenerateResult:
        """Generate to completion and return the result."""
        result: GenerateResult | None = None
        async for delta in self.generate_stream(request):
            if delta.result is not None:
                result = delta.result
        assert result is not None
        return result

    async def check_health(self) -> None:
        if self._dead is not None:
            raise self._dead
        try:
            await self._engine.check_health()
        except EngineDeadError as err:
            self._dead = err
            raise

    def shutdown(self) -> None:
        self._engine.shutdown()


async def _abort_quietly(engine: TokenEngine, request_id: str) -> None:
    try:
        await engine.abort(request_id)
    except Exception:  # aborting is best effort: the request is already gone for the caller
        logger.debug("abort of %s failed", request_id, exc_info=True)
