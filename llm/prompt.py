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
    ) -> AssembledPrompt:
        """Concatenate the parts; drop the lowest-scoring chunks (whole chunks only) until it fits.

        ``context`` must already be in canonical order; dropped chunks leave the others' order intact.
        """
        seg = self._segments
        fixed = (len(seg.before_system) + len(self.system_ids(system_prompt)) + len(self._header_ids)
                 + len(seg.system_to_user) + len(user_ids) + len(seg.after_user))
        budget = self._max_model_len - max_tokens - fixed
        if budget < 0:
            raise InvalidRequestError(
                "max_tokens", f"the prompt without context ({fixed} tokens) plus max_tokens ({max_tokens}) "
                f"exceeds the model's context of {self._max_model_len} tokens")
        keep = set(range(len(context)))
        total = sum(len(c) for c in context)
        # Drop the weakest evidence first: the lowest score, ties broken by the later chunk.
        for ranked in sorted((_Ranked(i, s) for i, s in enumerate(scores)), key=lambda r: (r.score, -r.index)):
            if total <= budget:
                break
            keep.discard(ranked.index)
            total -= len(context[ranked.index])
        ids: list[int] = [*seg.before_system, *self.system_ids(system_prompt)]
        if keep:
            ids.extend(self._header_ids)
            for i, chunk in enumerate(context):
                if i in keep:
                    ids.extend(chunk)
        prefix_len = len(ids)
        ids.extend(seg.system_to_user)
        ids.extend(user_ids)
        ids.extend(seg.after_user)
        return AssembledPrompt(token_ids=ids, prefix_len=prefix_len, kept=tuple(sorted(keep)))


def plain_prompt_ids(tokenizer: Any, system_prompt: str, context_texts: Sequence[str], user_text: str,
                     context_header: str = "\n\nContext:\n") -> list[int]:
    """The plain-RAG baseline: the same content rendered as text by the chat template, then the whole
    prompt tokenized on this request (what a RAG stack without a token cache does every time)."""
    system = system_prompt + (context_header + "".join(context_texts) if context_texts else "")
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": system}, {"role": "user", "content": user_text}],
        tokenize=False,
        add_generation_prompt=True,
    )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
