"""Every agent answer says whether any of its output was filled in rather than generated (issue 16):
``"fallback"`` and ``"warnings"`` are always present, false and empty when the model's text was used.
Real pipeline and agents; the embedder, tokenizer and engine are test doubles (the fake engine's text is
a run of made-up words, never a test or a labelled business idea)."""

from __future__ import annotations

import json

from agents.qa import QAAgent, QARequest
from agents.support import SupportAgent, SupportRequest
from rag.agent_service import AgentService
from rag.sessions import SessionConfig, SessionStore
from tests.unit.rag.test_pipeline import Harness


def _service(tmp_path, agent) -> AgentService:
    harness = Harness(tmp_path)
    return AgentService(agent, harness.rag, harness.retrieval, SessionStore(SessionConfig(), None),
                        collection="support_kb")


async def test_generated_output_is_not_a_fallback(tmp_path):
    body = await _service(tmp_path, SupportAgent()).answer(SupportRequest(query="reset password", max_tokens=4))
    assert body["output"]["answer"]  # the model's (fake) text
    assert body["fallback"] is False and body["warnings"] == []


async def test_filled_in_output_is_flagged_with_warnings(tmp_path):
    request = QARequest(code="def add(a, b):\n    return a + b", test_type="unit", max_tokens=4)
    body = await _service(tmp_path, QAAgent()).answer(request)
    assert body["output"]["tests"][0]["name"] == "test_add_unit"  # a skeleton: the model wrote no test
    assert body["fallback"] is True
    assert len(body["warnings"]) == 1 and body["warnings"][0].startswith("tests: ")
    json.dumps(body)  # plain JSON types


async def test_the_streamed_answer_carries_the_flag_too(tmp_path):
    request = QARequest(code="def add(a, b):\n    return a + b", test_type="unit", max_tokens=4, stream=True)
    events = [e async for e in _service(tmp_path, QAAgent()).answer_stream(request)]
    final = json.loads(events[-2].removeprefix("data: "))
    assert final["fallback"] is True and final["warnings"]
