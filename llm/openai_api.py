"""The OpenAI API's request bodies as vLLM's server accepts them: ``/v1/completions`` and
``/v1/chat/completions``.

Each field we serve means what vLLM's field of the same name means (vllm/entrypoints/openai/
{completion,chat_completion}/protocol.py), with vLLM's defaults. Three kinds of input are told apart:

- a field we serve with a value of the wrong JSON type or out of range: refused (400 naming it). Types are
  strict, as on every route of this app: ``"16"`` is not an int (vLLM would coerce it); an int is a float.
- a field vLLM knows that we do not serve (``logit_bias``, ``tools``, ``n`` above 1, ...): refused with
  ``InvalidRequestError`` naming it, unless its value is the one that means "not used" (``null``,
  ``false``, ``[]``, vLLM's default), which clients often send.
- a field neither knows: ignored, exactly as vLLM does (its ``OpenAIBaseModel`` allows extra fields and
  only logs them); we log them at debug level too.

``collection`` and ``retrieval_top_k`` on chat completions are our extension (the RAG hook). The
retrieval count is not called ``top_k``: that name is vLLM's top-k sampling field and keeps its meaning.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from llm.exceptions import InvalidRequestError
from llm.types import CacheSalt

__all__ = [
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "MAX_LOGPROBS",
    "MAX_STOP_SEQUENCES",
    "SamplingFields",
    "StreamOptions",
    "TextPart",
]

logger = logging.getLogger(__name__)

MAX_STOP_SEQUENCES = 4  # OpenAI's limit, kept from the first version of /v1/completions
MAX_LOGPROBS = 20  # vLLM's default --max-logprobs

_NOT_USED = (None, False, [], {}, "")


def _refuse(field: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(field, message)


class _OpenAIBody(BaseModel):
    """Shared config and the unsupported/unknown field rules (see the module docstring)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    # vLLM fields we do not serve -> the values that mean "not used" besides null/false/[]/{}/"".
    unsupported: ClassVar[dict[str, tuple[Any, ...]]] = {}

    @model_validator(mode="before")
    @classmethod
    def _unsupported_and_unknown(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        extra = data.keys() - cls.model_fields.keys()
        for name in sorted(extra):
            if name in cls.unsupported:
                value = data[name]
                if not any(value is v or (type(value) is type(v) and value == v)
                           for v in (*_NOT_USED, *cls.unsupported[name])):
                    raise _refuse(name, "not supported by this server")
        unknown = sorted(extra - cls.unsupported.keys())
        if unknown:  # vLLM ignores them too (and logs them at debug level)
            logger.debug("The following fields were present in the request but ignored: %s", unknown)
        return data


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    include_usage: bool | None = Field(default=False, description="Send a last chunk with usage before [DONE].")
    continuous_usage_stats: bool | None = Field(default=False, description="Usage in every chunk.")


class SamplingFields(_OpenAIBody):
    """The sampling fields both routes share (vLLM's names, meanings and defaults)."""

    model: str | None = Field(default=None, description="Served model name; optional, must match if given.")
    n: int = Field(default=1, description="Choices per request; only 1 is served.")
    temperature: float | None = Field(default=None, ge=0.0, description="Sampling temperature (default 1.0); 0 is greedy.")
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, description="Nucleus sampling mass (default 1.0).")
    top_k: int | None = Field(default=None, ge=-1, description="Top-k sampling; 0 or -1: all tokens (default).")
    min_p: float | None = Field(default=None, ge=0.0, le=1.0, description="Minimum probability relative to the top token.")
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1, description="Sampling seed.")
    stop: str | list[str] | None = Field(default=None, description=f"Up to {MAX_STOP_SEQUENCES} stop strings.")
    stop_token_ids: list[int] | None = Field(default=None, description="Token IDs that end the output.")
    include_stop_str_in_output: bool = Field(default=False, description="Keep the stop string that ended the output.")
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0, description="Presence penalty (default 0).")
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0, description="Frequency penalty (default 0).")
    repetition_penalty: float | None = Field(default=None, gt=0.0, description="Repetition penalty (default 1, off).")
    ignore_eos: bool = Field(default=False, description="Keep generating past the end-of-sequence token.")
    min_tokens: int = Field(default=0, ge=0, description="Tokens to generate before EOS or stop tokens may end it.")
    stream: bool | None = Field(default=False, description="Answer with server-sent events.")
    stream_options: StreamOptions | None = Field(default=None, description="Streaming options (with stream).")
    user: str | None = Field(default=None, description="Caller id (accepted, unused, as in vLLM).")
    cache_salt: CacheSalt | None = Field(
        default=None, description="vLLM cache salt: requests with different salts never share KV blocks."
    )
    return_token_ids: bool | None = Field(default=None, description="Return prompt and output token IDs.")
    skip_special_tokens: bool = Field(default=True, description="Leave special tokens out of the text (only true).")
    spaces_between_special_tokens: bool = Field(default=True, description="Accepted for compatibility.")

    unsupported = {
        "logit_bias": (), "use_beam_search": (), "best_of": (1,), "length_penalty": (1.0, 1), "watermarking": (),
        "truncate_prompt_tokens": (), "truncation_side": (), "allowed_token_ids": (), "prompt_logprobs": (),
        "logprob_token_ids": (), "bad_words": (), "prompt_embeds": (), "response_format": ({"type": "text"},),
        "structured_outputs": (), "priority": (0,), "kv_transfer_params": (), "ec_transfer_params": (),
        "vllm_xargs": (), "repetition_detection": (), "thinking_token_budget": (-1,), "stream_interval": (1,),
        "return_tokens_as_token_ids": (), "service_tier": ("auto", "default"), "guided_json": (),
        "guided_regex": (), "guided_choice": (), "guided_grammar": (), "logits_processors": (),
    }

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1")
        if value > 1:
            raise ValueError("only n=1 is served (one choice per request)")
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

    @field_validator("skip_special_tokens")
    @classmethod
    def _skip_special(cls, value: bool) -> bool:
        if not value:
            raise ValueError("only true is supported (special tokens are always left out of the text)")
        return value

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> "SamplingFields":
        if self.stream_options is not None and not self.stream:
            raise _refuse("stream_options", "stream options can only be defined when `stream=true`")
        return self

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.continuous_usage_stats)

    def sampling(self) -> dict[str, Any]:
        """``GenerateRequest`` sampling fields: the request's values, else vLLM's defaults for the API
        (temperature 1.0: an OpenAI client that sends no temperature samples, as on vLLM)."""
        return {
            "temperature": 1.0 if self.temperature is None else self.temperature,
            "top_p": 1.0 if self.top_p is None else self.top_p,
            "top_k": 0 if self.top_k is None else self.top_k,
            "min_p": 0.0 if self.min_p is None else self.min_p,
            "presence_penalty": self.presence_penalty or 0.0,
            "frequency_penalty": self.frequency_penalty or 0.0,
            "repetition_penalty": 1.0 if self.repetition_penalty is None else self.repetition_penalty,
            "min_tokens": self.min_tokens,
            "ignore_eos": self.ignore_eos,
            "seed": self.seed,
            "stop_token_ids": list(self.stop_token_ids or []),
            "cache_salt": self.cache_salt,
        }


