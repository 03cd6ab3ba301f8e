"""Errors of the LLM layer. Two engine errors are kept apart on purpose (as vLLM does): a dead engine
means the replica must be replaced, a failed request means only that request failed."""

from __future__ import annotations

__all__ = [
    "LLMError",
    "EngineDeadError",
    "GenerationError",
    "LLMUnavailableError",
    "InvalidRequestError",
]


class LLMError(Exception):
    """Base of every error raised by the ``llm`` package."""


class EngineDeadError(LLMError):
    """The engine process died. The replica reports unhealthy so Serve replaces it; retry on another replica."""


class GenerationError(LLMError):
    """One request failed inside a live engine. Retrying the same request is unlikely to help."""


class LLMUnavailableError(LLMError):
    """No replica (and no fallback) could serve the request in time. Retry later; callers answer 503."""


class InvalidRequestError(LLMError):
    """The request cannot be served as given (for example the prompt exceeds ``max_model_len``).

    ``field`` names the offending input so HTTP layers can answer 4xx naming it.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def __reduce__(self):  # keep both fields when Ray pickles the error across processes
        return (type(self), (self.field, self.message))
