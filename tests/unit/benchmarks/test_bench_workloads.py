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
    assert mode_fields("plain_rag", "r1") == {"use_cache": False, "cache_salt": "bench-plain_rag-r1"}
    assert mode_fields("no_reuse", "r1") == {"use_cache": False, "prefix_cache": False}
    assert mode_fields("token_cache", "r1") == {"use_cache": True, "prefix_cache": False}
    assert mode_fields("full", "r1") == {"use_cache": True, "cache_salt": "bench-full-r1"}
    with pytest.raises(ValueError):
        mode_fields("other", "r1")


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


# -- realistic traffic: hand-written material and the class-tagged stream --------------------------------------

import json  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402

from benchmarks.workloads import (  # noqa: E402
    DEFAULT_DATA_DIR,
    TRAFFIC_CLASSES,
    TrafficGenerator,
    TrafficMix,
    class_shares,
    load_eval_queries,
    load_traffic,
    traffic_capacity,
    traffic_counts,
    traffic_plan,
    warmup_sequence,
)

CODE_AGENTS = ("qa", "code-review", "se-darwin")
CONVERSATION_AGENTS = ("support", "documentation")
SESSION_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")  # DESIGN.md's session id contract
_TEXT_FIELD = {"support": "query", "documentation": "query", "business": "brief", "se-darwin": "task"}


def _words(text: str) -> list[str]:
    return sorted(re.findall(r"[a-z0-9_]+", text.lower()))


def _ask(agent: str, body: dict) -> str:
    """The words a user typed: the text field, or for qa the leading comment of the code."""
    if agent == "qa":
        return body["code"].split("\n", 1)[0]
    return body[_TEXT_FIELD[agent]]


@pytest.mark.parametrize("agent", list(AGENT_SPECS))
def test_traffic_topics_are_the_labelled_eval_topics(agent):
    topics = load_traffic(agent)
    rows = load_eval_queries(AGENT_SPECS[agent].collection)
    assert [t.topic for t in topics] == [r["expected_doc"] for r in rows]
    for topic, row in zip(topics, rows):
        assert row["expected_doc"] in topic.relevant
        if agent in _TEXT_FIELD and agent != "se-darwin":
            assert _ask(agent, topic.first) == row["query"]
        if agent in ("qa", "se-darwin"):
            assert row["query"] in _ask(agent, topic.first)


@pytest.mark.parametrize("agent", list(AGENT_SPECS))
def test_every_traffic_body_is_a_valid_request(agent):
    cls = agent_by_name(agent)
    for topic in load_traffic(agent):
        bodies = [topic.first, *topic.rephrased, *topic.edited, *({"query": f} for f in topic.followups)]
        for body in bodies:
            cls.request_model.model_validate({**body, "max_tokens": 16})


@pytest.mark.parametrize("agent", list(AGENT_SPECS))
def test_at_least_three_real_rephrasings_per_topic(agent):
    for topic in load_traffic(agent):
        assert len(topic.rephrased) >= 3, topic.topic
        bodies = [topic.first, *topic.rephrased]
        assert len({json.dumps(b, sort_keys=True) for b in bodies}) == len(bodies), topic.topic
        if agent == "code-review":  # no question field: the same flaw in other code
            assert all(b["code"] != topic.first["code"] for b in topic.rephrased)
            continue
        asks = [_words(_ask(agent, b)) for b in bodies]
        # other words, not the same words in another order
        assert len({tuple(a) for a in asks}) == len(asks), topic.topic
        for b in topic.rephrased:  # only the wording changes
            assert {k: v for k, v in b.items() if k not in ("query", "brief", "task", "code")} == \
                {k: v for k, v in topic.first.items() if k not in ("query", "brief", "task", "code")}
            if agent == "qa":
                assert b["code"].split("\n", 1)[1] == topic.first["code"].split("\n", 1)[1]
            if agent == "se-darwin":
                assert b["candidate"] == topic.first["candidate"]


@pytest.mark.parametrize("agent", list(AGENT_SPECS))
def test_code_agents_have_edited_snippets_and_only_they_do(agent):
    for topic in load_traffic(agent):
        if agent not in CODE_AGENTS:
            assert topic.edited == ()
            continue
        assert len(topic.edited) >= 2, topic.topic
        code_field = "candidate" if agent == "se-darwin" else "code"
        codes = [topic.first[code_field], *(e[code_field] for e in topic.edited)]
        assert len(set(codes)) == len(codes), topic.topic
        for edited in topic.edited:  # the code changed, the rest of the request did not
            assert {k: v for k, v in edited.items() if k != code_field} == \
                {k: v for k, v in topic.first.items() if k != code_field}


