"""Test double for ``llm.TokenEngine``: emits a scripted token stream and mimics prefix-cache accounting.

It is a fake, used only by unit tests: the app and every benchmark run the real vLLM engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from llm.engine import EngineStep, TokenEngine
from llm.exceptions import EngineDeadError
from llm.types import GenerateRequest, TokenLogprob


class FakeTokenEngine(TokenEngine):
    """Output token i is ``(sum(prompt) + i) % 1000``; a prompt seen before reports whole 16-token blocks cached.

    With ``logprobs`` the sampled token has logprob ``-0.25`` and the alternatives ``token + j`` (j = 1..k)
    have ``-1.0 * j``, listed as vLLM lists them (sampled first). ``min_tokens`` holds back stop tokens."""

    def __init__(self, block_size: int = 16, step_delay_s: float = 0.0) -> None:
        self.block_size = block_size
        self.step_delay_s = step_delay_s
        self.seen_prompts: list[list[int]] = []
        self.requests: list[GenerateRequest] = []
        self.aborted: list[str] = []
        self.dead = False
        self.fail_next: Exception | None = None
        self.shut_down = False

    def _cached(self, prompt: list[int], salt: str | None) -> int:
        best = 0
        for seen, seen_salt in self.seen_prompts:
            if seen_salt != salt:
                continue
            n = 0
            for a, b in zip(seen, prompt):
                if a != b:
                    break
                n += 1
            best = max(best, n)
        best = min(best, len(prompt) - 1)
        return (best // self.block_size) * self.block_size

    async def generate(self, request: GenerateRequest, request_id: str) -> AsyncIterator[EngineStep]:
        if self.dead:
            raise EngineDeadError("fake engine is dead")
        if self.fail_next is not None:
            err, self.fail_next = self.fail_next, None
            raise err
        self.requests.append(request)
        prompt = list(request.prompt_token_ids)
        cached = self._cached(prompt, request.cache_salt)
        self.seen_prompts.append((prompt, request.cache_salt))
        base = sum(prompt)
        out: list[int] = []
        logprobs: list[TokenLogprob] = []
        for i in range(request.max_tokens):
            if self.step_delay_s:
                await asyncio.sleep(self.step_delay_s)
            token = (base + i) % 1000
            out.append(token)
            if request.logprobs is not None:
                entries = ((token, -0.25), *(((token + j) % 1000, -1.0 * j) for j in range(1, request.logprobs + 1)))
                logprobs.append(TokenLogprob(token_id=token, logprob=-0.25, entries=entries))
            stop = token in request.stop_token_ids and i + 1 >= request.min_tokens
            last = stop or i == request.max_tokens - 1
            yield EngineStep(
                token_ids=list(out),
                num_cached_tokens=cached,
                finished=last,
                finish_reason=("stop" if stop else "length") if last else None,
                logprobs=list(logprobs) if request.logprobs is not None else None,
            )
            if last:
                return

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    async def check_health(self) -> None:
        if self.dead:
            raise EngineDeadError("fake engine is dead")

    def shutdown(self) -> None:
        self.shut_down = True
