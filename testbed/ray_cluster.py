"""A multi-node Ray cluster on one machine, made of real Ray nodes, for the multi-node tests (issue 17).

Each node is a ``ray start --block`` process of its own (the head with ``--head`` on a non-default port,
workers joined with ``--address``), each with its own CPUs, object store and a custom resource naming it,
so Ray places work across nodes exactly as on several machines. This is how Ray's own tests build
clusters. Stopping a node is ``ray stop`` for that node alone: SIGTERM to its ``ray start --block``
process, which stops the node's raylet and with it every worker and replica on the node (``ray stop``
itself would stop every node on the machine). The app is deployed with ``serve deploy`` through the
head's dashboard, as a user deploys to a running cluster.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from testbed.app_process import kill_orphaned_engines
from testbed.redis_server import free_port

__all__ = ["LocalRayCluster", "RayNode"]

_BIN = Path(sys.executable).parent


def _log(message: str) -> None:
    print(f"[cluster] {message}", file=sys.stderr, flush=True)


@dataclass
class RayNode:
    """One ``ray start --block`` process; ``resource`` is the custom resource only this node has."""

    name: str
    resource: str
    log_path: Path
    proc: subprocess.Popen | None = None
    node_id: str | None = None
    starts: int = 0
    metrics_port: int | None = None
    args: list[str] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class _StartFailed(Exception):
    """``ray start`` exited before its node joined."""


class LocalRayCluster:
    """A head and ``workers`` worker nodes on this machine; ``env`` reaches every process of the cluster."""

    def __init__(self, workdir: Path, workers: int = 1, cpus_per_node: int = 2,
                 object_store_bytes: int = 512 << 20, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        # Ray's session files apart from any other Ray on the machine, on a short path: Ray's Unix sockets
        # live there, and a socket path may not exceed 107 bytes (pytest's tmp paths do).
        self.temp_dir = Path(tempfile.mkdtemp(prefix="tcrag-ray-"))
        # Ray 2.60 turns token authentication on for a new cluster once a token exists on the machine
        # (~/.ray/auth_token, written by any local ray.init). The cluster gets a token of its own instead,
        # given to its nodes and to every CLI call here (``ray list``, ``serve``) through the environment,
        # so this process's own environment, shared with the other tests, is left alone.
        auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        self.env = {**os.environ, **(env or {}), **auth, "RAY_ADDRESS": self.address}
        common = ["--num-cpus", str(cpus_per_node), "--object-store-memory", str(object_store_bytes),
                  "--disable-usage-stats"]
        self.head = RayNode("head", "tcrag_node_head", workdir / "head.log")
        self.head.args = ["--head", "--port", str(self.gcs_port), "--dashboard-host", "127.0.0.1",
                          "--dashboard-port", str(self.dashboard_port), "--include-dashboard", "true",
                          "--ray-client-server-port", str(free_port()), "--temp-dir", str(self.temp_dir), *common]
        self.workers = [RayNode(f"worker{i}", f"tcrag_node_worker{i}", workdir / f"worker{i}.log")
                        for i in range(1, workers + 1)]
        for node in self.workers:
            node.args = ["--address", self.address, *common]

    @property
    def nodes(self) -> list[RayNode]:
        return [self.head, *self.workers]

    # -- nodes

    def start(self, timeout_s: float = 180.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.start_node(self.head, timeout_s)
        for node in self.workers:
            self.start_node(node, timeout_s)

    def start_node(self, node: RayNode, timeout_s: float = 180.0, attempts: int = 3) -> float:
        """Start (or restart) ``node`` and wait until the cluster lists it alive; returns the seconds taken.

        ``ray start`` gives up when the GCS does not confirm the new node within its own 30 s, which a
        2-core machine under load can miss; like an operator (or KubeRay) the start is then tried again."""
        started = time.monotonic()
        for attempt in range(1, attempts + 1):
            try:
                self._start_once(node, started + timeout_s)
                return time.monotonic() - started
            except _StartFailed as err:
                if attempt == attempts:
                    raise RuntimeError(str(err)) from None
                _log(f"{err}; starting it again ({attempt + 1}/{attempts})")
        raise AssertionError("unreachable")

    def _start_once(self, node: RayNode, deadline: float) -> None:
        # Each start gets its own agent ports: a restarted node must not wait for its old ports to free.
        node.metrics_port = free_port()
        ports = ["--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(node.metrics_port)]
        resources = ["--resources", json.dumps({node.resource: 1})]
        with node.log_path.open("a") as log:
            node.proc = subprocess.Popen(
                [str(_BIN / "ray"), "start", "--block", *node.args, *resources, *ports],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        node.starts += 1
        _log(f"starting {node.name} (log: {node.log_path})")
        while time.monotonic() < deadline:
            if node.proc.poll() is not None:
                self.stop_node(node)  # what the failed start left behind in its process group
                raise _StartFailed(f"ray start for {node.name} exited; see {node.log_path}")
            node_id = self._alive_node_with(node.resource)
            if node_id:
                node.node_id = node_id
                _log(f"{node.name} alive as node {node_id[:12]}")
                return
            time.sleep(1)
        raise RuntimeError(f"{node.name} did not join in time; see {node.log_path}")

    def stop_node(self, node: RayNode, timeout_s: float = 60.0) -> None:
        """``ray stop`` for this node alone: SIGTERM, then SIGKILL of what is left of its process group."""
        if node.proc is None:
            return
        if node.proc.poll() is None:
            os.killpg(node.proc.pid, signal.SIGTERM)
            try:
                node.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(node.proc.pid, signal.SIGKILL)
                node.proc.wait()
        try:
            os.killpg(node.proc.pid, signal.SIGKILL)  # anything of the node still in its group
        except ProcessLookupError:
            pass
        node.proc = None

    def stop(self) -> None:
        for node in reversed(self.nodes):
            self.stop_node(node)
        kill_orphaned_engines()
        _log(f"stopped; Ray's logs are under {self.temp_dir}")

    # -- what the cluster says

    def _state(self, kind: str, **filters: str) -> list[dict]:
        """Ray's state API (``ray list``) through the head's dashboard, with the cluster's token."""
        filter_args = [arg for key, value in filters.items() for arg in ("--filter", f"{key}={value}")]
        return json.loads(self._cli("ray", "list", kind, "--format", "json", "--limit", "10000", *filter_args,
                                    timeout_s=120))

    def _alive_node_with(self, resource: str) -> str | None:
        try:
            nodes = self._state("nodes", state="ALIVE")
        except Exception:  # noqa: BLE001 - the dashboard is not up yet
            return None
        for row in nodes:
            if resource in (row.get("resources_total") or {}):
                return row["node_id"]
        return None

    def node_name(self, node_id: str) -> str:
        for node in self.nodes:
            if node.node_id == node_id:
                return node.name
        return node_id[:12]

    def replicas_by_node(self, app: str = "tcrag") -> dict[str, list[str]]:
        """Live replicas of every deployment of ``app``: deployment -> node names (one entry per replica)."""
        placed: dict[str, list[str]] = {}
        prefix = f"ServeReplica:{app}:"
        for row in self._state("actors", state="ALIVE"):
            class_name = row.get("class_name") or ""
            if class_name.startswith(prefix):
                placed.setdefault(class_name[len(prefix):], []).append(self.node_name(row["node_id"]))
        return {name: sorted(nodes) for name, nodes in sorted(placed.items())}

    def metric_total(self, node: RayNode, name: str) -> float:
        """Sum of a Prometheus counter over the series this node exports (0 when it exports none yet)."""
        import urllib.request

        if node.metrics_port is None:
            return 0.0
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=10) as response:
                text = response.read().decode()
        except OSError:
            return 0.0
        total = 0.0
        for line in text.splitlines():
            metric = line.split("{", 1)[0].split(" ", 1)[0]
            if not line.startswith("#") and metric.endswith(name):
                total += float(line.rsplit(" ", 1)[1])
        return total

    # -- the app

    def serve(self, *args: str, timeout_s: float = 300.0) -> str:
        """One ``serve`` CLI call against this cluster's dashboard (``serve deploy``, ``serve status``...)."""
        return self._cli("serve", *args, timeout_s=timeout_s)

    def _serve_status(self, app: str) -> dict:
        import yaml

        return yaml.safe_load(self.serve("status"))["applications"][app]

    def app_status(self, app: str = "tcrag") -> str:
        """The application's status as ``serve status`` reports it (RUNNING, DEPLOYING...)."""
        return self._serve_status(app)["status"]

    def deployment_statuses(self, app: str = "tcrag") -> dict[str, str]:
        """Deployment -> status (HEALTHY once all its target replicas run) as ``serve status`` reports it."""
        return {name: d["status"] for name, d in self._serve_status(app)["deployments"].items()}

    def _cli(self, tool: str, *args: str, timeout_s: float) -> str:
        """``ray`` or ``serve`` against this cluster's dashboard, with the cluster's token; stdout."""
        out = subprocess.run([str(_BIN / tool), *args, "--address", self.dashboard_url], env=self.env,
                             capture_output=True, text=True, timeout=timeout_s)
        if out.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({out.returncode}): {out.stderr[-2000:]}")
        return out.stdout