class CompletionRequest(SamplingFields):
    """``POST /v1/completions``: one prompt, as text or as token IDs of the served model."""

    prompt: str | list[int] = Field(description="Prompt as text or as token IDs of the served model.")
    max_tokens: int | None = Field(default=16, ge=0, description="Most tokens to generate (0 only with echo).")
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS,
                                 description="Log-probabilities of each output token and of this many alternatives.")
    echo: bool | None = Field(default=False, description="Put the prompt's text before the output.")
    add_special_tokens: bool = Field(default=True, description="Add the tokenizer's special tokens (a BOS) to a text prompt.")

    unsupported = {**SamplingFields.unsupported, "suffix": ()}

    @field_validator("prompt")
    @classmethod
    def _prompt_not_empty(cls, value: str | list[int]) -> str | list[int]:
        if len(value) == 0:
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _echo_rules(self) -> "CompletionRequest":
        if self.max_tokens == 0 and not self.echo:
            raise _refuse("max_tokens", "must be at least 1 (0 only with echo, which returns the prompt alone)")
        if self.echo and self.logprobs is not None:
            raise _refuse("echo", "echo with logprobs (prompt logprobs) is not supported")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise _refuse("min_tokens", "must not exceed max_tokens")
        return self

    @property
    def output_budget(self) -> int:
        return 16 if self.max_tokens is None else self.max_tokens


