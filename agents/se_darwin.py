"""SE-Darwin: picks evolution operators from its collection and returns one candidate variant per operator.

With ``generations: n`` (1-8) a request runs n rounds server-side (the loop is in
``rag.agent_service.AgentService``): each round asks the model to improve the candidate the previous round
produced, its prompt extending the previous round's exact prompt and output tokens.
"""

from __future__ import annotations

import logging
import re
from typing import Any, ClassVar

from pydantic import Field

from agents.base import AgentCacheSettings, AgentOutput, AgentRequest, EvolvingAgent
from agents.fields import CodeText, QueryText
from agents.text import best_per_document, clean_model_text, code_blocks, first_paragraph, markdown_section
from agents.text import resolve_document
from retrieval.models import SearchHit

__all__ = ["MAX_GENERATIONS", "SEDarwinRequest", "SEDarwinAgent", "parse_operator_sections"]

logger = logging.getLogger(__name__)

MAX_OPERATORS = 3  # variants the model is asked for; more only when it labels more retrieved operators
_MAX_LABELLED = 5
MAX_GENERATIONS = 8  # rounds one evolve request may run server-side
_UNCHANGED = "no variant generated; candidate unchanged"  # marks a variant the model did not write
_LABEL = re.compile(
    r"^\s*(?:#{1,6}\s*)?(?:[-*+]\s*)?(?:operator|variant|mutation)(?:\s*#?\d+)?\s*[:.(\-\u2013\u2014]\s*(.+?)\s*\)?\s*$",
    re.IGNORECASE,
)
_HEADING = re.compile(r"^\s*#{1,6}\s*(.+?)\s*#*\s*$")
_RATIONALE = re.compile(r"^\s*(?:[-*]\s*)?(?:rationale|why|reason|explanation)\s*:\s*(.*)$", re.IGNORECASE)
_CODE_LIKE = re.compile(r"^\s{2,}\S|[=(){}\[\]:;]\s*$|^\s*(?:def|return|class|import|from|for|while|if|async)\b")


class SEDarwinRequest(AgentRequest):
    """Body of `POST /v1/agents/se-darwin/evolve`."""

    task: QueryText = Field(description="What the candidate should do better, 1-4000 characters.")
    candidate: CodeText = Field(description="The current candidate program, 1-20000 characters.")
    generations: int = Field(
        default=1, ge=1, le=MAX_GENERATIONS,
        description="Rounds of evolution run server-side (1-8): each round improves the candidate of the round "
        "before, its prompt extending that round's exact tokens; the answer lists every generation.",
    )


class SEDarwinAgent(EvolvingAgent):
    """Evolves a candidate. Each retrieved document is one operator; the chosen operators are those the
    model labelled (when they are retrieved documents) and then the best retrieved ones, up to
    MAX_OPERATORS. Each gets one variant: the model's section for it, or the unchanged candidate with an
    annotation when the model wrote nothing usable for it."""

    name: ClassVar[str] = "se-darwin"
    route: ClassVar[str] = "evolve"
    collection: ClassVar[str] = "darwin_operators"
    request_model: ClassVar[type[AgentRequest]] = SEDarwinRequest
    cache_settings: ClassVar[AgentCacheSettings] = AgentCacheSettings(ttl_s=7200, max_cache_size_mb=150)
    system_prompt: ClassVar[str] = (
        "You evolve programs. Each document in the context is one evolution operator. Pick up to 3 "
        "operators that suit the task and apply each one to the candidate. For each, write:\n"
        "Operator: <operator id>\n"
        "```\n<the complete new version of the candidate>\n```\n"
        "Rationale: <one sentence on why it helps the task>\n"
        "Write nothing else."
    )

    def retrieval_query(self, request: AgentRequest) -> str:
        task = getattr(request, "task", "")
        candidate = getattr(request, "candidate", "")
        return f"evolution operator to improve a program: {task}\n{candidate[:1000]}"

    def user_message(self, request: AgentRequest) -> str:
        return (
            f"Task: {getattr(request, 'task', '')}\n\n"
            f"Candidate:\n```\n{getattr(request, 'candidate', '')}\n```"
        )

    def postprocess(self, text: str, sources: list[SearchHit], request: AgentRequest) -> AgentOutput:
        """`{"operators": [doc_id, ...], "variants": [{"operator", "title", "code", "rationale"}]}`; a
        warning for each variant code or rationale the model did not write."""
        candidate = getattr(request, "candidate", "") or ""
        # By score, not the given order: the prompt may hold chunks in a canonical (prefix-stable) order.
        operators = best_per_document(sorted(sources, key=lambda s: -s.score))
        try:
            sections = parse_operator_sections(clean_model_text(text), sources)
        except Exception:  # post-processing must never fail the request
            logger.exception("SE-Darwin section parsing failed; returning annotated candidates")
            sections = {}
        by_id = {op.doc_id: op for op in operators}
        chosen = list(sections)[:_MAX_LABELLED]
        for op in operators:
            if len(chosen) >= max(MAX_OPERATORS, len(sections)):
                break
            if op.doc_id not in chosen:
                chosen.append(op.doc_id)
        variants = []
        warnings: list[str] = []
        for i, doc_id in enumerate(chosen):
            source = by_id[doc_id]
            code, rationale = sections.get(doc_id, ("", ""))
            generated = bool(code.strip())
            if not generated:
                code = _annotated(candidate, source)
                warnings.append(f"variants[{i}].code: the model wrote no variant for {doc_id!r}; the candidate "
                                "unchanged, with a note")
            if not rationale:
                if generated:
                    rationale, origin = f"Applies {source.title} to the candidate.", "the operator's title"
                else:
                    rationale, origin = _fallback_rationale(source), "the operator's description"
                warnings.append(f"variants[{i}].rationale: not generated; taken from {origin}")
            variants.append({"operator": doc_id, "title": source.title, "code": code, "rationale": rationale})
        return AgentOutput({"operators": chosen, "variants": variants}, tuple(warnings))

    # ------------------------------------------------------------------ generations (EvolvingAgent)

    def rounds(self, request: AgentRequest) -> int:
        return getattr(request, "generations", 1)

    def generation(self, output: dict[str, Any], request: AgentRequest) -> dict[str, Any]:
        """`{"candidate", "operator", "rationale", "changed"}`: the first variant the model wrote that differs
        from the round's candidate (the model's first choice), else the candidate carried over unchanged."""
        candidate = getattr(request, "candidate", "") or ""
        for variant in output.get("variants", []):
            code = variant.get("code", "")
            if code.strip() and code.strip() != candidate.strip() and _UNCHANGED not in code.split("\n", 1)[0]:
                return {"candidate": code, "operator": variant["operator"], "rationale": variant["rationale"],
                        "changed": True}
        return {"candidate": candidate, "operator": None,
                "rationale": "The model wrote no new variant; the candidate is carried over unchanged.",
                "changed": False}

    def next_round(self, request: AgentRequest, generation: dict[str, Any], number: int) -> tuple[AgentRequest, str]:
        """The next round's request holds the previous round's candidate; its message asks to improve it.
        The candidate is repeated in the message so the model need not guess which earlier variant it is."""
        following = request.model_copy(update={"candidate": generation["candidate"]})
        if generation.get("operator"):
            origin = f"your variant for operator {generation['operator']} from the previous generation"
        else:
            origin = "carried over unchanged: the previous generation gave no new variant"
        message = (f"Generation {number}: improve this candidate further for the same task ({origin}). "
                   f"Answer in the same format.\n\n{self.user_message(following)}")
        return following, message


