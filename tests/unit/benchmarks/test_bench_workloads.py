"""Workloads: every agent's topics are valid requests, and Zipf draws are seeded and skewed."""

from collections import Counter

import pytest

from agents.registry import agent_by_name
from benchmarks.run import draw, interleave, mode_fields, rotated
from benchmarks.workloads import (
    AGENT_SPECS,
    ZipfSampler,
    build_topics,
    covered_warmup,
    covering_order,
    router_workload,
    zipf_weights,
)


@pytest.mark.parametrize("agent", list(AGENT_SPECS))
def test_every_topic_is_a_valid_request_for_its_agent(agent):
    cls = agent_by_name(agent)
    assert AGENT_SPECS[agent].collection == cls.collection
    assert AGENT_SPECS[agent].path == f"/v1/agents/{cls.name}/{cls.route}"
    topics = build_topics(agent)
    assert len(topics) >= 10
    for topic in topics:
        cls.request_model.model_validate({**topic.body, "max_tokens": 16, "use_cache": False})


def test_topics_differ_within_an_agent():
    for agent in AGENT_SPECS:
        topics = build_topics(agent)
        assert len({str(sorted(t.body.items())) for t in topics}) == len(topics)


def test_zipf_weights_normalized_and_decreasing():
    w = zipf_weights(5, 1.1)
    assert sum(w) == pytest.approx(1.0)
    assert all(a > b for a, b in zip(w, w[1:]))
    assert w[0] / w[1] == pytest.approx(2 ** 1.1)
    with pytest.raises(ValueError):
        zipf_weights(0)


def test_zipf_sampler_is_seeded_and_skewed():
    items = list(range(30))
    a = ZipfSampler(items, seed=3).sample(2000)
    b = ZipfSampler(items, seed=3).sample(2000)
    assert a == b
    counts = Counter(a)
    top = ZipfSampler(items, seed=3).ranked[0]
    assert counts.most_common(1)[0][0] == top
    assert counts[top] / 2000 == pytest.approx(zipf_weights(30)[0], abs=0.05)


def test_zipf_streams_share_the_ranking_but_not_the_draws():
    items = list(range(30))
    warm, measure = ZipfSampler(items, seed=1, stream="warm"), ZipfSampler(items, seed=1, stream="measure")
    assert warm.ranked == measure.ranked
    assert warm.sample(50) != measure.sample(50)


def test_mode_fields():
    assert mode_fields("baseline") == {"use_cache": False}
    assert mode_fields("token_cache") == {"use_cache": True, "prefix_cache": False}
    assert mode_fields("full") == {"use_cache": True}
    with pytest.raises(ValueError):
        mode_fields("other")


def test_interleave_round_robins_agents_and_rotation_balances_mode_order():
    topics = {a: build_topics(a) for a in ("support", "qa")}
    draws = draw(["support", "qa"], 3, 0, "measure", 1.1, topics)
    order = [t.agent for t in interleave(draws)]
    assert order == ["support", "qa"] * 3
    firsts = Counter(rotated(["baseline", "token_cache", "full"], i)[0] for i in range(9))
    assert set(firsts.values()) == {3}


def test_covering_order_is_every_topic_once_and_seeded():
    topics = build_topics("support")
    first, again, other = covering_order(topics, 0), covering_order(topics, 0), covering_order(topics, 1)
    assert sorted(t.key for t in first) == sorted(t.key for t in topics)
    assert [t.key for t in first] == [t.key for t in again]
    assert [t.key for t in first] != [t.key for t in other]


def test_router_workload_covers_every_topic_within_its_warmup():
    agents = ["support", "qa"]
    requests = router_workload(10, 0, agents, cover=True)
    warmup = covered_warmup(agents, 0)
    assert len(requests) == warmup + 10
    covered = {(path, str(sorted(body.items()))) for path, body in requests[:warmup]}
    expected = {(AGENT_SPECS[a].path, str(sorted(t.body.items()))) for a in agents for t in build_topics(a)}
    assert covered == expected
    assert router_workload(10, 0, agents) == requests[warmup:]
