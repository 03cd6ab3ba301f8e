from __future__ import annotations

import pytest
from pydantic import ValidationError

from agents.base import MAX_CODE_CHARS, MAX_QUERY_CHARS
from agents.se_darwin import MAX_OPERATORS, SEDarwinAgent, SEDarwinRequest, parse_operator_sections

CANDIDATE = "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)"
TASK = "Make fib fast for n up to 500."

WELL_FORMED = """Operator: memoization-insertion
```python
from functools import lru_cache

@lru_cache(maxsize=None)
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)
```
Rationale: caches overlapping subproblems so each n is computed once.

### Variant 2 - Early Return Refactor
```python
def fib(n):
    if n < 2:
        return n
    return fib(n - 1) + fib(n - 2)
```
Rationale: flatter control flow.
"""


def _sources(make_source):
    return [
        make_source("darwin_operators", "memoization-insertion", 0.82),
        make_source("darwin_operators", "early-return-refactor", 0.61),
        make_source("darwin_operators", "memoization-insertion", 0.6, position=1),
        make_source("darwin_operators", "loop-unrolling-mutation", 0.44),
        make_source("darwin_operators", "tournament-selection", 0.3),
    ]


def _request():
    return SEDarwinRequest(task=TASK, candidate=CANDIDATE)


def _assert_shape(out, sources):
    assert set(out) == {"operators", "variants"}
    source_ids = {s.doc_id for s in sources}
    assert set(out["operators"]) <= source_ids
    assert [v["operator"] for v in out["variants"]] == out["operators"]  # one variant per operator
    for variant in out["variants"]:
        assert set(variant) == {"operator", "title", "code", "rationale"}
        assert variant["operator"] in source_ids
        assert variant["title"] and variant["code"].strip() and variant["rationale"]


def test_contract_attributes():
    agent = SEDarwinAgent
    assert (agent.name, agent.route, agent.collection) == ("se-darwin", "evolve", "darwin_operators")
    assert agent.request_model is SEDarwinRequest
    assert (agent.cache_settings.ttl_s, agent.cache_settings.max_cache_size_mb) == (7200, 150)
    assert len(agent.system_prompt.split()) <= 120


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"candidate": CANDIDATE}, "task"),
        ({"task": "", "candidate": CANDIDATE}, "task"),
        ({"task": "t" * (MAX_QUERY_CHARS + 1), "candidate": CANDIDATE}, "task"),
        ({"task": TASK}, "candidate"),
        ({"task": TASK, "candidate": "   "}, "candidate"),
        ({"task": TASK, "candidate": "c" * (MAX_CODE_CHARS + 1)}, "candidate"),
    ],
)
def test_bad_fields_are_named(body, field):
    with pytest.raises(ValidationError) as err:
        SEDarwinRequest.model_validate(body)
    assert [e["loc"][0] for e in err.value.errors()] == [field]


def test_retrieval_query_and_user_message_carry_the_inputs():
    agent = SEDarwinAgent()
    assert TASK in agent.retrieval_query(_request()) and "def fib" in agent.retrieval_query(_request())
    message = agent.user_message(_request())
    assert TASK in message and CANDIDATE in message


def test_each_variant_is_labelled_with_an_operator_from_the_sources(make_source):
    sources = _sources(make_source)
    processed = SEDarwinAgent().postprocess(WELL_FORMED, sources, _request())
    out = processed.output
    _assert_shape(out, sources)
    assert out["operators"] == ["memoization-insertion", "early-return-refactor", "loop-unrolling-mutation"]
    memo, early, unrolled = out["variants"]
    assert memo["title"] == "Memoization Insertion"
    assert memo["code"].startswith("from functools import lru_cache")
    assert memo["rationale"] == "caches overlapping subproblems so each n is computed once."
    assert early["code"].startswith("def fib(n):\n    if n < 2:")
    assert early["rationale"] == "flatter control flow."
    # The model wrote nothing for the third operator: the candidate itself, annotated with the operator.
    assert unrolled["code"].startswith("# operator: loop-unrolling-mutation")
    assert unrolled["code"].endswith(CANDIDATE)
    assert "Loop Unrolling" in unrolled["rationale"]
    # Issue 16: only the third variant was filled in, and the answer names its parts.
    assert processed.fallback
    assert [w.split(":", 1)[0] for w in processed.warnings] == ["variants[2].code", "variants[2].rationale"]


