"""SE-Darwin's loop (`generations`): n rounds in one request, each round's prompt extending the previous
round's exact prompt and output tokens. Real pipeline, store, token cache, prompt assembly and session
store; the embedder, tokenizer and engine are test doubles, and the model's text is scripted."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from agents.se_darwin import MAX_GENERATIONS, SEDarwinAgent, SEDarwinRequest
from deployments.gateway import _validation_error
from rag.agent_service import AgentService
from rag.sessions import SessionConfig, SessionStore
from retrieval.models import Document
from tests.unit.rag.test_pipeline import Harness

OPERATORS = [
    Document("memoization-insertion", "# Memoization Insertion\n\nCache results of a pure recursive function.", {}),
    Document("early-return-refactor", "# Early Return Refactor\n\nReturn early from base cases to flatten code.", {}),
    Document("loop-unrolling-mutation", "# Loop Unrolling\n\nReplace recursion with an iterative loop.", {}),
]
TASK = "make fib fast"
CANDIDATE = "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)"
MAX_TOKENS = 4


def scripted(ids: Sequence[int]) -> str:
    """A well-formed SE-Darwin answer whose code depends on the round's output (so rounds differ)."""
    tag = ids[0] if ids else 0
    return (f"Operator: memoization-insertion\n```python\ndef fib_v{tag}(n):\n    return n\n```\n"
            f"Rationale: version {tag}")


class DarwinHarness(Harness):
    def __init__(self, tmp_path, decode=scripted) -> None:
        super().__init__(tmp_path)
        store = self.retrieval.store
        store.create_collection("darwin_operators")
        store.upsert_documents("darwin_operators", OPERATORS, lambda text: [text], self.embedder.embed)
        self.rag._decode = decode
        self.store = SessionStore(SessionConfig())
        self.service = AgentService(SEDarwinAgent(), self.rag, self.retrieval, self.store)

    def request(self, **kwargs) -> SEDarwinRequest:
        return SEDarwinRequest(**{"task": TASK, "candidate": CANDIDATE, "top_k": 3, "max_tokens": MAX_TOKENS, **kwargs})

    async def evolve(self, **kwargs) -> dict:
        return await self.service.answer(self.request(**kwargs))

    def prompts(self, n: int) -> list[list[int]]:
        return [list(r.prompt_token_ids) for r in self.engine.requests[-n:]]


def fake_output(prompt: Sequence[int], n: int = MAX_TOKENS) -> list[int]:
    """What the fake engine generates for a prompt (tests/fakes/fake_engine.py: (sum(prompt) + i) % 1000)."""
    return [(sum(prompt) + i) % 1000 for i in range(n)]


def _contains(seq: Sequence[int], sub: Sequence[int]) -> bool:
    return any(list(seq[i:i + len(sub)]) == list(sub) for i in range(len(seq) - len(sub) + 1))


@pytest.fixture
def darwin(tmp_path) -> DarwinHarness:
    return DarwinHarness(tmp_path)


async def test_each_round_prompt_starts_with_the_previous_round_prompt_and_output_exactly(darwin):
    await darwin.evolve(generations=3)
    assert len(darwin.engine.requests) == 3  # three rounds, three generations on the engine
    p1, p2, p3 = darwin.prompts(3)
    assert p2[: len(p1) + MAX_TOKENS] == p1 + fake_output(p1)
    assert p3[: len(p2) + MAX_TOKENS] == p2 + fake_output(p2)
    # The router keys on the conversation so far, and the fake engine finds it cached.
    assert darwin.engine.requests[1].prefix_len == len(p1) + MAX_TOKENS


async def test_every_generation_is_returned_and_each_round_improves_the_previous_candidate(darwin):
    body = await darwin.evolve(generations=3)
    output = body["output"]
    # Today's keys are kept (the final round's operators and variants), the generations are added.
    assert set(output) == {"operators", "variants", "generations"}
    generations = output["generations"]
    assert [g["generation"] for g in generations] == [1, 2, 3]
    for g in generations:
        assert set(g) == {"generation", "candidate", "operator", "rationale", "changed", "usage", "history_rebuilt"}
        assert g["changed"] and g["operator"] == "memoization-insertion" and g["candidate"].startswith("def fib_v")
        assert not g["history_rebuilt"]
    assert len({g["candidate"] for g in generations}) == 3
    assert output["variants"][0]["code"] == generations[-1]["candidate"]  # the final one where it always was
    # Round k+1's new user turn carries round k's candidate and asks to improve it.
    _, p2, p3 = darwin.prompts(3)
    tokenizer = darwin.tokenizer
    assert _contains(p2, tokenizer.encode(generations[0]["candidate"]))
    assert _contains(p3, tokenizer.encode(generations[1]["candidate"]))
    assert _contains(p3, tokenizer.encode("Generation 3: improve this candidate further"))


