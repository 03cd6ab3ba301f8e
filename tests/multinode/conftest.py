"""The app on a 2-node Ray cluster made of real Ray nodes on this machine (issue 17), deployed once for the
package with ``serve deploy serve_config.yaml`` as a user deploys to a running cluster.

The config is the user's file with what one machine posing as two needs, nothing else:
- ``proxy_location: HeadOnly``: both nodes share this machine's ports, so one HTTP proxy (on machines of
  their own every node runs one, as serve_config.yaml says);
- ``llm.bind_cores: false``: both nodes see the same two cores, and pinning is per node;
- ``max_replicas_per_node: 1`` with 2 replicas for the LLM pool, the gateway and the support agent, so each
  of them has a replica on both nodes, and a node that rejoins takes its replica back.
Both nodes read the same collection store (``TCRAG_DATA_DIR``), the path every node mounts in a real
cluster, and share one L2 tier: a Redis Cluster (3 masters + 3 replicas) given as ``redis+cluster://``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from testbed.app_process import REPO, config_copy, http_json, wait_for_warmup
from testbed.ray_cluster import LocalRayCluster
from testbed.redis_cluster import RedisClusterServer
from testbed.redis_server import free_port

SPREAD = {"num_replicas": 2, "max_replicas_per_node": 1}
OVERRIDES = {
    "llm": {"bind_cores": False, **SPREAD},
    "gateway": SPREAD,
    "agents": {"support": SPREAD},
}


class ClusterApp:
    """The deployed app: its URL, its cluster and the config it was deployed with."""

    def __init__(self, cluster: LocalRayCluster, base_url: str, config: Path, redis: RedisClusterServer) -> None:
        self.cluster = cluster
        self.redis = redis
        self.base_url = base_url
        self.config = config

    def healthy(self) -> bool:
        try:
            return http_json("GET", f"{self.base_url}/healthz", timeout_s=5)[0] == 200
        except OSError:
            return False


@pytest.fixture(scope="package")
def cluster_app(tmp_path_factory) -> ClusterApp:
    workdir = tmp_path_factory.mktemp("multinode")
    redis = RedisClusterServer(masters=3, replicas_per_master=1)
    redis.start()
    cluster = LocalRayCluster(workdir, workers=1, env={
        "TCRAG_DATA_DIR": str(workdir / "data"), "REDIS_URL": redis.url, "RAY_DEDUP_LOGS": "0"})
    port = free_port()
    config = config_copy(REPO / "serve_config.yaml", workdir / "serve_config.yaml", port, OVERRIDES,
                         serve_options={"proxy_location": "HeadOnly"})
    app = ClusterApp(cluster, f"http://127.0.0.1:{port}", config, redis)
    try:
        cluster.start()
        started = time.monotonic()
        print(f"[multinode] serve deploy {config} --address {cluster.dashboard_url}", file=sys.stderr, flush=True)
        cluster.serve("deploy", str(config))
        deadline = started + 900
        while not app.healthy():
            if time.monotonic() > deadline:
                raise RuntimeError(f"app not healthy on the cluster after 900 s; logs under {cluster.temp_dir}")
            time.sleep(3)
        wait_for_warmup(app.base_url)
        print(f"[multinode] app healthy and warm after {time.monotonic() - started:.0f} s", file=sys.stderr,
              flush=True)
        yield app
    finally:
        try:
            cluster.serve("shutdown", "-y", timeout_s=120)
        except Exception as err:  # noqa: BLE001 - the nodes are stopped next whatever happened
            print(f"[multinode] serve shutdown failed: {err}", file=sys.stderr)
        cluster.stop()
        redis.stop()
        if os.environ.get("CI"):
            for node in cluster.nodes:
                tail = node.log_path.read_text(errors="replace").splitlines()[-15:] if node.log_path.exists() else []
                print(f"\n[multinode] last lines of {node.log_path.name}:\n" + "\n".join(tail), file=sys.stderr)
