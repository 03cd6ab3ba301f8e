"""QA: writes individual tests of a requested type for the given code, modelled on test templates."""

from __future__ import annotations

import logging
import re
from typing import Any, ClassVar

from pydantic import Field, field_validator

from agents.base import Agent, AgentCacheSettings, AgentOutput, AgentRequest
from agents.fields import CodeText
from agents.text import clean_model_text, code_blocks, code_identifiers
from retrieval.models import SearchHit

__all__ = ["TEST_TYPES", "QARequest", "QAAgent", "split_tests", "skeleton_tests"]

logger = logging.getLogger(__name__)

TEST_TYPES: tuple[str, ...] = (
    "unit", "integration", "property", "regression", "e2e", "load", "fuzz", "contract", "snapshot",
)
_TEST_TYPE_ALIASES = {
    "unittest": "unit", "unit-test": "unit", "property-based": "property", "hypothesis": "property",
    "end-to-end": "e2e", "end2end": "e2e", "performance": "load", "fuzzing": "fuzz", "api-contract": "contract",
}
_MAX_TESTS = 20
_TOP_LEVEL_START = re.compile(r"^(?:@|def\s|async\s+def\s|class\s|import\s|from\s|[A-Za-z_])")
_DEF_NAME = re.compile(r"^\s*(?:async\s+)?(?:def|class)\s+([A-Za-z_]\w*)", re.M)
_PARAMS = r"\bdef\s+{name}\s*\((.*?)\)"
_CODE_SIGNAL = re.compile(r"\bassert\b|\bdef\s|\bexpect\(|\bit\(|\btest\(")


