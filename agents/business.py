"""Business idea generation: turns a brief into a structured idea, grounded in business templates."""

from __future__ import annotations

import logging
import re
from typing import Any, ClassVar

from pydantic import Field

from agents.base import Agent, AgentCacheSettings, AgentOutput, AgentRequest
from agents.fields import QueryText
from agents.text import clean_model_text, first_paragraph, markdown_section, split_items
from retrieval.models import SearchHit

__all__ = ["BusinessRequest", "BusinessGenerationAgent", "IDEA_FIELDS", "parse_labelled_idea"]

logger = logging.getLogger(__name__)

# Output field -> (template section heading, is a list, label spellings the model may use).
IDEA_FIELDS: dict[str, tuple[str, bool, tuple[str, ...]]] = {
    "title": ("Title", False, ("title", "idea title", "business name", "name", "idea")),
    "target_customer": (
        "Target customer",
        False,
        ("target customers", "target customer", "target audience", "target market", "customers", "customer",
         "audience", "segment"),
    ),
    "problem": ("Problem", False, ("problem", "pain points", "pain point", "pain")),
    "offer": ("Offer", False, ("offer", "solution", "value proposition", "product")),
    "pricing_model": (
        "Pricing model",
        False,
        ("pricing model", "pricing", "prices", "price", "revenue model", "business model", "monetization"),
    ),
    "channels": (
        "Channels",
        True,
        ("channels", "channel", "marketing channels", "acquisition channels", "distribution", "go-to-market"),
    ),
    "key_metrics": ("Key metrics", True, ("key metrics", "metrics", "success metrics", "kpis", "kpi")),
    "risks": ("Risks", True, ("key risks", "risks", "risk", "threats")),
}

_LABEL_TO_FIELD = {label: field for field, (_, _, labels) in IDEA_FIELDS.items() for label in labels}
_LABEL_LINE = re.compile(
    r"^\s*(?:#{1,6}\s*)?(?:(?:[-+\u2022]|\d+[.)])\s*)?("
    + "|".join(re.escape(label) for label in sorted(_LABEL_TO_FIELD, key=len, reverse=True))
    + r")\s*(?:[:\u2013\u2014-]\s*(.*))?$",
    re.IGNORECASE,
)

_PLACEHOLDER = re.compile(r"\s*<[^<>]*>\s*")


class BusinessRequest(AgentRequest):
    """Body of `POST /v1/agents/business/generate`."""

    brief: QueryText = Field(description="The business idea brief: market, constraints, goals; 1-4000 characters.")


class BusinessGenerationAgent(Agent):
    """Generates a structured business idea. The model is asked for labelled lines; any field it leaves
    out is filled from the best-scoring template's matching section, so every field is non-empty."""

    name: ClassVar[str] = "business"
    route: ClassVar[str] = "generate"
    collection: ClassVar[str] = "business_templates"
    request_model: ClassVar[type[AgentRequest]] = BusinessRequest
    cache_settings: ClassVar[AgentCacheSettings] = AgentCacheSettings(ttl_s=3600, max_cache_size_mb=100)
    system_prompt: ClassVar[str] = (
        "You are a startup strategist. Using the business templates in the context as models, write one "
        "concrete business idea for the brief. Answer with exactly these labelled lines and nothing else:\n"
        "Title: <short name>\n"
        "Target customer: <who, specifically>\n"
        "Problem: <the pain>\n"
        "Offer: <what is sold>\n"
        "Pricing model: <prices and plans>\n"
        "Channels: <channel>; <channel>\n"
        "Key metrics: <metric>; <metric>\n"
        "Risks: <risk>; <risk>"
    )

    def retrieval_query(self, request: AgentRequest) -> str:
        return f"business model template for: {getattr(request, 'brief', '')}"

    def user_message(self, request: AgentRequest) -> str:
        return f"Brief: {getattr(request, 'brief', '')}"

    def postprocess(self, text: str, sources: list[SearchHit], request: AgentRequest) -> AgentOutput:
        """`{"title", "target_customer", "problem", "offer", "pricing_model", "channels": [..],
        "key_metrics": [..], "risks": [..], "template": doc_id, "raw": text}`, every field non-empty; one
        warning per field the model left out and the template (or the brief) filled in."""
        brief = getattr(request, "brief", "") or ""
        raw = clean_model_text(text)
        try:
            parsed = parse_labelled_idea(raw)
        except Exception:  # post-processing must never fail the request
            logger.exception("business idea parsing failed; using the template only")
            parsed = {}
        return _fill_from_template(parsed, sources, brief, raw)