def test_operators_the_model_labels_come_first(make_source):
    sources = _sources(make_source)
    text = "**Operator: Tournament Selection**\nRationale: keeps the fittest.\n```\ndef fib(n): ...\n```"
    out = SEDarwinAgent().postprocess(text, sources, _request()).output
    assert out["operators"][0] == "tournament-selection"
    assert out["variants"][0]["code"] == "def fib(n): ..."
    assert len(out["operators"]) == MAX_OPERATORS


def test_unknown_operator_sections_are_dropped(make_source):
    sections = parse_operator_sections(
        "Operator: quantum-annealing\n```\nmagic()\n```\nOperator: memoization-insertion\n```\nfast()\n```",
        _sources(make_source),
    )
    assert sections == {"memoization-insertion": ("fast()", "")}


def test_unfenced_variant_code_is_kept(make_source):
    sections = parse_operator_sections(
        "Variant 1: early-return-refactor\ndef fib(n):\n    if n < 2:\n        return n\nWhy: simpler",
        _sources(make_source),
    )
    code, rationale = sections["early-return-refactor"]
    assert code == "def fib(n):\n    if n < 2:\n        return n"
    assert rationale == "simpler"


def test_garbage_output_gives_annotated_candidates(garbage, make_source):
    sources = _sources(make_source)
    out = SEDarwinAgent().postprocess(garbage, sources, _request()).output
    _assert_shape(out, sources)
    assert len(out["variants"]) == MAX_OPERATORS


def test_no_sources_means_no_operators(garbage):
    processed = SEDarwinAgent().postprocess(garbage, [], _request())
    assert processed.output == {"operators": [], "variants": []}
    assert not processed.fallback  # nothing was filled in


def test_operators_are_ranked_by_score_not_by_source_order(make_source):
    sources = list(reversed(_sources(make_source)))  # e.g. the prompt's canonical order
    out = SEDarwinAgent().postprocess("", sources, _request()).output
    assert out["operators"] == ["memoization-insertion", "early-return-refactor", "loop-unrolling-mutation"]


def test_generation_is_the_first_variant_the_model_wrote(make_source):
    agent, request = SEDarwinAgent(), _request()
    out = agent.postprocess(WELL_FORMED, _sources(make_source), request).output
    generation = agent.generation(out, request)
    assert generation["changed"] and generation["operator"] == "memoization-insertion"
    assert generation["candidate"] == out["variants"][0]["code"] and "lru_cache" in generation["candidate"]


def test_generation_carries_the_candidate_over_when_the_model_wrote_no_variant(make_source):
    agent, request = SEDarwinAgent(), _request()
    out = agent.postprocess("nothing useful", _sources(make_source), request).output
    generation = agent.generation(out, request)
    assert generation == {"candidate": CANDIDATE, "operator": None, "changed": False,
                          "rationale": generation["rationale"]}
    # A variant that only repeats the candidate is no new generation either.
    same = {"variants": [{"operator": "x", "title": "X", "code": CANDIDATE + "\n", "rationale": "r"}]}
    assert agent.generation(same, request)["changed"] is False


def test_next_round_holds_the_new_candidate_and_asks_to_improve_it():
    agent, request = SEDarwinAgent(), SEDarwinRequest(task=TASK, candidate=CANDIDATE, generations=3)
    generation = {"candidate": "def fib(n):\n    return 1", "operator": "memoization-insertion"}
    following, message = agent.next_round(request, generation, 2)
    assert following.candidate == generation["candidate"] and following.task == TASK
    assert following.generations == 3
    assert message.startswith("Generation 2: improve this candidate further")
    assert "memoization-insertion" in message and message.endswith(agent.user_message(following))
    assert agent.rounds(request) == 3 and agent.rounds(_request()) == 1
