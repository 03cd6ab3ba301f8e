"""Per-replica LLM metrics: in-flight tracks the replica's queue, including failed requests."""

from deployments.llm_server import ReplicaMetrics
from llm.types import GenerateResult


def _result(prompt: int, cached: int) -> GenerateResult:
    return GenerateResult([1], prompt, cached, 1, "length", 0.01, 0.02, "r1")


def test_in_flight_rises_and_falls_with_requests_including_failures():
    metrics = ReplicaMetrics("r1")
    metrics.started()
    metrics.started()
    assert metrics.in_flight == 2
    metrics.finished(_result(1200, 1024))
    assert metrics.in_flight == 1
    metrics.finished(None)  # a failed request leaves the queue too
    assert metrics.in_flight == 0
