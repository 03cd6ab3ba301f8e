"""Small, forgiving text helpers for turning a tiny model's output (and retrieved markdown) into fields.

Everything here is total: any string in, a value out, no exceptions, because the agents' post-processing
must never fail on odd model output.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from retrieval.models import SearchHit


__all__ = [
    "clean_model_text",
    "code_blocks",
    "markdown_section",
    "first_paragraph",
    "split_items",
    "code_identifiers",
    "best_per_document",
    "mentioned_documents",
    "resolve_document",
    "slug",
]

# Chat-template markers a model sometimes emits as text when detokenized without skipping specials.
_SPECIAL_TOKENS = re.compile(r"<\|(?:im_start|im_end|endoftext|end|eot_id|assistant|user|system)\|>(?:assistant|user|system)?")
_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_BULLET = re.compile(r"^\s*(?:[-*+\u2022]|\d+[.)])\s+")
_IDENTIFIER_DEFS = re.compile(
    r"\b(?:def|class|function|func|fn|interface|struct|type)\s+(?:\([^)]*\)\s*)?([A-Za-z_]\w*)"
)
_ASSIGNED_FUNCTION = re.compile(r"\b(?:const|let|var)\s+([A-Za-z_$][\w$]*)\s*=\s*(?:async\s*)?(?:\(|function)")


def clean_model_text(text: object) -> str:
    """The model's text without chat-template markers and surrounding whitespace ("" for non-strings)."""
    if not isinstance(text, str):
        return ""
    return _SPECIAL_TOKENS.sub("", text).replace("\r\n", "\n").strip()


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of each fenced block, in order; an unterminated last fence runs to the end."""
    return [(lang.lower(), body.rstrip()) for lang, body in _FENCE.findall(text) if body.strip()]


def markdown_section(text: str, heading: str) -> str:
    """Body of the first markdown section whose heading equals `heading` (case-insensitive), up to the
    next heading of the same or a higher level; "" when absent. Headings inside code fences are ignored."""
    wanted = heading.strip().lower()
    lines = text.split("\n")
    in_fence = False
    start: int | None = None
    level = 0
    body: list[str] = []
    for line in lines:
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        match = None if in_fence else _HEADING.match(line)
        if start is None:
            if match and match.group(2).strip().lower() == wanted:
                start, level = 1, len(match.group(1))
            continue
        if match and len(match.group(1)) <= level:
            break
        body.append(line)
    return "\n".join(body).strip()


def first_paragraph(text: str) -> str:
    """The first paragraph of `text` that is not a heading or a code fence ("" when none)."""
    for block in re.split(r"\n\s*\n", text):
        block = block.strip()
        if block and not block.startswith("#") and not block.startswith("```"):
            return " ".join(line.strip() for line in block.split("\n"))
    return ""


def split_items(text: str, max_items: int = 8) -> list[str]:
    """Split a field value into list items: bullet/numbered lines when there are any, else ';'-separated
    parts, else ','-separated parts outside parentheses. Empty items and markdown emphasis are dropped."""
    text = text.strip()
    if not text:
        return []
    lines = [line for line in text.split("\n") if line.strip()]
    if any(_BULLET.match(line) for line in lines):
        items: list[str] = []
        for line in lines:
            if _BULLET.match(line) or not items:
                items.append(_BULLET.sub("", line))
            else:  # a wrapped bullet continues on the next line
                items[-1] += " " + line.strip()
    else:
        flat = " ".join(line.strip() for line in lines)
        items = [part for part in flat.split(";")] if ";" in flat else _split_commas(flat)
    cleaned = []
    for item in items:
        item = re.sub(r"^(?:and|or)\s+", "", item.strip().strip("*_").strip(), flags=re.IGNORECASE).rstrip(".")
        if item:
            cleaned.append(item)
    return cleaned[:max_items]


def _split_commas(text: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char in "([":
            depth += 1
        elif char in ")]":
            depth = max(0, depth - 1)
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def code_identifiers(code: str, limit: int = 8) -> list[str]:
    """Names of functions, classes and types the code defines, in order, without duplicates."""
    names = [m.group(1) for m in _IDENTIFIER_DEFS.finditer(code)]
    names += [m.group(1) for m in _ASSIGNED_FUNCTION.finditer(code)]
    seen: list[str] = []
    for name in names:
        if name not in seen and name not in {"self", "cls"}:
            seen.append(name)
    return seen[:limit]


def best_per_document(sources: Sequence[SearchHit]) -> list[SearchHit]:
    """One source per document (its highest-scoring chunk), documents in order of first appearance."""
    seen: dict[str, SearchHit] = {}
    for source in sources:
        kept = seen.get(source.doc_id)
        if kept is None or source.score > kept.score:
            seen[source.doc_id] = source  # replacing a value keeps the key's original position
    return list(seen.values())


def slug(text: str) -> str:
    """Lower-case kebab form used to compare document ids and labels ("Bare Except" -> "bare-except")."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def mentioned_documents(text: str, sources: Iterable[SearchHit]) -> list[str]:
    """Ids of the documents whose id or title `text` mentions (case-insensitive), in source order."""
    lowered = text.lower()
    flat = slug(text)
    found: list[str] = []
    for source in sources:
        if source.doc_id in found:
            continue
        doc_id, title = source.doc_id.lower(), source.title.strip().lower()
        if (doc_id and (doc_id in lowered or slug(doc_id) in flat)) or (len(title) >= 4 and title in lowered):
            found.append(source.doc_id)
    return found


def resolve_document(label: str, sources: Iterable[SearchHit]) -> str | None:
    """The id of the source document a free-text label names (by id, title or slug), else None."""
    wanted = slug(label)
    if not wanted:
        return None
    docs = best_per_document(list(sources))
    for source in docs:  # exact id or title first
        if wanted in (slug(source.doc_id), slug(source.title)):
            return source.doc_id
    for source in docs:  # then containment either way, e.g. "memoization" or "use memoization-insertion"
        ids = (slug(source.doc_id), slug(source.title))
        if any(len(wanted) >= 4 and (wanted in ident or ident in wanted) for ident in ids if ident):
            return source.doc_id
    return None
