from __future__ import annotations

import pytest
from pydantic import ValidationError

from agents.base import MAX_QUERY_CHARS
from agents.support import SupportAgent, SupportRequest


def _sources(make_source):
    return [
        make_source("support_kb", "reset-forgotten-password", 0.82),
        make_source("support_kb", "account-locked-after-failed-logins", 0.74),
        make_source("support_kb", "reset-forgotten-password", 0.61, position=1),
        make_source("support_kb", "reset-two-factor-authentication", 0.55),
    ]


def test_contract_attributes():
    assert (SupportAgent.name, SupportAgent.route, SupportAgent.collection) == ("support", "answer", "support_kb")
    assert SupportAgent.request_model is SupportRequest
    assert (SupportAgent.cache_settings.ttl_s, SupportAgent.cache_settings.max_cache_size_mb) == (3600, 100)
    assert len(SupportAgent.system_prompt.split()) <= 120


@pytest.mark.parametrize(
    "body",
    [{}, {"query": ""}, {"query": "   \n"}, {"query": "x" * (MAX_QUERY_CHARS + 1)}, {"query": 3}],
)
def test_bad_query_names_the_field(body):
    with pytest.raises(ValidationError) as err:
        SupportRequest.model_validate(body)
    assert any(e["loc"][0] == "query" for e in err.value.errors())


def test_unknown_field_is_rejected():
    with pytest.raises(ValidationError) as err:
        SupportRequest.model_validate({"query": "hi", "qurey": "typo"})
    assert err.value.errors()[0]["loc"] == ("qurey",)


def test_query_is_stripped_and_used():
    request = SupportRequest(query="  How do I reset my password?  ")
    agent = SupportAgent()
    assert request.query == "How do I reset my password?"
    assert agent.retrieval_query(request) == "How do I reset my password?"
    assert "How do I reset my password?" in agent.user_message(request)


def test_cites_the_articles_the_answer_names(make_source):
    sources = _sources(make_source)
    title = sources[0].title
    text = f"Follow \"{title}\": 1. Open the sign-in page. 2. Click Forgot password. 3. Use the emailed link."
    processed = SupportAgent().postprocess(text, sources, SupportRequest(query="reset password"))
    out = processed.output
    assert (processed.fallback, processed.warnings) == (False, ())
    assert out["answer"] == text
    assert out["citations"] == [
        {"doc_id": "reset-forgotten-password", "title": title, "chunk_id": "reset-forgotten-password#0"}
    ]


def test_cites_by_doc_id_too(make_source):
    sources = _sources(make_source)
    out = SupportAgent().postprocess(
        "See [account-locked-after-failed-logins] and reset-two-factor-authentication.", sources,
        SupportRequest(query="locked"),
    ).output
    assert [c["doc_id"] for c in out["citations"]] == [
        "account-locked-after-failed-logins", "reset-two-factor-authentication",
    ]


def test_cites_every_retrieved_article_in_order_when_none_is_named(make_source):
    sources = _sources(make_source)
    out = SupportAgent().postprocess("Click the link in the email.", sources, SupportRequest(query="reset")).output
    assert [c["doc_id"] for c in out["citations"]] == [
        "reset-forgotten-password", "account-locked-after-failed-logins", "reset-two-factor-authentication",
    ]
    assert out["citations"][0]["chunk_id"] == "reset-forgotten-password#0"  # best chunk of the document


def test_empty_answer_falls_back_to_the_best_article(make_source):
    sources = _sources(make_source)
    processed = SupportAgent().postprocess("<|im_end|>", sources, SupportRequest(query="reset"))
    out = processed.output
    assert processed.fallback  # issue 16: the answer was filled in, and says so
    assert processed.warnings == ("answer: the model wrote none; filled with the opening of the best article "
                                  "'reset-forgotten-password'",)
    assert sources[0].title in out["answer"]
    assert out["citations"][0]["doc_id"] == "reset-forgotten-password"


def test_no_answer_and_no_article_is_a_stock_reply_flagged_as_fallback():
    processed = SupportAgent().postprocess("", [], SupportRequest(query="reset"))
    assert processed.output["answer"] and processed.fallback
    assert processed.warnings[0].startswith("answer: ")


def test_garbage_output_keeps_the_shape(garbage, make_source):
    for sources in ([], _sources(make_source)):
        out = SupportAgent().postprocess(garbage, sources, SupportRequest(query="q")).output
        assert set(out) == {"answer", "citations"}
        assert isinstance(out["answer"], str) and out["answer"]
        assert all(set(c) == {"doc_id", "title", "chunk_id"} for c in out["citations"])