@pytest.mark.parametrize("agent", list(AGENT_SPECS))
def test_support_and_documentation_have_followups_and_only_they_do(agent):
    for topic in load_traffic(agent):
        if agent in CONVERSATION_AGENTS:
            assert 2 <= len(topic.followups) <= 3, topic.topic
            assert len(set(topic.followups)) == len(topic.followups)
            assert all(f.strip() and f not in (topic.first["query"], *(r["query"] for r in topic.rephrased))
                       for f in topic.followups)
        else:
            assert topic.followups == ()


def test_traffic_counts_and_capacity():
    for agent in AGENT_SPECS:
        counts = traffic_counts(agent)
        assert counts["rephrased"] >= 3 * counts["topics"]
        assert (counts["edited"] >= 2 * counts["topics"]) == (agent in CODE_AGENTS)
        assert (counts["followups"] >= 2 * counts["topics"]) == (agent in CONVERSATION_AGENTS)
        assert traffic_capacity(agent) >= 60


def test_traffic_mix_defaults_renormalization_and_parsing():
    mix = TrafficMix()
    assert mix.shares() == pytest.approx({"first": 0.2, "rephrased": 0.4, "repeat": 0.2, "followup": 0.2})
    assert mix.shares(["first", "rephrased", "repeat"]) == pytest.approx(
        {"first": 0.25, "rephrased": 0.5, "repeat": 0.25, "followup": 0.0})
    assert mix.shares([]) == {c: 0.0 for c in TRAFFIC_CLASSES}
    parsed = TrafficMix.parse("first=1, repeat=3")
    assert parsed.shares() == pytest.approx({"first": 1 / 4.6, "rephrased": 0.4 / 4.6, "repeat": 3 / 4.6,
                                             "followup": 0.2 / 4.6})
    for bad in ("first=-1", "other=1", "first", "first=0,rephrased=0,repeat=0,followup=0"):
        with pytest.raises(ValueError):
            TrafficMix.parse(bad)
    with pytest.raises(ValueError):
        TrafficMix(extra=1)


@pytest.mark.parametrize("agent", ["support", "documentation"])
def test_class_shares_match_the_configured_mix(agent):
    n = 120  # within the agent's material (traffic_capacity 160), so no class runs out
    runs = [class_shares(TrafficGenerator(agent, seed=seed).take(n)) for seed in range(20)]
    for c, want in TrafficMix().shares().items():
        assert statistics.mean(r[c] for r in runs) == pytest.approx(want, abs=0.03), c


@pytest.mark.parametrize("agent", ["business", "qa", "code-review", "se-darwin"])
def test_class_shares_renormalize_without_followups(agent):
    runs = [TrafficGenerator(agent, seed=seed).take(50) for seed in range(20)]
    assert all(item.traffic_class != "followup" for run in runs for item in run)
    shares = [class_shares(run) for run in runs]
    for c, want in {"first": 0.25, "rephrased": 0.5, "repeat": 0.25}.items():
        assert statistics.mean(s[c] for s in shares) == pytest.approx(want, abs=0.04), c


def test_a_custom_mix_is_followed_and_zero_classes_never_appear():
    mix = TrafficMix(first=0.5, rephrased=0.0, repeat=0.5, followup=0.0)
    items = TrafficGenerator("support", mix, seed=3).take(50)
    assert {i.traffic_class for i in items} == {"first", "repeat"}
    with pytest.raises(ValueError):  # nothing to follow up on before a conversation starts
        TrafficGenerator("support", TrafficMix(first=0, rephrased=0, repeat=0, followup=1)).next()


def test_classes_run_out_gracefully_past_the_material():
    items = TrafficGenerator("business", seed=0).take(300)
    firsts = [i.topic for i in items if i.traffic_class == "first"]
    assert sorted(firsts) == sorted(t.topic for t in load_traffic("business"))  # each topic exactly once
    rephrased = [(i.topic, i.variant) for i in items if i.traffic_class == "rephrased"]
    assert len(rephrased) == len(set(rephrased)) == traffic_counts("business")["rephrased"]
    assert class_shares(items[-50:])["repeat"] == 1.0


@pytest.mark.parametrize("agent", list(AGENT_SPECS))
def test_traffic_is_deterministic_per_seed(agent):
    a = [i.to_dict() for i in TrafficGenerator(agent, seed=7).take(80)]
    b = [i.to_dict() for i in TrafficGenerator(agent, seed=7).take(80)]
    c = [i.to_dict() for i in TrafficGenerator(agent, seed=8).take(80)]
    assert a == b
    assert a != c


