"""Conversations: each turn's exact token IDs, kept so a follow-up extends them instead of re-tokenizing.

A follow-up's prompt is the previous turn's prompt plus its generated tokens plus the new user turn, so
vLLM's prefix cache holds everything before the new turn (KV blocks of generated tokens are cached too).
Sessions live in Redis (with a TTL, so any replica of the agent can continue one) and in a bounded local
tier that keeps a conversation going on this replica while Redis is down.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cache.redis_tier import RedisTier

__all__ = ["Session", "SessionConfig", "SessionStore", "SessionTurn", "session_key"]

logger = logging.getLogger(__name__)

_KEY_PREFIX = "tcrag:session"


class SessionConfig(BaseModel):
    """Bounds of one agent's conversations (``sessions:`` in serve_config.yaml)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_turns: int = Field(default=8, ge=1, description="Turns kept; older ones are dropped and the prompt rebuilt.")
    max_history_tokens: int = Field(
        default=3072, ge=64, description="Tokens of history (prompts and outputs) a follow-up may carry."
    )
    ttl_s: float = Field(default=3600.0, gt=0, description="Seconds an idle conversation is kept.")
    max_local_sessions: int = Field(
        default=512, ge=1, description="Conversations this replica keeps in memory (the rest live in Redis)."
    )
    redis_timeout_s: float = Field(default=0.2, gt=0, description="Timeout of one session read or write in Redis.")


@dataclass(slots=True)
class SessionTurn:
    """One turn as sent and as generated, in token IDs; ``user_ids`` is the turn's own user content."""

    prompt_token_ids: list[int]
    response_token_ids: list[int]
    user_ids: list[int]
    user_text: str
    response_text: str
    sources: list[str]
    plain: bool = False  # served as plain RAG (use_cache=false): its history is re-sent as text


@dataclass(slots=True)
class Session:
    session_id: str
    agent: str
    turns: list[SessionTurn] = field(default_factory=list)
    dropped_turns: int = 0
    updated_at: float = 0.0

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Session:
        data = json.loads(raw)
        turns = [SessionTurn(**t) for t in data.pop("turns")]
        return cls(turns=turns, **data)

    def public(self) -> dict[str, Any]:
        """``GET /v1/sessions/{id}``: each turn's exact prompt and response token IDs (what RL trainers read)."""
        return {
            "session_id": self.session_id,
            "agent": self.agent,
            "dropped_turns": self.dropped_turns,
            "turns": [{"prompt_token_ids": t.prompt_token_ids, "response_token_ids": t.response_token_ids,
                       "user_text": t.user_text, "response_text": t.response_text, "sources": t.sources,
                       "mode": "plain_rag" if t.plain else "token_cache"} for t in self.turns],
        }


def session_key(session_id: str) -> str:
    return f"{_KEY_PREFIX}:{session_id}"


class SessionStore:
    """Redis first (shared by every replica), a bounded local LRU as its fallback; never raises on I/O."""

    def __init__(self, config: SessionConfig, redis: RedisTier | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._redis = redis
        self._clock = clock
        self._local: OrderedDict[str, Session] = OrderedDict()

    async def get(self, session_id: str) -> Session | None:
        session = None
        if self._redis is not None:
            found = await self._redis.get_many([session_key(session_id)])
            raw = found.get(session_key(session_id))
            if raw is not None:
                try:
                    session = Session.from_json(raw)
                except (ValueError, TypeError, KeyError) as err:
                    logger.warning("session %s: unreadable entry in Redis (%s); using the local copy", session_id, err)
        if session is None:
            session = self._local_get(session_id)
        return session

    async def put(self, session: Session) -> None:
        session.updated_at = self._clock()
        self._local[session.session_id] = session
        self._local.move_to_end(session.session_id)
        while len(self._local) > self.config.max_local_sessions:
            self._local.popitem(last=False)
        if self._redis is not None:
            ok = await self._redis.put_many({session_key(session.session_id): session.to_json()},
                                            ttl_s=self.config.ttl_s)
            if not ok:
                logger.info("session %s kept locally only (Redis unavailable)", session.session_id)

    async def delete(self, session_id: str) -> bool:
        existed = self._local.pop(session_id, None) is not None
        if self._redis is not None:  # a session left behind in Redis (Redis down) expires with its TTL
            existed = bool(await self._redis.delete_many([session_key(session_id)])) or existed
        return existed

    def _local_get(self, session_id: str) -> Session | None:
        session = self._local.get(session_id)
        if session is None:
            return None
        if self._clock() - session.updated_at > self.config.ttl_s:
            del self._local[session_id]
            return None
        self._local.move_to_end(session_id)
        return session
