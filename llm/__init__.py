"""The LLM layer: engine adapter, replica logic, the values passed to and from replicas, and the OpenAI API
(``llm.openai_api`` request bodies, ``llm.completions`` the service behind the OpenAI routes)."""

from llm.engine import (
    EngineConfig,
    EngineSettings,
    EngineStep,
    KVEventsPublishing,
    LLMServer,
    TokenEngine,
    VLLMEngine,
    read_eos_token_ids,
)
from llm.exceptions import (
    EngineDeadError,
    GenerationError,
    InvalidRequestError,
    LLMError,
    LLMUnavailableError,
)
from llm.types import GenerateRequest, GenerateResult, StreamDelta, TokenLogprob

__all__ = [
    "EngineConfig",
    "EngineSettings",
    "EngineStep",
    "LLMServer",
    "TokenEngine",
    "VLLMEngine",
    "KVEventsPublishing",
    "read_eos_token_ids",
    "EngineDeadError",
    "GenerationError",
    "InvalidRequestError",
    "LLMError",
    "LLMUnavailableError",
    "GenerateRequest",
    "GenerateResult",
    "StreamDelta",
    "TokenLogprob",
]