class TextPart(BaseModel):
    """A text part of a message's content (``{"type": "text", "text": ...}``); parts are joined with
    newlines, as vLLM does for text-only templates."""

    model_config = ConfigDict(extra="ignore", strict=True)

    type: Literal["text"] = Field(description="Only text parts are served.")
    text: str = Field(description="The text.")


class ChatMessage(BaseModel):
    """One message of a chat. Tool calls are not served."""

    model_config = ConfigDict(extra="ignore", strict=True)

    role: Literal["system", "developer", "user", "assistant"] = Field(description="Who speaks.")
    content: str | list[TextPart] | None = Field(default=None, description="Text, or a list of text parts.")
    name: str | None = Field(default=None, description="Speaker name, handed to the chat template.")
    tool_calls: list[Any] | None = Field(default=None, description="Not served (only empty).")
    tool_call_id: str | None = Field(default=None, description="Not served.")

    @field_validator("tool_calls")
    @classmethod
    def _no_tool_calls(cls, value: list[Any] | None) -> list[Any] | None:
        if value:
            raise ValueError("tool calls are not supported by this server")
        return value

    @field_validator("tool_call_id")
    @classmethod
    def _no_tool_call_id(cls, value: str | None) -> str | None:
        if value is not None:
            raise ValueError("tool messages are not supported by this server")
        return value

    @property
    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)

    def template_dict(self) -> dict[str, Any]:
        """The message as chat templates take it (content as one string)."""
        message: dict[str, Any] = {"role": self.role, "content": self.text}
        if self.name is not None:
            message["name"] = self.name
        return message


class ChatCompletionRequest(SamplingFields):
    """``POST /v1/chat/completions``. ``collection``/``retrieval_top_k`` are our RAG hook: the chunks
    retrieved for the last user message go into the system turn as cached token IDs."""

    messages: list[ChatMessage] = Field(min_length=1, description="The conversation so far.")
    max_tokens: int | None = Field(default=None, ge=1, description="Most tokens to generate (deprecated name).")
    max_completion_tokens: int | None = Field(default=None, ge=1, description="Most tokens to generate.")
    logprobs: bool | None = Field(default=False, description="Log-probabilities of each output token.")
    top_logprobs: int | None = Field(default=0, ge=0, le=MAX_LOGPROBS, description="Alternatives per token (with logprobs).")
    add_generation_prompt: bool = Field(default=True, description="End the prompt with the assistant header.")
    continue_final_message: bool = Field(default=False, description="Continue the last (assistant) message.")
    collection: str | None = Field(default=None, min_length=1, max_length=64,
                                   description="Our extension: retrieve context from this collection.")
    retrieval_top_k: int | None = Field(default=None, ge=1, description="Our extension: chunks to retrieve (default 5).")

    unsupported = {
        **SamplingFields.unsupported, "tools": (), "tool_choice": ("none", "auto"), "parallel_tool_calls": (True,),
        "functions": (), "function_call": ("none", "auto"), "echo": (), "documents": (), "chat_template": (),
        "chat_template_kwargs": (), "mm_processor_kwargs": (), "media_io_kwargs": (), "reasoning_effort": (),
        "include_reasoning": (True,), "return_prompt_text": (), "audio": (), "modalities": (["text"],),
        "prediction": (), "web_search_options": (), "metadata": (), "store": (),
    }

    @model_validator(mode="after")
    def _chat_rules(self) -> "ChatCompletionRequest":
        if self.continue_final_message and self.add_generation_prompt:
            raise _refuse("continue_final_message",
                          "cannot be true together with add_generation_prompt (set add_generation_prompt false)")
        if self.continue_final_message and self.messages[-1].role != "assistant":
            raise _refuse("continue_final_message", "the last message must be the assistant's")
        if self.top_logprobs and not self.logprobs:
            raise _refuse("top_logprobs", "needs logprobs=true")
        if self.retrieval_top_k is not None and self.collection is None:
            raise _refuse("retrieval_top_k", "needs a collection")
        budget = self.output_budget
        if budget is not None and self.min_tokens > budget:
            raise _refuse("min_tokens", "must not exceed max_completion_tokens")
        return self

    @property
    def output_budget(self) -> int | None:
        """max_completion_tokens, else max_tokens, else None (vLLM: whatever the context leaves)."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def logprobs_k(self) -> int | None:
        """vLLM's SamplingParams.logprobs for this request: top_logprobs alternatives, when logprobs is on."""
        return (self.top_logprobs or 0) if self.logprobs else None
