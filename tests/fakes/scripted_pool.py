"""Test double for the LLM pool as the completions service calls it (``generate_stream``): it streams a
scripted output, a few tokens per delta, and records what it was asked and whether the caller stopped
reading before the end (which aborts the request on a real replica)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from llm.exceptions import LLMError
from llm.types import GenerateRequest, GenerateResult, StreamDelta, TokenLogprob


class ScriptedPool:
    def __init__(self, output: Sequence[int], *, per_delta: int = 1, cached: int = 0, finish_reason: str = "length",
                 fail_after: int | None = None, fail_with: LLMError | None = None) -> None:
        self.output = list(output)
        self.per_delta = per_delta
        self.cached = cached
        self.finish_reason = finish_reason
        self.fail_after = fail_after
        self.fail_with = fail_with
        self.requests: list[GenerateRequest] = []
        self.closed_early = 0
        self.deltas_sent = 0

    @staticmethod
    def logprob(token_id: int, k: int) -> TokenLogprob:
        entries = ((token_id, -0.5), *((token_id + j, -1.0 - j) for j in range(1, k + 1)))
        return TokenLogprob(token_id=token_id, logprob=-0.5, entries=entries)

    async def generate_stream(self, request: GenerateRequest) -> AsyncIterator[StreamDelta]:
        self.requests.append(request)
        out = self.output[: request.max_tokens]
        finished = False
        try:
            for start in range(0, len(out), self.per_delta):
                if self.fail_after is not None and start >= self.fail_after:
                    raise self.fail_with or LLMError("scripted failure")
                ids = out[start:start + self.per_delta]
                logprobs = [self.logprob(t, request.logprobs) for t in ids] if request.logprobs is not None else None
                last = start + self.per_delta >= len(out)
                result = None
                if last:
                    finished = True
                    result = GenerateResult(
                        token_ids=list(out), prompt_tokens=len(request.prompt_token_ids), num_cached_tokens=self.cached,
                        completion_tokens=len(out),
                        finish_reason=self.finish_reason if len(out) < request.max_tokens else "length",
                        ttft_s=0.01, total_s=0.02)
                self.deltas_sent += 1
                yield StreamDelta(token_ids=ids, result=result, logprobs=logprobs, num_cached_tokens=self.cached)
        finally:
            if not finished:
                self.closed_early += 1
