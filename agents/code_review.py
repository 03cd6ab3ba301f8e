"""Code review: findings (line, severity, pattern, suggestion) against the retrieved code patterns."""

from __future__ import annotations

import logging
import re
from typing import Any, ClassVar

from pydantic import Field, field_validator

from agents.base import Agent, AgentCacheSettings, AgentOutput, AgentRequest
from agents.fields import CodeText
from agents.review_checks import run_checks
from agents.text import clean_model_text, markdown_section, resolve_document, slug
from retrieval.models import SearchHit

__all__ = ["LANGUAGES", "SEVERITIES", "CodeReviewRequest", "CodeReviewAgent", "parse_findings"]

logger = logging.getLogger(__name__)

LANGUAGES: tuple[str, ...] = (
    "python", "javascript", "typescript", "go", "java", "rust", "c", "cpp", "csharp", "ruby", "php",
    "kotlin", "swift", "scala", "shell", "sql",
)
_LANGUAGE_ALIASES = {
    "py": "python", "python3": "python", "js": "javascript", "node": "javascript", "ts": "typescript",
    "golang": "go", "rs": "rust", "c++": "cpp", "cxx": "cpp", "c#": "csharp", "cs": "csharp", "rb": "ruby",
    "kt": "kotlin", "bash": "shell", "sh": "shell", "zsh": "shell",
}
SEVERITIES: tuple[str, ...] = ("low", "medium", "high", "critical")
_SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}
_MAX_MODEL_FINDINGS = 10
_MAX_FINDINGS = 50

_LINE_NO = re.compile(r"\b(?:lines?|ln|l)\s*\.?\s*#?\s*(\d{1,6})\b", re.IGNORECASE)
_SEVERITY = re.compile(r"[\[(]\s*(low|medium|high|critical)\s*[\])]|\b(low|medium|high|critical)\b", re.IGNORECASE)
_PATTERN_AFTER_SEVERITY = re.compile(
    r"(?:[\[(]\s*(?:low|medium|high|critical)\s*[\])]|\b(?:low|medium|high|critical)\b)\s*[:\-]?\s*"
    r"`?([A-Za-z][\w.-]*(?:[ -][A-Za-z][\w.-]*){0,5})`?\s*[:\u2013\u2014]\s*(.*)$",
    re.IGNORECASE,
)


