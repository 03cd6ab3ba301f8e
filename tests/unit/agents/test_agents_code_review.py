from __future__ import annotations

import pytest
from pydantic import ValidationError

from agents.base import MAX_CODE_CHARS
from agents.code_review import SEVERITIES, CodeReviewAgent, CodeReviewRequest, parse_findings
from agents.review_checks import run_checks

CODE = """import requests

def fetch(url, seen=[]):
    try:
        return requests.get(url).json()
    except:
        return None
"""  # line 3: mutable default, line 5: no timeout, line 6: bare except

WELL_FORMED = """line 3 [medium] mutable-default-argument: use None and create the list inside
line 6 [high] bare-except: catch requests.RequestException
line 5 [high] missing-timeouts-on-network-calls: pass timeout=10
Summary: Risky error handling and a shared default list."""


def _sources(make_source):
    return [
        make_source("code_patterns", "mutable-default-arguments", 0.8),
        make_source("code_patterns", "bare-except-clauses", 0.7),
        make_source("code_patterns", "missing-timeouts-on-network-calls", 0.5),
    ]


def _request(code=CODE, language="python"):
    return CodeReviewRequest(code=code, language=language)


def _assert_shape(out):
    assert set(out) == {"findings", "summary"}
    assert isinstance(out["summary"], str) and out["summary"]
    for finding in out["findings"]:
        assert set(finding) == {"line", "severity", "pattern", "suggestion"}
        assert finding["line"] is None or isinstance(finding["line"], int)
        assert finding["severity"] in SEVERITIES
        assert finding["pattern"] and finding["suggestion"]


def test_contract_attributes():
    agent = CodeReviewAgent
    assert (agent.name, agent.route, agent.collection) == ("code-review", "review", "code_patterns")
    assert agent.request_model is CodeReviewRequest
    assert (agent.cache_settings.ttl_s, agent.cache_settings.max_cache_size_mb) == (7200, 150)
    assert len(agent.system_prompt.split()) <= 120


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"language": "python"}, "code"),
        ({"code": " ", "language": "python"}, "code"),
        ({"code": "y" * (MAX_CODE_CHARS + 1), "language": "python"}, "code"),
        ({"code": CODE}, "language"),
        ({"code": CODE, "language": "klingon"}, "language"),
        ({"code": CODE, "language": ""}, "language"),
    ],
)
def test_bad_fields_are_named(body, field):
    with pytest.raises(ValidationError) as err:
        CodeReviewRequest.model_validate(body)
    assert [e["loc"][0] for e in err.value.errors()] == [field]


@pytest.mark.parametrize(("given", "expected"), [("Python", "python"), ("py", "python"), ("TS", "typescript"),
                                                 ("golang", "go"), ("rust", "rust"), ("java", "java")])
def test_language_is_normalised(given, expected):
    assert _request(language=given).language == expected


def test_retrieval_query_and_user_message_carry_the_inputs():
    agent = CodeReviewAgent()
    query = agent.retrieval_query(_request())
    assert query.startswith("python code review")
    assert "bare except clauses" in query and "mutable default arguments" in query  # hints from the checks
    assert "def fetch(url, seen=[]):" in query
    message = agent.user_message(_request())
    assert "python" in message
    assert "3 | def fetch(url, seen=[]):" in message  # numbered so the model can cite lines
    assert "6 |     except:" in message


def test_checks_find_bare_except_and_mutable_default_lines(make_source):
    processed = CodeReviewAgent().postprocess("", _sources(make_source), _request())
    out = processed.output
    _assert_shape(out)
    # Issue 16: a silent model leaves the review to the pattern checks, and the answer says so.
    assert processed.fallback and processed.warnings[0].startswith("findings: the model's review held no finding")
    found = {(f["pattern"], f["line"]) for f in out["findings"]}
    assert ("bare-except-clauses", 6) in found
    assert ("mutable-default-arguments", 3) in found
    assert ("missing-timeouts-on-network-calls", 5) in found


def test_check_severity_comes_from_the_retrieved_pattern(make_source):
    out = CodeReviewAgent().postprocess("", _sources(make_source), _request()).output
    severity = {f["pattern"]: f["severity"] for f in out["findings"]}
    assert severity["mutable-default-arguments"] == "medium"  # "**Medium** in general" in the document
    assert severity["bare-except-clauses"] == "high"