def parse_labelled_idea(text: str) -> dict[str, str | list[str]]:
    """Fields found in labelled lines ("Title: ...", "**Target customer**: ...", "- Risks:" followed by
    bullets). Labels are case-insensitive; lines after a label belong to it until the next label; a
    repeated label keeps its first value. Fields with no text are left out."""
    values: dict[str, list[str]] = {}
    current: str | None = None
    for line in text.split("\n"):
        plain = line.replace("**", "").replace("__", "")
        match = _LABEL_LINE.match(plain)
        if match:
            field = _LABEL_TO_FIELD[match.group(1).lower()]
            if field == current:  # e.g. "- Price: $9" inside the pricing lines
                values[field].append(plain)
                continue
            if field in values:  # a second idea or an echo: stop adding to any field
                current = None
                continue
            current = field
            values[field] = [match.group(2) or ""]
        elif current is not None:
            values[current].append(plain)
    parsed: dict[str, str | list[str]] = {}
    for field, lines in values.items():
        body = "\n".join(lines).strip()
        if not body or _PLACEHOLDER.fullmatch(body):  # empty, or the prompt's "<short name>" echoed back
            continue
        if IDEA_FIELDS[field][1]:
            items = [item for item in split_items(body) if not _PLACEHOLDER.fullmatch(item)]
            if items:
                parsed[field] = items
        else:
            parsed[field] = _one_line(body)
    return parsed


def _one_line(text: str) -> str:
    """A multi-line value as one line: bullets joined with '; ', other lines with spaces."""
    items = split_items(text, max_items=20) if re.search(r"^\s*(?:[-*+\u2022]|\d+[.)])\s+", text, re.M) else []
    joined = "; ".join(items) if items else " ".join(part.strip() for part in text.split("\n") if part.strip())
    return joined.strip().strip("*_").strip()


def _fill_from_template(
    parsed: dict[str, str | list[str]], sources: list[SearchHit], brief: str, raw: str
) -> AgentOutput:
    best = max(sources, key=lambda s: s.score) if sources else None
    # The best template's chunks first, then the other retrieved chunks in retrieval order.
    ordered = ([s for s in sources if best and s.doc_id == best.doc_id]
               + [s for s in sources if not best or s.doc_id != best.doc_id])
    fallback_text = (first_paragraph(best.text) if best else "") or (best.title if best else "")
    idea: dict[str, Any] = {}
    warnings: list[str] = []
    for field, (heading, is_list, _) in IDEA_FIELDS.items():
        value = parsed.get(field)
        if value:
            idea[field] = value
            continue
        if field == "title":
            from_brief = _title_from_brief(brief)
            idea[field] = from_brief or (best.title if best else "Untitled idea")
            origin = "the brief" if from_brief else (f"the template {best.doc_id!r}" if best else "a placeholder")
            warnings.append(f"title: not generated; taken from {origin}")
            continue
        found = next(((s, text) for s in ordered if (text := markdown_section(s.text, heading))), None)
        if found is not None:
            section, origin = found[1], f"the {heading!r} section of the template {found[0].doc_id!r}"
        elif fallback_text and best is not None:
            section, origin = fallback_text, f"the opening of the template {best.doc_id!r}"
        else:
            section, origin = f"Not specified; refine the brief: {brief[:120]}".strip(), "a placeholder"
        idea[field] = (split_items(section) or [_one_line(section)]) if is_list else _one_line(section)
        warnings.append(f"{field}: not generated; filled from {origin}")
    idea["template"] = best.doc_id if best else ""
    idea["raw"] = raw
    return AgentOutput(idea, tuple(warnings))


def _title_from_brief(brief: str) -> str:
    """A short title from the brief's first sentence (at most ~8 words)."""
    first = re.split(r"(?<=[.!?])\s|\n", brief.strip(), maxsplit=1)[0].strip(" .!?")
    words = first.split()
    title = " ".join(words[:8]) + ("..." if len(words) > 8 else "")
    return title[:1].upper() + title[1:]
