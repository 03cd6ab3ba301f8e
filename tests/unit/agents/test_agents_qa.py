from __future__ import annotations

import ast

import pytest
from pydantic import ValidationError

from agents.base import MAX_CODE_CHARS
from agents.qa import TEST_TYPES, QAAgent, QARequest, split_tests

CODE = '''def slugify(title: str, max_len=40):
    return "-".join(title.lower().split())[:max_len]


class Cart:
    def total(self):
        return 0
'''

WELL_FORMED = '''Here are the tests:
```python
import pytest
from text_utils import slugify

LIMIT = 5


@pytest.mark.parametrize("title,expected", [("Hello World", "hello-world"), ("A", "a")])
def test_slugify_basic(title, expected):
    assert slugify(title) == expected


def test_slugify_truncates():
    assert len(slugify("word " * 50, max_len=LIMIT)) == LIMIT


async def test_slugify_empty():
    assert slugify("") == ""
```
'''


def _sources(make_source):
    return [
        make_source("test_templates", "pytest-unit-test-pure-function", 0.8),
        make_source("test_templates", "parametrized-tests-pytest", 0.6),
    ]


def test_contract_attributes():
    assert (QAAgent.name, QAAgent.route, QAAgent.collection) == ("qa", "generate-tests", "test_templates")
    assert QAAgent.request_model is QARequest
    assert (QAAgent.cache_settings.ttl_s, QAAgent.cache_settings.max_cache_size_mb) == (7200, 150)
    assert len(QAAgent.system_prompt.split()) <= 120


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"test_type": "unit"}, "code"),
        ({"code": "", "test_type": "unit"}, "code"),
        ({"code": "\n   \n", "test_type": "unit"}, "code"),
        ({"code": "x" * (MAX_CODE_CHARS + 1), "test_type": "unit"}, "code"),
        ({"code": CODE}, "test_type"),
        ({"code": CODE, "test_type": "vibes"}, "test_type"),
        ({"code": CODE, "test_type": ""}, "test_type"),
        ({"code": CODE, "test_type": 7}, "test_type"),
    ],
)
def test_bad_fields_are_named(body, field):
    with pytest.raises(ValidationError) as err:
        QARequest.model_validate(body)
    assert [e["loc"][0] for e in err.value.errors()] == [field]


@pytest.mark.parametrize(("given", "expected"), [("Unit", "unit"), (" property ", "property"),
                                                 ("end-to-end", "e2e"), ("integration tests", "integration")])
def test_test_type_is_normalised(given, expected):
    assert QARequest(code=CODE, test_type=given).test_type == expected


def test_all_documented_test_types_are_accepted():
    for test_type in ("unit", "integration", "property", "regression", "e2e", "load", "fuzz", "contract",
                      "snapshot"):
        assert test_type in TEST_TYPES
        QARequest(code=CODE, test_type=test_type)


def test_code_keeps_its_indentation():
    request = QARequest(code="\n\n    return x + 1\n\n", test_type="unit")
    assert request.code == "    return x + 1"


def test_retrieval_query_and_user_message_carry_the_inputs():
    request = QARequest(code=CODE, test_type="property")
    agent = QAAgent()
    query = agent.retrieval_query(request)
    assert query.startswith("test templates for property")
    assert "slugify" in query and "Cart" in query
    message = agent.user_message(request)
    assert "property" in message and CODE.strip() in message


def test_well_formed_output_is_split_into_standalone_tests(make_source):
    processed = QAAgent().postprocess(WELL_FORMED, _sources(make_source), QARequest(code=CODE, test_type="unit"))
    out = processed.output
    assert (processed.fallback, processed.warnings) == (False, ())
    assert out["test_type"] == "unit"
    assert [t["name"] for t in out["tests"]] == ["test_slugify_basic", "test_slugify_truncates", "test_slugify_empty"]
    for test in out["tests"]:
        ast.parse(test["code"])  # each test is valid Python on its own
        assert test["code"].startswith("import pytest\nfrom text_utils import slugify")
    assert "@pytest.mark.parametrize" in out["tests"][0]["code"]
    assert "LIMIT = 5" in out["tests"][1]["code"]  # the helper it uses comes along
    assert "LIMIT = 5" not in out["tests"][0]["code"]


def test_unfenced_output_and_duplicate_names():
    text = "def test_a():\n    assert 1\n\ndef test_a():\n    assert 2\n"
    assert [t["name"] for t in split_tests(text)] == ["test_a", "test_a_2"]


def test_fenced_blocks_without_test_functions_are_separate_tests():
    text = "```js\nit('adds', () => { expect(add(1, 2)).toBe(3); });\n```\n```js\nexpect(add(0, 0)).toBe(0);\n```"
    tests = split_tests(text, "unit")
    assert [t["name"] for t in tests] == ["test_adds", "test_unit_2"]


def test_blank_line_blocks_are_the_last_resort():
    text = "assert add(1, 2) == 3\n\nSome prose here.\n\nassert add(0, 0) == 0"
    tests = split_tests(text, "regression")
    assert [t["code"].strip() for t in tests] == ["assert add(1, 2) == 3", "assert add(0, 0) == 0"]
    assert [t["name"] for t in tests] == ["test_regression_1", "test_regression_2"]


def test_no_tests_gives_skeletons_from_function_names_and_template(make_source):
    processed = QAAgent().postprocess("I cannot help.", _sources(make_source), QARequest(code=CODE, test_type="unit"))
    out = processed.output
    # Issue 16: skeletons are filled in, not generated, and the answer says so.
    assert processed.fallback and len(processed.warnings) == 1
    assert processed.warnings[0].startswith("tests: the model wrote no usable test; 2 skeleton test(s)")
    names = [t["name"] for t in out["tests"]]
    assert names == ["test_slugify_unit", "test_total_unit"]
    skeleton = out["tests"][0]["code"]
    ast.parse(skeleton)
    assert "slugify(title, max_len)" in skeleton
    assert "pytest-unit-test-pure-function" in skeleton


def test_garbage_output_never_gives_an_empty_list(garbage, make_source):
    for sources in ([], _sources(make_source)):
        for code in (CODE, "x = 1"):
            out = QAAgent().postprocess(garbage, sources, QARequest(code=code, test_type="fuzz")).output
            assert out["test_type"] == "fuzz"
            assert out["tests"]
            assert all(set(t) == {"name", "code"} and t["name"] and t["code"] for t in out["tests"])
