"""Cheap deterministic checks for the code-review agent, one per known code pattern.

The served model is tiny, so its review text is often unusable; these line-level regex checks make the
findings useful regardless. Each check is named by the `code_patterns` document id it detects, so a
finding links to the retrieved pattern when it was retrieved. They are heuristics: they favour obvious,
high-signal shapes over completeness, and they never raise.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Check", "CheckHit", "CHECKS", "run_checks"]

_PY = frozenset({"python"})
_JS = frozenset({"javascript", "typescript"})


@dataclass(frozen=True, slots=True)
class CheckHit:
    """One deterministic finding: 1-based line number, pattern document id, severity and advice."""

    line: int
    pattern: str
    severity: str
    suggestion: str


@dataclass(frozen=True, slots=True)
class Check:
    """A pattern detector: the lines (1-based) of `code` where the pattern appears."""

    pattern: str
    severity: str
    suggestion: str
    languages: frozenset[str] | None  # None: any language
    find: Callable[[list[str], str], list[int]]


def _line_regex(regex: str, flags: int = 0) -> Callable[[list[str], str], list[int]]:
    compiled = re.compile(regex, flags)
    return lambda lines, _code: [i for i, line in enumerate(lines, 1) if compiled.search(_strip_comment(line))]


def _strip_comment(line: str) -> str:
    """The line without a trailing `#` or `//` comment (string contents are not parsed; good enough)."""
    return re.sub(r"\s(?:#|//).*$|^\s*(?:#|//).*$", "", line)


def _line_of(code: str, offset: int) -> int:
    return code.count("\n", 0, offset) + 1


_MUTABLE_DEFAULT = re.compile(r"=\s*(?:\[\s*\]|\{\s*\}|\[[^\]\n]*\]|\{[^}\n]*\}|(?:list|dict|set|defaultdict)\(\s*\))")
_DEF_SIGNATURE = re.compile(r"^[ \t]*(?:async\s+)?def\s+\w+\s*\((.*?)\)\s*(?:->[^:]*)?:", re.DOTALL | re.MULTILINE)


def _mutable_defaults(_lines: list[str], code: str) -> list[int]:
    hits = []
    for match in _DEF_SIGNATURE.finditer(code):
        for default in _MUTABLE_DEFAULT.finditer(match.group(1)):
            hits.append(_line_of(code, match.start(1) + default.start()))
    return hits


def _swallowed_errors(lines: list[str], _code: str) -> list[int]:
    hits = []
    for i, line in enumerate(lines, 1):
        stripped = _strip_comment(line).strip()
        if re.match(r"except\b[^:]*:\s*(?:pass|\.\.\.|continue)\s*$", stripped) or re.search(
            r"catch\s*(?:\([^)]*\))?\s*\{\s*\}", stripped
        ):
            hits.append(i)
        elif re.match(r"except\b[^:]*:\s*$", stripped):
            following = next((l.strip() for l in lines[i:] if l.strip()), "")
            if following in {"pass", "...", "continue"}:
                hits.append(i)
    return hits


def _missing_timeouts(lines: list[str], _code: str) -> list[int]:
    call = re.compile(
        r"\b(?:requests|httpx|session|client)\.(?:get|post|put|patch|delete|head|request)\s*\(|\burlopen\s*\("
    )
    hits = []
    for i, line in enumerate(lines, 1):
        if call.search(_strip_comment(line)):
            window = "\n".join(lines[i - 1 : i + 4])  # the call's arguments may wrap a few lines
            if "timeout" not in window:
                hits.append(i)
    return hits


def _blocking_in_async(lines: list[str], _code: str) -> list[int]:
    blocking = re.compile(r"\btime\.sleep\(|\brequests\.\w+\(|\burlopen\(|\bsubprocess\.(?:run|call|check_output)\(")
    hits, async_indent = [], None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if async_indent is not None and indent <= async_indent and not line.lstrip().startswith(("#", ")")):
            async_indent = None
        if re.match(r"\s*async\s+def\s", line):
            async_indent = indent
        elif async_indent is not None and blocking.search(_strip_comment(line)):
            hits.append(i)
    return hits


_SECRET_NAME = r"(?:password|passwd|pwd|secret|api[_-]?key|apikey|access[_-]?key|private[_-]?key|auth[_-]?token|token)"

CHECKS: tuple[Check, ...] = (
    Check("bare-except-clauses", "high",
          "Catch the specific exceptions you expect (at least `except Exception:`), and log or re-raise.",
          _PY, _line_regex(r"^\s*except\s*:")),
    Check("mutable-default-arguments", "medium",
          "Default to None and create the list/dict inside the function.", _PY, _mutable_defaults),
    Check("swallowed-errors", "high",
          "Handle the error: log it with context, re-raise, or return an explicit failure.", None,
          _swallowed_errors),
    Check("eval-of-dynamic-code", "critical",
          "Avoid eval/exec on data; parse it (json, ast.literal_eval) or dispatch to known functions.", None,
          _line_regex(r"(?<![\w.])(?:eval|exec)\s*\(|\bnew\s+Function\s*\(")),
    Check("hard-coded-secrets", "critical",
          "Load secrets from the environment or a secret manager and rotate the exposed one.", None,
          _line_regex(
              rf"{_SECRET_NAME}\w*['\"]?\s*[:=]\s*['\"][^'\"\s]{{6,}}['\"]|AKIA[0-9A-Z]{{16}}|\bsk_live_\w+|-----BEGIN [A-Z ]*PRIVATE KEY",
              re.IGNORECASE,
          )),
    Check("sql-injection-string-formatting", "critical",
          "Use parameterized queries (placeholders plus a parameters tuple), never string formatting.", None,
          _line_regex(
              r"""(?:execute|executemany|query|raw)\s*\(\s*f["']|(?:f["']|["'])\s*(?:SELECT|INSERT|UPDATE|DELETE)\b[^"']*(?:\{|["']\s*(?:%|\+|\.format))"""
              r"""|`\s*(?:SELECT|INSERT|UPDATE|DELETE)\b[^`]*\$\{""",
              re.IGNORECASE,
          )),
    Check("missing-timeouts-on-network-calls", "high",
          "Pass an explicit timeout (e.g. timeout=10) to every network call.", _PY, _missing_timeouts),
    Check("blocking-calls-in-async-code", "high",
          "Use the async equivalent (asyncio.sleep, httpx.AsyncClient) or run it in a thread.", _PY,
          _blocking_in_async),
    Check("resource-leak-without-context-manager", "medium",
          "Open files and connections in a `with` block so they are closed on every path.", _PY,
          _line_regex(r"^\s*\w+\s*=\s*open\s*\(")),
    Check("wildcard-and-overly-broad-imports", "low",
          "Import the names you use explicitly.", None,
          _line_regex(r"^\s*from\s+\S+\s+import\s+\*|^\s*import\s+[\w.]+\.\*\s*;")),
    Check("shadowing-builtins", "low",
          "Rename the variable so it does not hide the builtin.", _PY,
          _line_regex(r"^\s*(?:list|dict|str|int|id|type|input|max|min|sum|len|set|file|filter|map|format|hash)\s*=[^=]")),
)


def run_checks(code: str, language: str) -> list[CheckHit]:
    """Every check that applies to `language`, run over `code`; hits in line order."""
    lines = code.split("\n")
    hits: list[CheckHit] = []
    for check in CHECKS:
        if check.languages is not None and language not in check.languages:
            continue
        try:
            found = check.find(lines, code)
        except Exception:  # a heuristic must never break a review
            continue
        hits.extend(CheckHit(line, check.pattern, check.severity, check.suggestion) for line in sorted(set(found)))
    return sorted(hits, key=lambda hit: hit.line)
