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
from llm.types import GenerateRequest, GenerateResult, StreamDelta, TokenLogprob

__all__ = [
    "EngineConfig", "EngineSettings", "EngineStep", "KVEventsPublishing", "TokenEngine", "VLLMEngine", "LLMServer",
    "read_eos_token_ids", "sampling_kwargs", "token_logprobs",
]

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
    logprobs: list[TokenLogprob] | None = None  # cumulative like token_ids, when the request asked for them


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


def sampling_kwargs(request: GenerateRequest) -> dict[str, Any]:
    """vLLM ``SamplingParams`` keyword arguments for a request: every sampling field maps to the vLLM field
    of the same name. ``detokenize=False``: the engine runs without a tokenizer; callers decode."""
    return {
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "top_k": request.top_k,
        "min_p": request.min_p,
        "presence_penalty": request.presence_penalty,
        "frequency_penalty": request.frequency_penalty,
        "repetition_penalty": request.repetition_penalty,
        "min_tokens": request.min_tokens,
        "ignore_eos": request.ignore_eos,
        "stop_token_ids": list(request.stop_token_ids),
        "seed": request.seed,
        "logprobs": request.logprobs,
        "detokenize": False,
    }


def token_logprobs(token_ids: list[int], positions: Any) -> list[TokenLogprob] | None:
    """vLLM's per-position logprob dicts (``{token_id: Logprob}``, the sampled token first) as
    ``TokenLogprob``s aligned with ``token_ids``; None when the engine returned none."""
    if positions is None:
        return None
    out: list[TokenLogprob] = []
    for token_id, position in zip(token_ids, positions):
        entries = tuple((int(tid), float(lp.logprob)) for tid, lp in (position or {}).items())
        sampled = next((lp for tid, lp in entries if tid == token_id), float("-inf"))
        out.append(TokenLogprob(token_id=int(token_id), logprob=sampled, entries=entries))
    return out


@dataclass(frozen=True, slots=True)
class KVEventsPublishing:
    """Where an engine publishes its KV-cache events (vLLM's ZMQ publisher); see routing/kv_events.py.

    ``endpoint`` and ``replay_endpoint`` with a ``*`` host bind (``tcp://*:PORT``); ``topic`` names the
    replica and engine instance so that one subscriber can tell many engines apart."""

    endpoint: str
    replay_endpoint: str | None
    topic: str


class VLLMEngine(TokenEngine):
    """``AsyncLLM`` with the tokenizer skipped: prompts arrive as token IDs and leave as token IDs."""

    def __init__(self, config: EngineConfig, kv_events: KVEventsPublishing | None = None) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        # The engine core process must not outlive this one (a SIGKILLed replica would leak its GBs).
        install_engine_core_guard()
        extra: dict[str, Any] = {}
        if config.block_size:
            extra["block_size"] = config.block_size
        if kv_events is not None:
            from vllm.config import KVEventsConfig

            extra["kv_events_config"] = KVEventsConfig(
                enable_kv_cache_events=True, publisher="zmq", endpoint=kv_events.endpoint,
                replay_endpoint=kv_events.replay_endpoint, topic=kv_events.topic,
            )

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
            **extra,
        )
        self._engine = AsyncLLM.from_engine_args(args)

    async def generate(self, request: GenerateRequest, request_id: str) -> AsyncIterator[EngineStep]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.v1.engine.exceptions import EngineDeadError as VLLMEngineDeadError

        prompt: dict[str, Any] = {"prompt_token_ids": request.prompt_token_ids}
        if request.cache_salt:
            prompt["cache_salt"] = request.cache_salt
        params = SamplingParams(**sampling_kwargs(request))
        try:
            async for out in self._engine.generate(TokensPrompt(**prompt), params, request_id=request_id):
                completion = out.outputs[0]
                token_ids = list(completion.token_ids)
                yield EngineStep(
                    token_ids=token_ids,
                    num_cached_tokens=out.num_cached_tokens or 0,
                    finished=out.finished,
                    finish_reason=completion.finish_reason,
                    logprobs=token_logprobs(token_ids, completion.logprobs) if request.logprobs is not None else None,
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
        # The engine has no tokenizer, so it stops on EOS only through these (not with ignore_eos).
        eos = [] if request.ignore_eos else self._eos_token_ids
        stop_ids = list(dict.fromkeys([*request.stop_token_ids, *eos]))
        engine_request = dataclasses.replace(request, stop_token_ids=stop_ids, request_id=request_id)
        started = self._clock()
        first_token_at: float | None = None
        emitted = 0
        final_new: list[int] = []
        final_logprobs: list[TokenLogprob] | None = None
        last: EngineStep | None = None
        finished = False
        try:
            async for step in self._engine.generate(engine_request, request_id):
                last = step
                if first_token_at is None and step.token_ids:
                    first_token_at = self._clock()
                new = step.token_ids[emitted:]
                new_logprobs = step.logprobs[emitted:] if step.logprobs is not None else None
                emitted = len(step.token_ids)
                if step.finished:
                    finished = True
                    final_new, final_logprobs = new, new_logprobs
                    break
                if new:
                    yield StreamDelta(token_ids=new, logprobs=new_logprobs, num_cached_tokens=step.num_cached_tokens)
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
            logprobs=list(last.logprobs) if last.logprobs is not None else None,
        )
        yield StreamDelta(token_ids=final_new, result=result, logprobs=final_logprobs,
                          num_cached_tokens=last.num_cached_tokens)

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