def parse_operator_sections(text: str, sources: list[SearchHit]) -> dict[str, tuple[str, str]]:
    """(code, rationale) per retrieved operator the model labelled, in the model's order. A section
    starts at a line like `Operator: memoization-insertion`, `### Variant 2 - Early Return Refactor` or a
    heading naming an operator, and runs to the next such line. Labels that name no retrieved operator
    start a section that is dropped; a repeated operator keeps its first section."""
    sections: dict[str, list[str]] = {}
    current: str | None = None
    in_fence = False
    for line in text.split("\n"):
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        label = None if in_fence else _label_of(line.replace("**", ""), sources)
        if label is not None:
            doc_id = label or None
            current = doc_id if doc_id and doc_id not in sections else None
            if current:
                sections[current] = []
            continue
        if current is not None:
            sections[current].append(line)
    return {doc_id: _code_and_rationale("\n".join(body)) for doc_id, body in sections.items()}


def _label_of(line: str, sources: list[SearchHit]) -> str | None:
    """None when `line` is not a section label; "" for a label naming no retrieved operator; else the id."""
    match = _LABEL.match(line)
    if match:
        return resolve_document(match.group(1).strip("`*_ "), sources) or ""
    heading = _HEADING.match(line)
    if heading:
        return resolve_document(heading.group(1).strip("`*_ "), sources)
    stripped = line.strip().strip("`*_:")
    if stripped and len(stripped.split()) <= 6:
        return next((s.doc_id for s in sources if stripped.lower() in (s.doc_id.lower(), s.title.lower())), None)
    return None


def _code_and_rationale(body: str) -> tuple[str, str]:
    blocks = code_blocks(body)
    rationale_lines: list[str] = []
    loose_code: list[str] = []
    in_fence = False
    for line in body.split("\n"):
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        match = _RATIONALE.match(line)
        if match:
            rationale_lines.append(match.group(1))
        elif rationale_lines and line.strip():
            rationale_lines.append(line.strip())
        elif not blocks and line.strip() and _CODE_LIKE.search(line):
            loose_code.append(line)
        elif line.strip() and not blocks:
            rationale_lines.append(line.strip())
    code = blocks[0][1] if blocks else "\n".join(loose_code).rstrip()
    return code, " ".join(part.strip() for part in rationale_lines if part.strip())


def _annotated(candidate: str, source: SearchHit) -> str:
    comment = "#" if "def " in candidate or "{" not in candidate else "//"
    return (
        f"{comment} operator: {source.doc_id} ({source.title}): {_UNCHANGED}\n"
        f"{candidate}"
    )


def _fallback_rationale(source: SearchHit) -> str:
    when = markdown_section(source.text, "When to use")
    hint = (when.split("\n")[0].lstrip("-* ").strip() if when else "") or first_paragraph(source.text)
    return f"The model wrote no variant for {source.title}; apply it by hand. {hint}".strip()
