"""Request field types shared by the agents' request models.

Bad input must be a pydantic ``ValidationError`` whose location names the field (the gateway turns it
into a 4xx naming the field), so limits live in the types and every agent model reuses them.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, StringConstraints

from agents.base import MAX_CODE_CHARS, MAX_QUERY_CHARS

__all__ = ["QueryText", "CodeText", "normalize_code"]


def normalize_code(value: str) -> str:
    """Drop leading blank lines and trailing whitespace but keep the first line's indentation (a
    snippet of a method body is still valid input); reject blank code and code over the limit."""
    lines = value.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    code = "\n".join(lines).rstrip()
    if not code:
        raise ValueError("must not be empty or only whitespace")
    if len(code) > MAX_CODE_CHARS:
        raise ValueError(f"must be at most {MAX_CODE_CHARS} characters (got {len(code)})")
    return code


QueryText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_QUERY_CHARS)]
"""Free text such as a question, a brief or a task: stripped, 1..MAX_QUERY_CHARS characters."""

CodeText = Annotated[str, AfterValidator(normalize_code)]
"""Source code: leading blank lines and trailing whitespace dropped, 1..MAX_CODE_CHARS characters."""