async def test_usage_and_cache_are_summed_over_rounds_and_ttft_is_the_first_round(darwin):
    body = await darwin.evolve(generations=3)
    per_round = [g["usage"] for g in body["output"]["generations"]]
    for key in ("prompt_tokens", "prefix_cached_tokens", "completion_tokens"):
        assert body["usage"][key] == sum(u[key] for u in per_round)
    prompts = darwin.prompts(3)
    assert [u["prompt_tokens"] for u in per_round] == [len(p) for p in prompts]
    assert body["usage"]["completion_tokens"] == 3 * MAX_TOKENS
    # Round 1 is new to the engine; rounds 2 and 3 reuse the conversation so far (whole 16-token blocks).
    assert per_round[0]["prefix_cached_tokens"] == 0
    assert per_round[1]["prefix_cached_tokens"] == (len(prompts[0]) // 16) * 16 > 0
    assert per_round[2]["prefix_cached_tokens"] == (len(prompts[1]) // 16) * 16
    # Chunks are looked up in round 1 only: the follow-up rounds add no context.
    assert body["cache"] == {"hits": 0, "misses": 3, "hit_rate": 0.0}
    latency = body["latency_ms"]
    assert set(latency) == {"retrieve", "tokens", "ttft", "generate", "total"}
    assert 0 < latency["ttft"] <= latency["total"]
    assert latency["total"] == pytest.approx(latency["retrieve"] + latency["tokens"] + latency["generate"], abs=0.01)


async def test_follow_up_rounds_reuse_the_first_rounds_chunks(darwin):
    body = await darwin.evolve(generations=2)
    p1, p2 = darwin.prompts(2)
    new_turn = p2[len(p1) + MAX_TOKENS:]
    assert not _contains(new_turn, darwin.tokenizer.encode("\n\nContext:\n"))  # no context header: nothing new
    assert len(body["sources"]) == 3


async def test_one_generation_is_todays_single_answer_plus_its_generation(darwin):
    body = await darwin.evolve()
    assert len(darwin.engine.requests) == 1
    assert [g["generation"] for g in body["output"]["generations"]] == [1]
    assert body["usage"] == body["output"]["generations"][0]["usage"]
    assert "session" not in body


async def test_without_a_session_the_rounds_are_not_stored(darwin):
    await darwin.evolve(generations=2)
    assert darwin.store._local == {}


async def test_with_a_session_every_round_is_a_turn_and_the_session_continues(darwin):
    body = await darwin.evolve(generations=3, session_id="evo-1")
    assert body["session"] == {"session_id": "evo-1", "turn": 2, "first_turn": 0, "dropped_turns": 0,
                               "history_rebuilt": False}
    turns = (await darwin.service.get_session("evo-1"))["turns"]
    assert len(turns) == 3
    for before, after in zip(turns, turns[1:]):
        history = before["prompt_token_ids"] + before["response_token_ids"]
        assert after["prompt_token_ids"][: len(history)] == history
    # A later request on the same session continues from the last generation's exact tokens.
    again = await darwin.evolve(generations=2, session_id="evo-1")
    assert (again["session"]["first_turn"], again["session"]["turn"]) == (3, 4)
    turns = (await darwin.service.get_session("evo-1"))["turns"]
    history = turns[2]["prompt_token_ids"] + turns[2]["response_token_ids"]
    assert turns[3]["prompt_token_ids"][: len(history)] == history


async def test_a_round_with_no_usable_variant_carries_the_candidate_over(tmp_path):
    darwin = DarwinHarness(tmp_path, decode=lambda ids: " ".join(f"t{i}" for i in ids))
    body = await darwin.evolve(generations=2)
    first, second = body["output"]["generations"]
    assert first["candidate"] == CANDIDATE and not first["changed"] and first["operator"] is None
    assert second["candidate"] == CANDIDATE
    assert _contains(darwin.prompts(1)[0], darwin.tokenizer.encode("over unchanged: the previous generation gave no new"))


async def test_plain_mode_runs_the_rounds_too_resending_the_history_as_text(darwin):
    body = await darwin.evolve(generations=2, use_cache=False)
    assert len(body["output"]["generations"]) == 2
    assert darwin.plain_prompts == 2
    assert body["cache"] == {"hits": 0, "misses": 0, "hit_rate": 0.0}


async def test_streaming_sends_each_rounds_tokens_and_result_then_the_answer(darwin):
    events = [e async for e in darwin.service.answer_stream(darwin.request(generations=2, stream=True))]
    assert events[-1] == "data: [DONE]\n\n"
    payloads = [json.loads(e[len("data: "):]) for e in events[:-1]]
    deltas = [p for p in payloads if "delta" in p]
    results = [p for p in payloads if "result" in p]
    final = payloads[-1]
    assert {p["generation"] for p in deltas} == {1, 2}
    assert [p["generation"] for p in results] == [1, 2]
    assert final["agent"] == "se-darwin" and [g["generation"] for g in final["output"]["generations"]] == [1, 2]
    assert [r["result"] for r in results] == final["output"]["generations"]
    # Round 2 still extends round 1 token for token when streamed.
    p1, p2 = darwin.prompts(2)
    assert p2[: len(p1) + MAX_TOKENS] == p1 + fake_output(p1)
    # Events come in order: all of round 1 before anything of round 2.
    order = [p["generation"] for p in payloads[:-1]]
    assert order == sorted(order)


@pytest.mark.parametrize("bad", [0, -1, MAX_GENERATIONS + 1, 100, "two", 1.5, None])
async def test_generations_outside_1_to_8_are_refused_naming_the_field(bad):
    with pytest.raises(ValidationError) as info:
        SEDarwinRequest(task=TASK, candidate=CANDIDATE, generations=bad)
    errors = info.value.errors()
    assert errors[0]["loc"] == ("generations",)
    # The gateway answers such a body 422 with the field named.
    response = await _validation_error(None, RequestValidationError(
        [{**e, "loc": ("body", *e["loc"])} for e in errors]))
    assert response.status_code == 422
    assert json.loads(response.body)["error"]["field"] == "generations"


def test_generations_accepts_1_to_8_and_defaults_to_1():
    assert SEDarwinRequest(task=TASK, candidate=CANDIDATE).generations == 1
    assert SEDarwinRequest(task=TASK, candidate=CANDIDATE, generations=MAX_GENERATIONS).generations == 8


async def test_rounds_past_the_history_limit_rebuild_the_prompt_and_say_so(darwin):
    darwin.rag._sessions = SessionConfig(max_history_tokens=64)  # smaller than one round's prompt
    body = await darwin.evolve(generations=3)
    generations = body["output"]["generations"]
    assert [g["history_rebuilt"] for g in generations] == [False, True, True]
    assert len({g["candidate"] for g in generations}) == 3  # the loop still improves each round's candidate


@pytest.mark.parametrize("bad", ["2", "1", 2.0, True])
def test_generations_is_a_strict_int(bad):
    # Strict like every HTTP body (issue 16): a string, a float or a bool is refused, never coerced.
    with pytest.raises(ValidationError) as info:
        SEDarwinRequest(task=TASK, candidate=CANDIDATE, generations=bad)
    assert [e["loc"] for e in info.value.errors()] == [("generations",)]
    body = json.dumps({"task": TASK, "candidate": CANDIDATE, "generations": bad})
    with pytest.raises(ValidationError) as info:
        SEDarwinRequest.model_validate_json(body)
    assert [e["loc"] for e in info.value.errors()] == [("generations",)]


# ----------------------------------------------------------------------------- fallback and warnings per round

ALL_THREE = "".join(
    f"Operator: {doc.id}\n```python\ndef fib_{i}(n):\n    return n\n```\nRationale: reason {i}\n"
    for i, doc in enumerate(OPERATORS))


def script_rounds(darwin: DarwinHarness, texts: dict[int, str], default: str = "t t t") -> None:
    """The model's text per round (by the engine's request count when the round decodes), else `default`."""
    darwin.rag._decode = lambda ids: texts.get(len(darwin.engine.requests), default)


def _paths(warnings: list[str]) -> list[tuple[str, str]]:
    return [tuple(w.split(":", 1)[0].split(".", 1)) for w in warnings]


async def test_warnings_of_every_round_are_prefixed_with_their_generation(darwin):
    # The scripted answer writes one of the three operators: each round fills in the other two.
    body = await darwin.evolve(generations=2)
    assert body["fallback"] is True
    filled = ["variants[1].code", "variants[1].rationale", "variants[2].code", "variants[2].rationale"]
    assert _paths(body["warnings"]) == [("generations[1]", p) for p in filled] + [("generations[2]", p) for p in filled]
    json.dumps(body)


async def test_fallback_when_any_round_filled_anything(darwin):
    script_rounds(darwin, {1: ALL_THREE})
    body = await darwin.evolve(generations=2)
    assert body["output"]["generations"][0]["changed"]
    assert body["fallback"] is True
    assert {prefix for prefix, _ in _paths(body["warnings"])} == {"generations[2]"}  # round 1 wrote everything


async def test_no_fallback_when_every_round_wrote_every_variant(darwin):
    script_rounds(darwin, {}, default=ALL_THREE)
    body = await darwin.evolve(generations=3)
    assert body["fallback"] is False and body["warnings"] == []
    assert len(body["output"]["generations"]) == 3


async def test_the_streamed_answer_carries_every_rounds_warnings(darwin):
    script_rounds(darwin, {2: ALL_THREE})
    events = [e async for e in darwin.service.answer_stream(darwin.request(generations=2, stream=True))]
    final = json.loads(events[-2][len("data: "):])
    assert final["fallback"] is True and final["warnings"]
    assert {prefix for prefix, _ in _paths(final["warnings"])} == {"generations[1]"}  # round 2 wrote everything
