"""Prompt assembly at the token level, so that repeated context repeats token for token.

The prompt is ``[before_system][system prompt][context header][chunk 1]...[chunk k][system_to_user]
[user message][after_user]``: the chat template's fixed parts are tokenized once at start-up (found by
rendering the template around marker strings and splitting on them), the system prompt once per agent,
and each chunk comes from the token cache. Everything before the user message is the *shared prefix*:
it depends only on the agent and on which chunks were retrieved, never on the query's wording, so vLLM's
prefix cache and the prefix-affinity router can reuse it. ``prefix_len`` marks where it ends.

Tokenizing segments separately differs from tokenizing the rendered whole only at segment boundaries
(for example a lone "\\n\\n" is one token where inside text it may merge); what matters is that a chunk
always yields the same IDs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from llm.exceptions import InvalidRequestError

__all__ = ["ChatSegments", "AssembledPrompt", "PromptAssembler", "canonical_order", "plain_prompt_ids"]

_SYSTEM_MARK = "\x00SYSTEM\x00"
_USER_MARK = "\x00USER\x00"


@dataclass(frozen=True, slots=True)
class ChatSegments:
    """Token IDs of the chat template's fixed parts around the system and user contents."""

    before_system: tuple[int, ...]
    system_to_user: tuple[int, ...]
    after_user: tuple[int, ...]

    @classmethod
    def from_hf_tokenizer(cls, tokenizer: Any) -> "ChatSegments":
        """Render the model's own chat template around markers and tokenize the pieces between them."""
        rendered = tokenizer.apply_chat_template(
            [{"role": "system", "content": _SYSTEM_MARK}, {"role": "user", "content": _USER_MARK}],
            tokenize=False,
            add_generation_prompt=True,
        )
        before, rest = rendered.split(_SYSTEM_MARK, 1)
        between, after = rest.split(_USER_MARK, 1)

        def ids(text: str) -> tuple[int, ...]:
            # Special tokens (<|im_start|> ...) must be parsed here: they are the template's control tokens.
            return tuple(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else ()

        return cls(before_system=ids(before), system_to_user=ids(between), after_user=ids(after))


@dataclass(frozen=True, slots=True)
class AssembledPrompt:
    token_ids: list[int]
    prefix_len: int  # tokens of the shared prefix (through the last context chunk)
    kept: tuple[int, ...]  # indices of the context chunks that fit the budget, in the order given


@dataclass(frozen=True, slots=True)
class _Ranked:
    index: int
    score: float


def canonical_order(positions: Sequence[tuple[str, int]]) -> list[int]:
    """Indices of chunks sorted by (document id, position in document).

    Why not retrieval order: two queries that retrieve the same chunks usually rank them differently, and
    a different order is a different prefix, so the KV cache would not be reused. Sorting by a stable key
    makes the same set give the same prefix; sorting by document and position also keeps a document's
    chunks adjacent and in reading order, and makes sets that share their first documents share a prefix.
    """
    return sorted(range(len(positions)), key=lambda i: positions[i])


class PromptAssembler:
    """Builds token-ID prompts from cached chunk IDs within the model's context length."""

    def __init__(
        self,
        segments: ChatSegments,
        encode: Callable[[str], list[int]],
        max_model_len: int,
        context_header: str = "\n\nContext:\n",
    ) -> None:
        self._segments = segments
        self._encode = encode
        self._max_model_len = max_model_len
        self._header_ids = tuple(encode(context_header)) if context_header else ()
        self._system_ids: dict[str, tuple[int, ...]] = {}

    @property
    def segments(self) -> ChatSegments:
        return self._segments

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    def system_ids(self, system_prompt: str) -> tuple[int, ...]:
        """The system prompt's tokens, computed once per distinct prompt (an agent has one)."""
        ids = self._system_ids.get(system_prompt)
        if ids is None:
            ids = self._system_ids[system_prompt] = tuple(self._encode(system_prompt))
        return ids

    def assemble(
        self,
        system_prompt: str,
        context: Sequence[Sequence[int]],
        scores: Sequence[float],
        user_ids: Sequence[int],
        max_tokens: int,
        turns: Sequence[tuple[Sequence[int], Sequence[int]]] = (),
    ) -> AssembledPrompt:
        """Concatenate the parts; drop the lowest-scoring chunks (whole chunks only) until it fits.

        ``context`` must already be in canonical order; dropped chunks leave the others' order intact.
        ``turns`` are earlier (user content, response) token pairs of a conversation whose prompt is
        being rebuilt; they go between the context and the new user turn, as they were.
        """
        seg = self._segments
        history = [t for user, response in turns
                   for t in (*seg.system_to_user, *user, *seg.after_user, *response)]
        fixed = (len(seg.before_system) + len(self.system_ids(system_prompt)) + len(self._header_ids)
                 + len(history) + len(seg.system_to_user) + len(user_ids) + len(seg.after_user))
        budget = self._max_model_len - max_tokens - fixed
        if budget < 0:
            raise InvalidRequestError(
                "max_tokens", f"the prompt without context ({fixed} tokens) plus max_tokens ({max_tokens}) "
                f"exceeds the model's context of {self._max_model_len} tokens")
        keep = self._fit(context, scores, budget)
        ids: list[int] = [*seg.before_system, *self.system_ids(system_prompt)]
        ids.extend(self._context_ids(context, keep))
        ids.extend(history)
        prefix_len = len(ids)
        ids.extend(seg.system_to_user)
        ids.extend(user_ids)
        ids.extend(seg.after_user)
        return AssembledPrompt(token_ids=ids, prefix_len=prefix_len, kept=tuple(sorted(keep)))

    def follow_up(
        self,
        history_ids: Sequence[int],
        context: Sequence[Sequence[int]],
        scores: Sequence[float],
        user_ids: Sequence[int],
        max_tokens: int,
    ) -> AssembledPrompt | None:
        """The next turn of a conversation: its exact tokens so far, then a user turn with the newly
        retrieved chunks and the message. The history is the shared prefix (its KV is cached where the
        previous turn ran). None when even the history and the message alone do not fit."""
        seg = self._segments
        fixed = (len(history_ids) + len(seg.system_to_user) + len(self._header_ids) + len(user_ids)
                 + len(seg.after_user))
        budget = self._max_model_len - max_tokens - fixed
        if budget < 0:
            return None
        keep = self._fit(context, scores, budget)
        ids = [*history_ids, *seg.system_to_user]
        prefix_len = len(history_ids)
        ids.extend(self._context_ids(context, keep))
        ids.extend(user_ids)
        ids.extend(seg.after_user)
        return AssembledPrompt(token_ids=ids, prefix_len=prefix_len, kept=tuple(sorted(keep)))

    def _context_ids(self, context: Sequence[Sequence[int]], keep: set[int]) -> list[int]:
        """The context header and the kept chunks, in the order given; nothing when no chunk is kept."""
        if not keep:
            return []
        return [*self._header_ids, *(t for i, chunk in enumerate(context) if i in keep for t in chunk)]

    @staticmethod
    def _fit(context: Sequence[Sequence[int]], scores: Sequence[float], budget: int) -> set[int]:
        """Indices of the chunks kept within ``budget`` tokens, the weakest evidence dropped first."""
        keep = set(range(len(context)))
        total = sum(len(c) for c in context)
        # The lowest score goes first, ties broken by the later chunk.
        for ranked in sorted((_Ranked(i, s) for i, s in enumerate(scores)), key=lambda r: (r.score, -r.index)):
            if total <= budget:
                break
            keep.discard(ranked.index)
            total -= len(context[ranked.index])
        return keep


def plain_prompt_ids(tokenizer: Any, system_prompt: str, context_texts: Sequence[str], user_text: str,
                     history: Sequence[tuple[str, str]] = (), context_header: str = "\n\nContext:\n") -> list[int]:
    """The plain-RAG peer: the same content rendered as text by the chat template, then the whole prompt
    tokenized on this request (what a RAG stack without a token cache does every time). ``history`` are a
    conversation's earlier (user, assistant) texts, re-sent as text the way chat clients do; the context
    is this turn's retrieval, in the system message."""
    system = system_prompt + (context_header + "".join(context_texts) if context_texts else "")
    messages = [{"role": "system", "content": system}]
    for user, assistant in history:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    messages.append({"role": "user", "content": user_text})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