@pytest.mark.parametrize("agent", list(AGENT_SPECS))
def test_items_say_what_they_are(agent):
    topics = {t.topic: t for t in load_traffic(agent)}
    items = TrafficGenerator(agent, seed=1).take(150)
    seen: set[str] = set()
    for idx, item in enumerate(items):
        topic = topics[item.topic]
        assert item.index == idx and item.agent == agent and item.route == AGENT_SPECS[agent].path
        assert item.traffic_class in TRAFFIC_CLASSES and item.relevant == topic.relevant
        if item.traffic_class == "first":
            assert item.topic not in seen and item.body == topic.first and item.variant == "first"
        else:
            assert item.topic in seen  # every other class is about a topic already seen
        if item.traffic_class == "rephrased":
            assert dict(topic.variants())[item.variant] == item.body
            assert item.body != topic.first
        seen.add(item.topic)
    rephrased = [(i.topic, i.variant) for i in items if i.traffic_class == "rephrased"]
    assert len(rephrased) == len(set(rephrased))  # a rephrasing sent twice would be a repeat
    if agent in CODE_AGENTS:
        assert any(i.variant.startswith("edited:") for i in items)


@pytest.mark.parametrize("agent", list(AGENT_SPECS))
def test_repeats_are_verbatim_copies_of_earlier_sent_items(agent):
    items = TrafficGenerator(agent, seed=2).take(150)
    repeats = [i for i in items if i.traffic_class == "repeat"]
    assert repeats
    for item in repeats:
        original = items[item.repeat_of]
        assert original.index < item.index
        assert original.traffic_class in ("first", "rephrased")  # never a turn that needs its session
        assert item.request_body() == original.body == item.body
        assert (item.route, item.topic, item.variant) == (original.route, original.topic, original.variant)
        assert item.session_id is None and item.turn is None


@pytest.mark.parametrize("agent", CONVERSATION_AGENTS)
def test_followups_come_after_the_session_first_turn_in_order(agent):
    topics = {t.topic: t for t in load_traffic(agent)}
    items = TrafficGenerator(agent, seed=4).take(160)
    openers = {i.session_id: i for i in items if i.turn == 0}
    assert all(i.traffic_class in ("first", "rephrased") for i in openers.values())
    followups = [i for i in items if i.traffic_class == "followup"]
    assert followups
    turns: dict[str, list[int]] = {}
    for item in followups:
        opener = openers[item.session_id]  # the conversation was started before
        assert opener.index < item.index and opener.topic == item.topic
        turns.setdefault(item.session_id, []).append(item.turn)
        assert item.turn == len(turns[item.session_id])  # turns 1, 2, 3 in order
        text = topics[item.topic].followups[item.turn - 1]
        assert item.body == {"query": text} and item.variant == f"followup:{item.turn - 1}"
        earlier = [topics[item.topic].followups[t - 1] for t in range(1, item.turn)]
        assert item.history == (opener.body["query"], *earlier)
    assert all(SESSION_ID.match(sid) for sid in openers)
    assert len({i.session_id for i in items if i.turn == 0}) == len([i for i in items if i.turn == 0])


def test_request_body_adds_the_session_and_the_mode_fields():
    items = TrafficGenerator("support", seed=4).take(60)
    followup = next(i for i in items if i.traffic_class == "followup")
    body = followup.request_body({"use_cache": False, "cache_salt": "plain_rag"}, session_prefix="plain_rag.")
    assert body == {**followup.body, "session_id": f"plain_rag.{followup.session_id}", "use_cache": False,
                    "cache_salt": "plain_rag"}
    assert SESSION_ID.match(body["session_id"])
    assert followup.body == {"query": followup.body["query"]}  # the item itself is not changed
    qa = TrafficGenerator("qa", seed=0).next()
    assert qa.session_id is None and "session_id" not in qa.request_body()


def test_traffic_plan_warmup_is_mode_independent_and_measurement_continues_it():
    agents = ["support", "qa", "se-darwin"]
    plan = traffic_plan(agents, 10, seed=5, warmup_per_agent=6)
    assert [i.to_dict() for i in plan.warmup] == [i.to_dict() for i in warmup_sequence(agents, 6, seed=5)]
    assert [i.to_dict() for i in plan.warmup] == [
        i.to_dict() for i in traffic_plan(agents, 40, seed=5, warmup_per_agent=6).warmup]
    assert [i.agent for i in plan.warmup] == agents * 6
    assert [i.agent for i in plan.measured] == agents * 10
    for agent in agents:  # one stream per agent: warm-up first, measured after
        stream = [i.to_dict() for i in TrafficGenerator(agent, seed=5).take(16)]
        assert [i.to_dict() for i in plan.warmup + plan.measured if i.agent == agent] == stream
    stated = plan.stated()
    assert stated["configured"] == TrafficMix().shares()
    assert sum(stated["measured"].values()) == pytest.approx(1.0)
    assert stated["requests"] == {"warmup": 18, "measured": 30}


def test_traffic_files_are_one_json_object_per_topic():
    for agent in AGENT_SPECS:
        lines = [ln for ln in (DEFAULT_DATA_DIR / "eval" / "traffic" / f"{agent}.jsonl").read_text().splitlines()
                 if ln.strip()]
        rows = [json.loads(ln) for ln in lines]
        assert all(set(r) <= {"topic", "relevant", "first", "rephrased", "edited", "followups"} for r in rows)
        assert len({r["topic"] for r in rows}) == len(rows)
