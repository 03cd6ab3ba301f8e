from __future__ import annotations

import pytest
from pydantic import ValidationError

from agents.base import MAX_QUERY_CHARS
from agents.documentation import DocumentationAgent, DocumentationRequest


def _sources(make_source):
    return [
        make_source("documentation", "api-pagination", 0.9),
        make_source("documentation", "api-error-format", 0.7),
        make_source("documentation", "api-pagination", 0.65, position=1),
    ]


def test_contract_attributes():
    agent = DocumentationAgent
    assert (agent.name, agent.route, agent.collection) == ("documentation", "lookup", "documentation")
    assert agent.request_model is DocumentationRequest
    assert (agent.cache_settings.ttl_s, agent.cache_settings.max_cache_size_mb) == (3600, 100)
    assert len(agent.system_prompt.split()) <= 120


@pytest.mark.parametrize("body", [{}, {"query": ""}, {"query": " "}, {"query": "q" * (MAX_QUERY_CHARS + 1)}])
def test_bad_query_names_the_field(body):
    with pytest.raises(ValidationError) as err:
        DocumentationRequest.model_validate(body)
    assert any(e["loc"][0] == "query" for e in err.value.errors())


def test_query_at_the_limit_is_accepted():
    assert len(DocumentationRequest(query="q" * MAX_QUERY_CHARS).query) == MAX_QUERY_CHARS


def test_query_reaches_retrieval_and_user_message():
    request = DocumentationRequest(query="How does cursor pagination work?")
    agent = DocumentationAgent()
    assert agent.retrieval_query(request) == "How does cursor pagination work?"
    assert "How does cursor pagination work?" in agent.user_message(request)


def test_sections_are_the_chunks_of_the_named_page(make_source):
    sources = _sources(make_source)
    text = f"Per \"{sources[0].title}\", pass the `next_cursor` value as `cursor` until it is null."
    processed = DocumentationAgent().postprocess(text, sources, DocumentationRequest(query="pagination"))
    out = processed.output
    assert (processed.fallback, processed.warnings) == (False, ())
    assert out["answer"] == text
    assert [s["chunk_id"] for s in out["sections"]] == ["api-pagination#0", "api-pagination#1"]
    assert out["sections"][0] == {
        "doc_id": "api-pagination", "title": sources[0].title, "chunk_id": "api-pagination#0", "score": 0.9,
    }


def test_sections_are_all_retrieved_chunks_when_no_page_is_named(make_source):
    sources = _sources(make_source)
    out = DocumentationAgent().postprocess("Use the cursor.", sources, DocumentationRequest(query="pagination")).output
    assert [s["chunk_id"] for s in out["sections"]] == [s.chunk_id for s in sources]


def test_empty_answer_falls_back_to_the_best_section(make_source):
    sources = _sources(make_source)
    processed = DocumentationAgent().postprocess("", sources, DocumentationRequest(query="pagination"))
    out = processed.output
    assert out["answer"].startswith(f"From \"{sources[0].title}\"")
    assert processed.fallback  # issue 16: the answer was filled in, and says so
    assert processed.warnings[0].startswith("answer: the model wrote none; filled with the opening of the best section")


def test_garbage_output_keeps_the_shape(garbage, make_source):
    for sources in ([], _sources(make_source)):
        out = DocumentationAgent().postprocess(garbage, sources, DocumentationRequest(query="q")).output
        assert set(out) == {"answer", "sections"}
        assert isinstance(out["answer"], str) and out["answer"]
        assert all(set(s) == {"doc_id", "title", "chunk_id", "score"} for s in out["sections"])