class CodeReviewRequest(AgentRequest):
    """Body of `POST /v1/agents/code-review/review`."""

    code: CodeText = Field(description="The code to review, 1-20000 characters.")
    language: str = Field(description=f"Language of the code, lowercase: one of {', '.join(LANGUAGES)}.")

    @field_validator("language", mode="before")
    @classmethod
    def _known_language(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value  # the str type check reports it
        language = value.strip().lower()
        language = _LANGUAGE_ALIASES.get(language, language)
        if language not in LANGUAGES:
            raise ValueError(f"must be one of {', '.join(LANGUAGES)} (got {value!r})")
        return language


class CodeReviewAgent(Agent):
    """Reviews code. Findings come from two places, merged by (line, pattern): cheap deterministic checks
    of known patterns (`agents.review_checks`), which make the review useful whatever the model writes,
    and the model's own `line N [severity] pattern: suggestion` lines. Patterns are source document ids
    when they match a retrieved pattern."""

    name: ClassVar[str] = "code-review"
    route: ClassVar[str] = "review"
    collection: ClassVar[str] = "code_patterns"
    request_model: ClassVar[type[AgentRequest]] = CodeReviewRequest
    cache_settings: ClassVar[AgentCacheSettings] = AgentCacheSettings(ttl_s=7200, max_cache_size_mb=150)
    system_prompt: ClassVar[str] = (
        "You are a senior code reviewer. Check the numbered code against the code patterns in the "
        "context. Report each real problem on its own line, exactly as:\n"
        "line <number> [<low|medium|high|critical>] <pattern-id>: <how to fix it>\n"
        "where pattern-id is the id of the matching pattern document. Most severe first, at most 8 lines. "
        "Then one final line: Summary: <one sentence>. If the code is fine, write only the summary."
    )

    def retrieval_query(self, request: AgentRequest) -> str:
        code = getattr(request, "code", "")
        language = getattr(request, "language", "")
        # Names of patterns the checks already see steer retrieval to the relevant documents; the
        # embedder only reads the start of the query, so they come before the code.
        hinted = sorted({hit.pattern.replace("-", " ") for hit in run_checks(code, language)})
        hints = f" ({'; '.join(hinted)})" if hinted else ""
        return f"{language} code review{hints}:\n{code[:2000]}"

    def user_message(self, request: AgentRequest) -> str:
        language = getattr(request, "language", "")
        lines = getattr(request, "code", "").split("\n")
        width = len(str(len(lines)))
        numbered = "\n".join(f"{i:>{width}} | {line}" for i, line in enumerate(lines, 1))
        return f"Review this {language} code (line numbers on the left):\n```{language}\n{numbered}\n```"

    def postprocess(self, text: str, sources: list[SearchHit], request: AgentRequest) -> AgentOutput:
        """`{"findings": [{"line": int | None, "severity", "pattern", "suggestion"}], "summary": str}`; a
        warning when the model's review held neither a finding nor a summary, so that all of it comes from
        the pattern checks."""
        code = getattr(request, "code", "") or ""
        language = getattr(request, "language", "") or ""
        cleaned = clean_model_text(text)
        try:
            checked = _checked_findings(code, language, sources)
        except Exception:  # post-processing must never fail the request
            logger.exception("deterministic review checks failed")
            checked = []
        try:
            model = parse_findings(cleaned, sources, num_lines=code.count("\n") + 1)
        except Exception:
            logger.exception("parsing the model's review failed")
            model = []
        findings = _merge(checked, model)
        model_summary = _model_summary(cleaned)
        warnings: tuple[str, ...] = ()
        if not model and not model_summary:
            warnings = ("findings: the model's review held no finding or summary line; findings and summary come "
                        "from the pattern checks alone",)
        return AgentOutput({"findings": findings, "summary": _summary(findings, model_summary)}, warnings)


def parse_findings(text: str, sources: list[SearchHit], num_lines: int) -> list[dict[str, Any]]:
    """Findings in lines like `line 3 [high] mutable-default-argument: use None` (also `L3`, `(high)`,
    markdown bullets, a missing line number). Line numbers outside the code become None; a pattern that
    names a retrieved document becomes its id."""
    findings: list[dict[str, Any]] = []
    for raw_line in text.split("\n"):
        line = raw_line.strip().lstrip("-*+\u2022 ").replace("**", "").replace("`", "")
        if not line or line.lower().startswith("summary"):
            continue
        line_match = _LINE_NO.search(line)
        severity_match = _SEVERITY.search(line)
        if not severity_match or not (line_match or severity_match.group(1)):
            continue  # not a finding line: needs a severity, and a line number or a bracketed severity
        severity = (severity_match.group(1) or severity_match.group(2)).lower()
        pattern_match = _PATTERN_AFTER_SEVERITY.search(line)
        if pattern_match:
            label, suggestion = pattern_match.group(1), pattern_match.group(2)
        else:
            rest = line[severity_match.end():].strip(" :-")
            label, suggestion = "", rest
        pattern = resolve_document(label, sources) or resolve_document(suggestion, sources) or slug(label)
        number = int(line_match.group(1)) if line_match else None
        findings.append({
            "line": number if number is not None and 1 <= number <= num_lines else None,
            "severity": severity,
            "pattern": pattern or "unspecified",
            "suggestion": suggestion.strip() or "See the pattern's recommended fix.",
        })
        if len(findings) >= _MAX_MODEL_FINDINGS:
            break
    return findings


def _checked_findings(code: str, language: str, sources: list[SearchHit]) -> list[dict[str, Any]]:
    findings = []
    for hit in run_checks(code, language):
        doc_id = resolve_document(hit.pattern, sources)
        findings.append({
            "line": hit.line,
            "severity": _source_severity(doc_id, sources) or hit.severity,
            "pattern": doc_id or hit.pattern,
            "suggestion": hit.suggestion,
        })
    return findings


def _source_severity(doc_id: str | None, sources: list[SearchHit]) -> str | None:
    """The first bold severity word in the retrieved pattern's `## Severity` section, if retrieved."""
    for source in sources:
        if doc_id and source.doc_id == doc_id:
            match = re.search(r"\*\*\s*(low|medium|high|critical)", markdown_section(source.text, "Severity"), re.I)
            if match:
                return match.group(1).lower()
    return None


def _merge(checked: list[dict[str, Any]], model: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Deterministic findings first; a model finding repeating one (same line and pattern) is dropped.
    Sorted most severe first, then by line."""
    seen = {(f["line"], f["pattern"]) for f in checked}
    merged = checked + [f for f in model if (f["line"], f["pattern"]) not in seen]
    merged.sort(key=lambda f: (-_SEVERITY_RANK[f["severity"]], f["line"] if f["line"] is not None else 1 << 30))
    return merged[:_MAX_FINDINGS]


def _model_summary(text: str) -> str:
    """The model's last `Summary: ...` line ("" when none)."""
    model_summary = ""
    for line in text.split("\n"):
        match = re.match(r"\s*[*_#-]*\s*summary\s*[*_]*\s*:\s*(.+)", line, re.IGNORECASE)
        if match:
            model_summary = match.group(1).strip().strip("*_")
    return model_summary


def _summary(findings: list[dict[str, Any]], model_summary: str) -> str:
    if not findings:
        counts = "No issues found by the pattern checks or the model."
    else:
        by_severity = [f"{n} {s}" for s in reversed(SEVERITIES) if (n := sum(f["severity"] == s for f in findings))]
        top = findings[0]
        where = f" at line {top['line']}" if top["line"] is not None else ""
        counts = f"{len(findings)} finding(s) ({', '.join(by_severity)}); most severe: {top['pattern']}{where}."
    return f"{counts} {model_summary}".strip()
