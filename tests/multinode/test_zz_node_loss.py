"""A worker node stopped under load (``ray stop`` for that node), then rejoined (issue 17).

Named ``zz`` so it runs after the other multinode tests. Load: 3 threads sending the six agents' requests
round robin, no client retries, every non-200 a failure, while the worker stops and the head serves alone;
then again once the worker has rejoined, until its new LLM replica has served. A request in flight on the lost node is sent
again by the app itself: the gateway resends a request whose agent replica died, the pool client one
whose LLM replica died. The counts are printed and written to ``node_loss.json`` beside the cluster's logs.
"""

from __future__ import annotations

import json
import sys
import time

import pytest

from benchmarks.soak import MixedLoad

pytestmark = pytest.mark.multinode

WORKERS = 3
REJOIN_TIMEOUT_S = 600.0


def _wait_ok(load: MixedLoad, more: int, timeout_s: float = 300.0) -> None:
    assert load.wait_for_ok(more, timeout_s), f"load stalled: {load.report.summary()}"


def _resent(cluster_app) -> dict[str, int]:
    """Requests the app sent again after losing a replica, from the replicas' logs on every node."""
    counts = {"agent_requests_resent": 0, "llm_requests_resent": 0}
    for log in cluster_app.cluster.temp_dir.glob("session_*/logs/serve/*.log"):
        text = log.read_text(errors="replace")
        counts["agent_requests_resent"] += text.count("replica lost, sending the request again")
        counts["llm_requests_resent"] += text.count("LLM replica lost (attempt")
    return counts


def test_worker_node_stopped_under_load_then_rejoined(cluster_app):
    cluster = cluster_app.cluster
    worker = cluster.workers[0]
    load = MixedLoad(cluster_app.base_url, workers=WORKERS, extra={"max_tokens": 8}, timeout_s=300).start()
    try:
        _wait_ok(load, 6)
        # Ray exports a replica's counters every few seconds: wait until the worker's shows its share.
        deadline = time.monotonic() + 120
        while (served_by_worker_before := cluster.metric_total(worker, "tcrag_llm_requests_total")) < 1:
            assert time.monotonic() < deadline, "the worker's LLM replica served nothing before the stop"
            _wait_ok(load, 2)
        sent_before = load.report.sent

        stopped_at = time.monotonic()
        cluster.stop_node(worker)
        stop_s = time.monotonic() - stopped_at
        _wait_ok(load, 12)  # served by the head alone
        placed_alone = cluster.replicas_by_node()
        sent_while_down = load.report.sent - sent_before
    finally:
        down = load.stop()
    # The node rejoins with the load paused, and the load resumes once its new replicas run. On this 2-core
    # machine, under load, the GCS did not confirm the new node within `ray start`'s fixed 30 s (3 attempts
    # of 3), and the node's replicas took over 6 minutes to import torch and vLLM; a real cluster's nodes
    # have cores of their own.
    rejoin_s = cluster.start_node(worker)
    rejoined_at = time.monotonic()
    deadline = rejoined_at + REJOIN_TIMEOUT_S
    while not (cluster.replicas_by_node().get("llm") == ["head", "worker1"]
                 and set(cluster.deployment_statuses().values()) == {"HEALTHY"}):
        assert time.monotonic() < deadline, (
            f"the app did not get its replicas back on the worker: {cluster.replicas_by_node()}\n"
            f"{cluster.serve('status')}")
        time.sleep(5)
    replica_back_s = time.monotonic() - rejoined_at
    load = MixedLoad(cluster_app.base_url, workers=WORKERS, extra={"max_tokens": 8}, timeout_s=300).start()
    try:
        # The rejoined node's new LLM replica takes load again: its own counter, exported by that node.
        deadline = time.monotonic() + 300
        while cluster.metric_total(worker, "tcrag_llm_requests_total") < 1:
            assert time.monotonic() < deadline, (
                f"the rejoined worker's LLM replica served nothing: {cluster.replicas_by_node()}\n"
                f"{cluster.serve('status')}")
            _wait_ok(load, 3)
        served_by_worker_after = cluster.metric_total(worker, "tcrag_llm_requests_total")
    finally:
        up = load.stop()

    failures = [reason for _, _, reason in down.failures + up.failures]
    numbers = {
        "sent": down.sent + up.sent, "failed": down.failed + up.failed, "ok": down.ok + up.ok,
        "sent_while_worker_down": sent_while_down, "failed_while_worker_down_or_stopping": down.failed,
        "worker_stop_s": round(stop_s, 1), "worker_rejoin_s": round(rejoin_s, 1), "worker_ray_starts": worker.starts,
        "replicas_back_and_healthy_after_rejoin_s": round(replica_back_s, 1),
        "llm_requests_on_worker_before_stop": served_by_worker_before,
        "llm_requests_on_rejoined_worker": served_by_worker_after,
        "placement_while_down": placed_alone,
        **_resent(cluster_app),
        "failures": failures[:10],
    }
    print("[multinode] " + json.dumps(numbers), file=sys.stderr, flush=True)
    (cluster.workdir / "node_loss.json").write_text(json.dumps(numbers, indent=2))

    assert numbers["failed"] == 0, f"{numbers['failed']} of {numbers['sent']} requests failed: {failures[:10]}"
    assert placed_alone["llm"] == ["head"] and placed_alone["gateway"] == ["head"], placed_alone
    assert served_by_worker_after >= 1
