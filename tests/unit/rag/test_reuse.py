"""The reuse planner: which order a retrieved set is sent in, so the longest cached prefix comes first."""

from __future__ import annotations

from rag.reuse import ReuseConfig, ReusePlanner


def planner(**config) -> ReusePlanner[str]:
    return ReusePlanner(ReuseConfig(**config), key=lambda c: c)


def test_first_sighting_keeps_the_canonical_order():
    p = planner()
    plan = p.plan(["a#0", "b#0", "c#0"])
    assert plan.order == ["a#0", "b#0", "c#0"] and plan.kind == "canonical" and plan.extra == []


def test_a_recent_context_sharing_enough_chunks_is_sent_whole_first_then_what_is_new():
    p = planner(min_shared=3, min_shared_fraction=0.0, max_extra_chunks=2)
    p.record(["d#0", "a#0", "b#0", "c#0", "e#0"])
    plan = p.plan(["a#0", "b#0", "c#0", "f#0", "g#0"])  # shares a, b, c
    assert plan.kind == "reused_context" and plan.shared == 3
    assert plan.order == ["d#0", "a#0", "b#0", "c#0", "e#0", "f#0", "g#0"]
    assert plan.extra == ["d#0", "e#0"]
    assert set(plan.order) >= {"a#0", "b#0", "c#0", "f#0", "g#0"}  # no retrieved chunk is dropped


def test_reuse_needs_enough_shared_chunks_and_few_extras():
    p = planner(min_shared=3, min_shared_fraction=0.0, max_extra_chunks=1)
    p.record(["a#0", "b#0", "x#0", "y#0"])
    assert p.plan(["a#0", "b#0", "c#0"]).kind != "reused_context"  # only 2 shared
    p.record(["a#0", "b#0", "c#0", "x#0", "y#0"])
    assert p.plan(["a#0", "b#0", "c#0"]).kind != "reused_context"  # 3 shared but 2 extras


def test_the_best_recent_context_wins_most_shared_then_fewest_extras_then_newest():
    p = planner(min_shared=2, min_shared_fraction=0.0, max_extra_chunks=3)
    p.record(["a#0", "b#0", "z#0", "y#0"])
    p.record(["a#0", "b#0", "c#0", "z#0"])
    p.record(["b#0", "a#0", "c#0"])
    plan = p.plan(["a#0", "b#0", "c#0", "d#0"])
    assert plan.order[:3] == ["b#0", "a#0", "c#0"] and plan.extra == []


def test_the_ordering_tree_puts_the_most_sent_path_first():
    p = planner(min_shared=5)  # rule 1 never applies: only the tree orders
    for _ in range(3):
        p.record(["c#0", "a#0", "b#0"])
    p.record(["a#0", "b#0", "c#0"])
    plan = p.plan(["a#0", "b#0", "d#0", "c#0"])
    assert plan.kind == "tree" and plan.shared == 3
    assert plan.order == ["c#0", "a#0", "b#0", "d#0"]


def test_disabled_planner_is_canonical():
    p = planner(enabled=False)
    p.record(["b#0", "a#0"])
    assert p.plan(["a#0", "b#0"]).order == ["a#0", "b#0"]


def test_plans_are_deterministic_for_the_same_history():
    def run() -> list[list[str]]:
        p = planner(min_shared=2, min_shared_fraction=0.0)
        out = []
        for s in (["a#0", "b#0", "c#0"], ["b#0", "c#0", "d#0"], ["c#0", "d#0", "e#0"], ["a#0", "e#0", "f#0"]):
            plan = p.plan(s)
            p.record(plan.order)
            out.append(plan.order)
        return out

    assert run() == run()


def test_memory_is_bounded_and_evicts():
    p = planner(recent_contexts=4, tree_max_nodes=16, min_shared=2, min_shared_fraction=0.0)
    for i in range(50):
        p.record([f"d{i}#0", f"d{i}#1", f"d{i}#2"])
    assert len(p._recent) == 4
    assert p.nodes <= 16
    assert p.plan(["d0#0", "d0#1"]).kind == "canonical"  # long evicted
    assert p.plan(["d49#0", "d49#1"]).kind == "reused_context"  # still remembered


def test_forgetting_a_document_drops_its_contexts():
    p = planner(min_shared=2, min_shared_fraction=0.0)
    p.record(["a#0", "b#0", "c#0"])
    p.forget("b", doc_of=lambda c: c.split("#")[0])
    assert p.plan(["a#0", "c#0"]).kind == "canonical"
