"""The agent contract: what differs between the six agents, and nothing else.

An agent is a plain class: its collection, system prompt, request schema, how a request becomes a
retrieval query and a user message, and how the model's text becomes a structured output. Retrieval,
the token cache, prompt assembly and generation are shared (``rag.pipeline``, which calls ``postprocess``
with the retrieved chunks as ``retrieval.models.SearchHit``) and the Serve wrapper is in
``deployments/agent.py``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from llm.types import CacheSalt
from retrieval.models import DEFAULT_TOP_K, MAX_TOP_K, SearchHit

__all__ = ["AgentRequest", "AgentCacheSettings", "AgentOutput", "Agent", "EvolvingAgent"]

MAX_QUERY_CHARS = 4_000
MAX_CODE_CHARS = 20_000

SESSION_ID_PATTERN = r"^[A-Za-z0-9._:-]+$"
SessionId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=SESSION_ID_PATTERN)]
"""A conversation id picked by the client: 1-128 characters of ``[A-Za-z0-9._:-]``."""


class AgentRequest(BaseModel):
    """Fields every agent route accepts besides its own.

    Strict, like every HTTP body: a value of the wrong JSON type is refused, never coerced (``"5"`` is not
    an int, ``"true"`` not a bool, ``1`` not a string); only an integer is accepted where a float is due.
    Subclasses inherit the config.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    top_k: int = Field(default=DEFAULT_TOP_K, ge=1, le=MAX_TOP_K, description="Chunks to retrieve as context.")
    max_tokens: int = Field(default=128, ge=1, le=1024, description="Most tokens to generate.")
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="Sampling temperature; 0 is greedy.")
    stream: bool = Field(default=False, description="Answer with server-sent events.")
    use_cache: bool = Field(
        default=True,
        description="false serves the request as plain RAG on vLLM: a text prompt in retrieval order, "
        "tokenized per request, no token cache, vLLM's prefix cache left on (the peer benchmarks compare with).",
    )
    prefix_cache: bool = Field(
        default=True,
        description="false gives the request a fresh vLLM cache_salt so no KV prefix is reused (a reference "
        "point; with use_cache=true it isolates the token cache's own effect).",
    )
    cache_salt: CacheSalt | None = Field(
        default=None,
        description="vLLM cache salt: requests with different salts never share KV blocks (tenants, "
        "benchmark modes); each salt still reuses its own.",
    )
    session_id: SessionId | None = Field(
        default=None,
        description="A conversation: a new id starts one, a known id continues it from the previous turn's "
        "exact token IDs (GET/DELETE /v1/sessions/{id}).",
    )


@dataclass(frozen=True, slots=True)
class AgentCacheSettings:
    """Token-cache budget and lifetime for one agent (the original plan's per-agent numbers)."""

    ttl_s: int
    max_cache_size_mb: int


@dataclass(frozen=True, slots=True)
class AgentOutput:
    """What post-processing made of the model's text: the agent's JSON ``output``, and one warning per part
    of it that was filled in rather than generated (a template section, a skeleton test, the best source's
    opening paragraph). Each warning starts with the part's path in ``output`` (``"answer: ..."``,
    ``"variants[1].code: ..."``); none when the whole output came from the model's text. The answer carries
    both: ``"fallback": true`` when there is any warning, and ``"warnings"``."""

    output: Any
    warnings: tuple[str, ...] = ()

    @property
    def fallback(self) -> bool:
        return bool(self.warnings)


class Agent(abc.ABC):
    """One agent's specifics. Subclasses set the class attributes and implement the three methods."""

    name: ClassVar[str]  # URL segment and deployment name, e.g. "support"
    route: ClassVar[str]  # action segment, e.g. "answer" -> POST /v1/agents/support/answer
    collection: ClassVar[str]  # default collection, e.g. "support_kb"
    system_prompt: ClassVar[str]
    request_model: ClassVar[type[AgentRequest]]
    cache_settings: ClassVar[AgentCacheSettings]

    @abc.abstractmethod
    def retrieval_query(self, request: AgentRequest) -> str:
        """Text to embed and search the collection with."""

    @abc.abstractmethod
    def user_message(self, request: AgentRequest) -> str:
        """The user turn of the prompt (the part that differs per request; it comes after the context)."""

    @abc.abstractmethod
    def postprocess(self, text: str, sources: list[SearchHit], request: AgentRequest) -> AgentOutput:
        """Turn the model's text into this agent's JSON output, saying which parts were filled in rather
        than generated. Must never raise on odd model output."""


class EvolvingAgent(Agent):
    """An agent whose request may run several rounds server-side (SE-Darwin's ``generations``).

    ``rag.agent_service.AgentService`` runs the loop: round 1 is the request as any agent serves it; each
    later round continues the conversation (the previous round's exact prompt and output token IDs, then a
    new user turn from ``next_round``). The agent only says how many rounds, what a round produced, and
    what the next round asks. ``postprocess`` returns an ``AgentOutput`` whose ``output`` is a dict, to
    which the service adds ``"generations"``; the answer's ``warnings`` are every round's, each prefixed
    with its generation (``"generations[2].variants[0].code: ..."``), and ``fallback`` is true when any
    round filled anything in.
    """

    @abc.abstractmethod
    def rounds(self, request: AgentRequest) -> int:
        """How many rounds this request runs (1 = the plain single answer)."""

    @abc.abstractmethod
    def generation(self, output: dict[str, Any], request: AgentRequest) -> dict[str, Any]:
        """What one round produced, from its post-processed output (``AgentOutput.output``) and the request
        it served (JSON-able, with at least ``"candidate"``)."""

    @abc.abstractmethod
    def next_round(self, request: AgentRequest, generation: dict[str, Any], number: int) -> tuple[AgentRequest, str]:
        """Round ``number``'s request (what its ``postprocess`` sees) and its user message, built from the
        previous round's ``generation``."""