class QARequest(AgentRequest):
    """Body of `POST /v1/agents/qa/generate-tests`."""

    code: CodeText = Field(description="The code to test, 1-20000 characters.")
    test_type: str = Field(description=f"Kind of tests to write: one of {', '.join(TEST_TYPES)}.")

    @field_validator("test_type", mode="before")
    @classmethod
    def _known_test_type(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value  # the str type check reports it
        kind = value.strip().lower().replace("_", "-").replace(" ", "-")
        kind = _TEST_TYPE_ALIASES.get(kind, kind.removesuffix("-tests").removesuffix("-test"))
        if kind not in TEST_TYPES:
            raise ValueError(f"must be one of {', '.join(TEST_TYPES)} (got {value!r})")
        return kind


class QAAgent(Agent):
    """Generates tests and splits the model's text into individual tests (`def test_...` blocks, else
    fenced blocks, else blank-line separated blocks); when there are none, skeleton tests built from the
    code's function names and the best template, so the list is never empty."""

    name: ClassVar[str] = "qa"
    route: ClassVar[str] = "generate-tests"
    collection: ClassVar[str] = "test_templates"
    request_model: ClassVar[type[AgentRequest]] = QARequest
    cache_settings: ClassVar[AgentCacheSettings] = AgentCacheSettings(ttl_s=7200, max_cache_size_mb=150)
    system_prompt: ClassVar[str] = (
        "You are a QA engineer who writes pytest tests. Follow the test templates in the context for the "
        "requested test type. Write 2 to 5 small, independent test functions for the given code, each "
        "named test_<what_it_checks>, each with at least one assert. Put imports first. Output only "
        "Python code in one ```python block, with a blank line between tests and no explanations."
    )

    def retrieval_query(self, request: AgentRequest) -> str:
        test_type = getattr(request, "test_type", "unit")
        names = code_identifiers(getattr(request, "code", ""))
        return f"test templates for {test_type} tests" + (f": {' '.join(names)}" if names else "")

    def user_message(self, request: AgentRequest) -> str:
        test_type = getattr(request, "test_type", "unit")
        return f"Write {test_type} tests for this code:\n```\n{getattr(request, 'code', '')}\n```"

    def postprocess(self, text: str, sources: list[SearchHit], request: AgentRequest) -> AgentOutput:
        """`{"tests": [{"name": str, "code": str}, ...], "test_type": str}`, never an empty list: skeleton
        tests (with a warning) when the model wrote none usable."""
        test_type = getattr(request, "test_type", "unit")
        try:
            tests = split_tests(clean_model_text(text), test_type)
        except Exception:  # post-processing must never fail the request
            logger.exception("QA test splitting failed; falling back to skeleton tests")
            tests = []
        warnings: tuple[str, ...] = ()
        if not tests:
            tests = skeleton_tests(getattr(request, "code", ""), test_type, sources)
            warnings = (f"tests: the model wrote no usable test; {len(tests)} skeleton test(s) with TODOs, built "
                        "from the code's function names and the best template",)
        return AgentOutput({"tests": tests[:_MAX_TESTS], "test_type": test_type}, warnings)


def split_tests(text: str, test_type: str = "unit") -> list[dict[str, str]]:
    """Individual tests in the model's text. Python `def test_*` / `class Test*` blocks come with the
    imports and the helpers (fixtures, constants) they reference, so that each test stands alone."""
    blocks = code_blocks(text)
    code = "\n\n".join(body for _, body in blocks) if blocks else text
    tests = _python_tests(code)
    if not tests and len(blocks) > 1:
        tests = _named_chunks([body for _, body in blocks], test_type)
    if not tests:
        tests = _named_chunks([b for b in re.split(r"\n\s*\n", code) if _CODE_SIGNAL.search(b)], test_type)
    return _unique_names(tests)


def _top_level_blocks(code: str) -> list[str]:
    """Split Python source into top-level statements (a decorated def stays with its decorators)."""
    blocks: list[list[str]] = []
    for line in code.split("\n"):
        starts = bool(_TOP_LEVEL_START.match(line)) and not line.startswith((")", "]", "}"))
        only_decorators = bool(blocks) and all(
            not l.strip() or l.startswith("@") for l in blocks[-1]
        )
        if starts and not (blocks and only_decorators):
            blocks.append([line])
        elif blocks:
            blocks[-1].append(line)
        elif line.strip():
            blocks.append([line])
    return ["\n".join(b).strip("\n") for b in blocks if any(l.strip() for l in b)]


def _python_tests(code: str) -> list[dict[str, str]]:
    imports: list[str] = []
    helpers: dict[str, str] = {}
    tests: list[tuple[str, str]] = []
    for block in _top_level_blocks(code):
        first = block.lstrip()
        match = _DEF_NAME.search(block)
        name = match.group(1) if match and not first.startswith(("import", "from")) else ""
        if first.startswith(("import ", "from ")):
            imports.append(block)
        elif name.lower().startswith("test"):
            tests.append((name, block))
        elif name:
            helpers[name] = block
        elif (assigned := re.match(r"([A-Za-z_]\w*)\s*=", first)) is not None:
            helpers[assigned.group(1)] = block
    result = []
    for name, block in tests:
        used = [h for helper, h in helpers.items() if re.search(rf"\b{re.escape(helper)}\b", block)]
        parts = (["\n".join(imports)] if imports else []) + used + [block]
        result.append({"name": name, "code": "\n\n\n".join(parts).strip() + "\n"})
    return result


def _named_chunks(chunks: list[str], test_type: str) -> list[dict[str, str]]:
    tests = []
    for chunk in (c.strip("\n") for c in chunks):
        if not chunk.strip():
            continue
        match = re.search(r"\b(?:def|function)\s+([A-Za-z_]\w*)|\b(?:it|test)\(\s*['\"]([^'\"]+)['\"]", chunk)
        label = (match.group(1) or match.group(2)) if match else ""
        name = _identifier(label)
        name = (name if name.startswith("test") else f"test_{name}") if name else (
            f"test_{_identifier(test_type) or 'case'}_{len(tests) + 1}"
        )
        tests.append({"name": name, "code": chunk.rstrip() + "\n"})
    return tests


def _identifier(text: str) -> str:
    return re.sub(r"\W+", "_", text.strip().lower()).strip("_")


def _unique_names(tests: list[dict[str, str]]) -> list[dict[str, str]]:
    seen: dict[str, int] = {}
    for test in tests:
        count = seen.get(test["name"], 0) + 1
        seen[test["name"]] = count
        if count > 1:
            test["name"] = f"{test['name']}_{count}"
    return tests


def skeleton_tests(code: str, test_type: str, sources: list[SearchHit]) -> list[dict[str, str]]:
    """One placeholder test per function the code defines (up to three), naming the best template to
    follow; valid Python that fails loudly until its TODOs are filled in."""
    best = max(sources, key=lambda s: s.score) if sources else None
    pattern = f'the template "{best.title}" ({best.doc_id})' if best else "the usual arrange/act/assert pattern"
    kind = _identifier(test_type) or "unit"
    names = [n for n in code_identifiers(code or "") if not n[:1].isupper()][:3]
    if not names:
        return [{
            "name": f"test_{kind}_behaviour",
            "code": (
                f"def test_{kind}_behaviour():\n"
                f'    """{test_type} test for the given code, following {pattern}."""\n'
                "    # TODO: arrange inputs, call the code under test and assert on the result.\n"
                '    raise NotImplementedError("fill in this test")\n'
            ),
        }]
    tests = []
    for name in names:
        params = _parameters(code, name)
        arrange = "".join(f"    {p} = None  # TODO: a real value\n" for p in params)
        tests.append({
            "name": f"test_{_identifier(name)}_{kind}",
            "code": (
                f"def test_{_identifier(name)}_{kind}():\n"
                f'    """{test_type} test for {name}, following {pattern}."""\n'
                f"    # from your_module import {name}\n"
                f"{arrange}"
                f"    result = {name}({', '.join(params)})\n"
                "    assert result is not None  # TODO: assert the expected value\n"
            ),
        })
    return tests


def _parameters(code: str, name: str) -> list[str]:
    match = re.search(_PARAMS.format(name=re.escape(name)), code, re.DOTALL)
    if not match:
        return []
    params = []
    for part in match.group(1).split(","):
        param = re.split(r"[:=]", part.strip(), maxsplit=1)[0].strip()
        if param.isidentifier() and param not in {"self", "cls"}:
            params.append(param)
    return params