def test_well_formed_model_lines_merge_with_checks(make_source):
    processed = CodeReviewAgent().postprocess(WELL_FORMED, _sources(make_source), _request())
    out = processed.output
    assert (processed.fallback, processed.warnings) == (False, ())
    _assert_shape(out)
    keys = [(f["pattern"], f["line"]) for f in out["findings"]]
    assert len(keys) == len(set(keys))  # the model repeating a check's finding is merged
    assert set(keys) == {("mutable-default-arguments", 3), ("bare-except-clauses", 6),
                         ("missing-timeouts-on-network-calls", 5)}
    assert [f["severity"] for f in out["findings"]] == ["high", "high", "medium"]  # most severe first
    assert out["summary"].endswith("Risky error handling and a shared default list.")
    assert out["summary"].startswith("3 finding(s)")


def test_model_lines_are_parsed_tolerantly(make_source):
    text = (
        "Here is my review:\n"
        "- **Line 2** (critical) Mutable Default Arguments: never share lists\n"
        "* L7 [low] naming: rename fetch\n"
        "line 40 [high] bare-except-clauses: out of range line\n"
        "[medium] general: add docstrings\n"
        "This code has a high chance of failing.\n"
    )
    findings = parse_findings(text, _sources(make_source), num_lines=7)
    assert [(f["line"], f["severity"], f["pattern"]) for f in findings] == [
        (2, "critical", "mutable-default-arguments"),
        (7, "low", "naming"),
        (None, "high", "bare-except-clauses"),
        (None, "medium", "general"),
    ]
    assert findings[0]["suggestion"] == "never share lists"


@pytest.mark.parametrize(
    ("code", "pattern", "line"),
    [
        ('x = 1\nAPI_KEY = "sk_live_0123456789abcdef"\n', "hard-coded-secrets", 2),
        ('def q(c, uid):\n    c.execute(f"SELECT * FROM users WHERE id = {uid}")\n', "sql-injection-string-formatting", 2),
        ('def q(c, uid):\n    c.execute("SELECT * FROM users WHERE id = %s" % uid)\n', "sql-injection-string-formatting", 2),
        ("def run(expr):\n    return eval(expr)\n", "eval-of-dynamic-code", 2),
        ("try:\n    go()\nexcept ValueError:\n    pass\n", "swallowed-errors", 3),
        ("import time\nasync def handler():\n    time.sleep(1)\n", "blocking-calls-in-async-code", 3),
        ("from os.path import *\n", "wildcard-and-overly-broad-imports", 1),
    ],
)
def test_deterministic_checks(code, pattern, line):
    assert (pattern, line) in {(hit.pattern, hit.line) for hit in run_checks(code, "python")}


def test_checks_skip_safe_code_and_other_languages():
    safe = "import requests\n\ndef fetch(url, seen=None):\n    return requests.get(url, timeout=5)\n"
    assert run_checks(safe, "python") == []
    assert not any(h.pattern == "mutable-default-arguments" for h in run_checks("def f(a=[]): pass", "go"))
    js = "const q = `SELECT * FROM t WHERE id = ${id}`;\ntry { go(); } catch (e) {}\n"
    assert {(h.pattern, h.line) for h in run_checks(js, "javascript")} == {
        ("sql-injection-string-formatting", 1), ("swallowed-errors", 2),
    }


def test_clean_code_and_silent_model_say_so():
    out = CodeReviewAgent().postprocess("", [], _request(code="def add(a, b):\n    return a + b")).output
    assert out == {"findings": [], "summary": "No issues found by the pattern checks or the model."}


def test_a_model_summary_alone_is_generated_output(make_source):
    processed = CodeReviewAgent().postprocess("Summary: looks fine to me.", _sources(make_source), _request())
    assert not processed.fallback and processed.output["summary"].endswith("looks fine to me.")


def test_garbage_output_keeps_the_shape(garbage, make_source):
    for sources in ([], _sources(make_source)):
        _assert_shape(CodeReviewAgent().postprocess(garbage, sources, _request()).output)


def test_echoed_prompt_format_is_not_a_finding(make_source):
    echoed = CodeReviewAgent.system_prompt.split("exactly as:\n", 1)[1]
    assert parse_findings(echoed, _sources(make_source), num_lines=7) == []


def test_lines_plural_is_a_line_number(make_source):
    findings = parse_findings("lines 4 [low] swallowed-errors: log it", _sources(make_source), num_lines=7)
    assert findings[0]["line"] == 4
