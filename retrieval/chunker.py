"""Deterministic, structure-aware chunking measured in the served model's tokens.

One chunk becomes one token-cache entry and one retrieval unit, so chunks must (a) never exceed the
token budget the prompt assembler plans with, and (b) be byte-identical every time the same text is
chunked, otherwise cache keys and vLLM prefixes stop repeating. The algorithm is therefore a pure
function of (text, tokenizer, target, max): no randomness, no dependence on call history.

Order of preference for boundaries: markdown headings, then blank-line paragraphs, then lines (inside
oversized code blocks), sentences, words and, as a last resort, characters.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["chunk_text"]

_HEADING = re.compile(r"^#{1,6}\s+\S")
_FENCE = re.compile(r"^\s*(```|~~~)")
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")
_PARAGRAPH_SEP = "\n\n"


def chunk_text(
    text: str,
    count_tokens: Callable[[str], int],
    target_tokens: int = 384,
    max_tokens: int = 512,
    *,
    min_section_tokens: int | None = None,
) -> list[str]:
    """Split `text` into chunks of about `target_tokens` and never more than `max_tokens` tokens.

    A markdown heading starts a new chunk when the chunk being built is non-trivial (it has body text
    and at least `min_section_tokens`, default target/2), so that small sections merge with their
    neighbours into chunks of roughly target/2..target tokens while big sections stay separate. Paragraphs are packed up to `target_tokens`; a
    paragraph larger than `max_tokens` is split on lines, sentences, words, then characters. Headings
    are never left dangling at the end of a chunk. Fenced code blocks are kept whole when they fit,
    and `#` comments inside them are not mistaken for headings.
    """
    if target_tokens <= 0 or max_tokens <= 0:
        raise ValueError("target_tokens and max_tokens must be positive")
    target_tokens = min(target_tokens, max_tokens)
    min_section = target_tokens // 2 if min_section_tokens is None else min_section_tokens

    chunks: list[str] = []
    current: list[str] = []  # paragraphs of the chunk being built
    has_body = False  # whether `current` holds anything besides headings

    def flush(keep_trailing_headings: bool) -> None:
        nonlocal current, has_body
        carry: list[str] = []
        if keep_trailing_headings:
            # A heading belongs with the text that follows it, not at the end of the previous chunk.
            while current and _is_heading(current[-1]) and len(current) > 1:
                carry.insert(0, current.pop())
        if current:
            chunks.append(_PARAGRAPH_SEP.join(current))
        current = carry
        has_body = False

    for block in _blocks(text):
        heading = _is_heading(block)
        if heading and has_body and count_tokens(_PARAGRAPH_SEP.join(current)) >= min_section:
            flush(keep_trailing_headings=False)
        candidate = _PARAGRAPH_SEP.join([*current, block])
        if count_tokens(candidate) <= target_tokens:
            current.append(block)
            has_body = has_body or not heading
            continue
        # The block does not fit in the current chunk.
        if count_tokens(block) <= max_tokens:
            if current and has_body:
                flush(keep_trailing_headings=True)
            candidate = _PARAGRAPH_SEP.join([*current, block])
            if current and count_tokens(candidate) <= max_tokens:
                current.append(block)  # only carried headings precede it; keep them together
            else:
                flush(keep_trailing_headings=False)
                current.append(block)
            has_body = not heading
            continue
        # Oversized block: close the current chunk (its trailing headings lead the block), then emit
        # the block's pieces; the last piece stays open so that following paragraphs can join it.
        if current and has_body:
            flush(keep_trailing_headings=True)
        if current:
            block = _PARAGRAPH_SEP.join([*current, block])
            current = []
        pieces = _split_oversized(block, count_tokens, target_tokens, max_tokens)
        chunks.extend(pieces[:-1])
        current = [pieces[-1]]
        has_body = True
    if current:
        chunks.append(_PARAGRAPH_SEP.join(current))
    return [c for c in chunks if c.strip()]


def _is_heading(block: str) -> bool:
    return "\n" not in block and _HEADING.match(block) is not None


def _blocks(text: str) -> list[str]:
    """Paragraphs and headings of `text`, with fenced code blocks kept as one block."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    blocks: list[str] = []
    buf: list[str] = []
    in_fence = False

    def end_block() -> None:
        if buf:
            block = "\n".join(buf).strip("\n")
            if block.strip():
                blocks.append(block.rstrip())
            buf.clear()

    for line in lines:
        if _FENCE.match(line):
            if not in_fence:
                end_block()
                in_fence = True
                buf.append(line)
            else:
                buf.append(line)
                in_fence = False
                end_block()
            continue
        if in_fence:
            buf.append(line)
        elif not line.strip():
            end_block()
        elif _HEADING.match(line):
            end_block()
            blocks.append(line.strip())
        else:
            buf.append(line)
    end_block()
    return blocks


def _split_oversized(
    block: str, count_tokens: Callable[[str], int], target_tokens: int, max_tokens: int
) -> list[str]:
    """Split one block larger than `max_tokens`, preferring the coarsest boundary that works."""
    levels: list[tuple[str, Callable[[str], list[str]]]] = [
        ("\n", lambda s: [u for u in s.split("\n") if u.strip()]),
        (" ", lambda s: [u for u in _SENTENCE_END.split(s.strip()) if u]),
        (" ", lambda s: s.split()),
    ]
    return _split_level(block, count_tokens, target_tokens, max_tokens, levels, 0)


def _split_level(
    text: str,
    count_tokens: Callable[[str], int],
    target_tokens: int,
    max_tokens: int,
    levels: list[tuple[str, Callable[[str], list[str]]]],
    level: int,
) -> list[str]:
    if count_tokens(text) <= max_tokens:
        return [text]
    if level >= len(levels):
        return _split_chars(text, count_tokens, max_tokens)
    sep, split = levels[level]
    units = split(text)
    if len(units) <= 1:
        return _split_level(text, count_tokens, target_tokens, max_tokens, levels, level + 1)
    out: list[str] = []
    current: list[str] = []
    for unit in units:
        if count_tokens(unit) > max_tokens:
            if current:
                out.append(sep.join(current))
                current = []
            out.extend(_split_level(unit, count_tokens, target_tokens, max_tokens, levels, level + 1))
            continue
        if current and count_tokens(sep.join([*current, unit])) > target_tokens:
            out.append(sep.join(current))
            current = []
        current.append(unit)
    if current:
        out.append(sep.join(current))
    return out


def _split_chars(text: str, count_tokens: Callable[[str], int], max_tokens: int) -> list[str]:
    """Last resort for a single huge 'word' (a hash, base64): longest prefixes that fit, by bisection."""
    out: list[str] = []
    rest = text
    while rest:
        lo, hi = 1, len(rest)
        while lo < hi:  # largest n with count_tokens(rest[:n]) <= max_tokens
            mid = (lo + hi + 1) // 2
            if count_tokens(rest[:mid]) <= max_tokens:
                lo = mid
            else:
                hi = mid - 1
        out.append(rest[:lo])
        rest = rest[lo:]
    return out
