from __future__ import annotations

import pytest
from pydantic import ValidationError

from agents.base import MAX_QUERY_CHARS
from agents.business import IDEA_FIELDS, BusinessGenerationAgent, BusinessRequest, parse_labelled_idea

FIELDS = ("title", "target_customer", "problem", "offer", "pricing_model", "channels", "key_metrics", "risks")
BRIEF = "A tea subscription for small offices that want healthier breaks."

WELL_FORMED = """Title: OfficeLeaf
Target customer: Office managers at 10-50 person companies
Problem: Staff drink sugary drinks because good tea is a hassle to buy.
Offer: A monthly box of loose-leaf teas with a brewing kit.
Pricing model: $49 per month per office, annual plan $490.
Channels: LinkedIn ads; office-supply resellers; coworking partnerships
Key metrics: CAC; monthly churn; boxes per office
Risks: low perceived value; shipping costs"""


def _sources(make_source):
    return [
        make_source("business_templates", "specialty-coffee-subscription-box", 0.71),
        make_source("business_templates", "b2b-saas-dental-clinic-scheduling", 0.52),
    ]


def _assert_complete(idea):
    assert set(idea) == {*FIELDS, "template", "raw"}
    for field in FIELDS:
        value = idea[field]
        if field in ("channels", "key_metrics", "risks"):
            assert isinstance(value, list) and value and all(isinstance(v, str) and v for v in value), field
        else:
            assert isinstance(value, str) and value.strip(), field


def test_contract_attributes():
    agent = BusinessGenerationAgent
    assert (agent.name, agent.route, agent.collection) == ("business", "generate", "business_templates")
    assert agent.request_model is BusinessRequest
    assert (agent.cache_settings.ttl_s, agent.cache_settings.max_cache_size_mb) == (3600, 100)
    assert len(agent.system_prompt.split()) <= 120
    for label in ("Title:", "Target customer:", "Pricing model:", "Key metrics:", "Risks:"):
        assert label in agent.system_prompt


@pytest.mark.parametrize("body", [{}, {"brief": ""}, {"brief": "\t"}, {"brief": "b" * (MAX_QUERY_CHARS + 1)}])
def test_bad_brief_names_the_field(body):
    with pytest.raises(ValidationError) as err:
        BusinessRequest.model_validate(body)
    assert any(e["loc"][0] == "brief" for e in err.value.errors())


def test_brief_reaches_retrieval_and_user_message():
    request = BusinessRequest(brief=BRIEF)
    agent = BusinessGenerationAgent()
    assert BRIEF in agent.retrieval_query(request)
    assert BRIEF in agent.user_message(request)


def test_well_formed_output_is_parsed(make_source):
    processed = BusinessGenerationAgent().postprocess(WELL_FORMED, _sources(make_source), BusinessRequest(brief=BRIEF))
    idea = processed.output
    assert (processed.fallback, processed.warnings) == (False, ())  # every field came from the model
    _assert_complete(idea)
    assert idea["title"] == "OfficeLeaf"
    assert idea["target_customer"] == "Office managers at 10-50 person companies"
    assert idea["pricing_model"] == "$49 per month per office, annual plan $490."
    assert idea["channels"] == ["LinkedIn ads", "office-supply resellers", "coworking partnerships"]
    assert idea["key_metrics"] == ["CAC", "monthly churn", "boxes per office"]
    assert idea["risks"] == ["low perceived value", "shipping costs"]
    assert idea["template"] == "specialty-coffee-subscription-box"
    assert idea["raw"] == WELL_FORMED


def test_labels_are_tolerant():
    text = (
        "Sure! Here is the idea.\n"
        "**TITLE**: Brew Desk\n"
        "- target customers - facility managers\n"
        "## Pricing\n"
        "- Starter: $29/month\n"
        "- Price: $99/month for teams\n"
        "KPIs:\n"
        "1. Retention\n"
        "2. Net revenue\n"
        "Channels: events, partners (resellers, agencies), SEO\n"
    )
    parsed = parse_labelled_idea(text)
    assert parsed["title"] == "Brew Desk"
    assert parsed["target_customer"] == "facility managers"
    assert parsed["pricing_model"] == "Starter: $29/month; Price: $99/month for teams"
    assert parsed["key_metrics"] == ["Retention", "Net revenue"]
    assert parsed["channels"] == ["events", "partners (resellers, agencies)", "SEO"]


def test_missing_fields_come_from_the_best_template(make_source):
    sources = _sources(make_source)
    processed = BusinessGenerationAgent().postprocess(
        "Title: OfficeLeaf\nOffer: tea boxes", sources, BusinessRequest(brief=BRIEF)
    )
    idea = processed.output
    _assert_complete(idea)
    # Issue 16: the answer says which fields were filled in, and from where; the generated ones are not named.
    assert processed.fallback
    filled = [w.split(":", 1)[0] for w in processed.warnings]
    assert filled == ["target_customer", "problem", "pricing_model", "channels", "key_metrics", "risks"]
    assert "'Problem' section of the template 'specialty-coffee-subscription-box'" in processed.warnings[1]
    assert (idea["title"], idea["offer"]) == ("OfficeLeaf", "tea boxes")
    assert idea["problem"].startswith("Supermarket beans are stale")  # the coffee template's Problem section
    assert idea["risks"][0].startswith("High churn after")
    assert "Instagram and YouTube brewing creators with affiliate codes (15% commission)" in idea["channels"]


def test_best_template_is_the_highest_score(make_source):
    sources = list(reversed(_sources(make_source)))  # best is no longer first
    processed = BusinessGenerationAgent().postprocess("", sources, BusinessRequest(brief=BRIEF))
    idea = processed.output
    assert idea["template"] == "specialty-coffee-subscription-box"
    assert idea["title"] == "A tea subscription for small offices that want..."
    assert processed.warnings[0] == "title: not generated; taken from the brief"
    assert len(processed.warnings) == len(IDEA_FIELDS)


def test_every_field_is_filled_from_garbage(garbage, make_source):
    for sources in ([], _sources(make_source)):
        processed = BusinessGenerationAgent().postprocess(garbage, sources, BusinessRequest(brief=BRIEF))
        _assert_complete(processed.output)
        assert processed.fallback  # at least the list fields are never in garbage


def test_echoed_prompt_placeholders_count_as_missing(make_source):
    echoed = BusinessGenerationAgent.system_prompt.split("nothing else:\n", 1)[1]
    assert parse_labelled_idea(echoed) == {}
    idea = BusinessGenerationAgent().postprocess(echoed, _sources(make_source), BusinessRequest(brief=BRIEF)).output
    _assert_complete(idea)
    assert "<" not in idea["target_customer"] and all("<" not in c for c in idea["channels"])
