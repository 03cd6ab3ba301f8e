"""Core pinning per node (issue 17): each CPU engine takes a core the process may use, by local rank."""

from __future__ import annotations

import pytest

from deployments import llm_server


@pytest.mark.parametrize(("allowed", "rank", "core"), [
    ({0, 1}, 0, "0"), ({0, 1}, 1, "1"), ({0, 1}, 2, "0"),
    ({4, 5, 6}, 0, "4"), ({4, 5, 6}, 4, "5"),  # a container's cpuset that does not start at core 0
])
def test_a_replica_binds_to_a_core_of_its_own_cpuset(monkeypatch, allowed, rank, core):
    monkeypatch.setattr(llm_server.os, "sched_getaffinity", lambda pid: allowed)
    env: dict[str, str] = {}  # the replica's environment, apart from this test process's
    monkeypatch.setattr(llm_server.os, "environ", env)
    llm_server._bind_threads(rank)
    assert env == {"VLLM_CPU_OMP_THREADS_BIND": core, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
