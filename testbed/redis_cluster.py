"""A throwaway Redis Cluster the tests and benchmarks own: 3 masters + 3 replicas on free ports, in a temp
dir, with a low ``cluster-node-timeout`` so a killed master fails over in about two seconds.

The cluster is built with redis-py (CLUSTER ADDSLOTS / MEET / REPLICATE), not ``redis-cli --cluster
create``, so it needs nothing beyond ``redis-server`` (CI machines have it; redis-cli may be absent) and
works with Redis 6 (no ADDSLOTSRANGE). The machine's own Redis on 6379 is left alone.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from testbed.redis_server import free_port

__all__ = ["RedisClusterServer", "slot_ranges", "parse_cluster_nodes", "ClusterNodeInfo"]

SLOTS = 16384


def slot_ranges(masters: int) -> list[tuple[int, int]]:
    """Contiguous, inclusive slot ranges covering 0..16383, one per master, as even as possible."""
    if masters < 1:
        raise ValueError("at least one master")
    bounds = [SLOTS * i // masters for i in range(masters + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(masters)]


@dataclass(frozen=True)
class ClusterNodeInfo:
    """One line of CLUSTER NODES."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None  # for a replica, its master's id
    connected: bool
    slots: tuple[tuple[int, int], ...] = field(default=())

    @property
    def is_master(self) -> bool:
        return "master" in self.flags and "fail" not in self.flags and "fail?" not in self.flags


def parse_cluster_nodes(text: str) -> list[ClusterNodeInfo]:
    """Parse CLUSTER NODES output (``id ip:port@cport flags master ping pong epoch link slots...``)."""
    out = []
    for line in text.strip().splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        addr = parts[1].split("@")[0]
        port = int(addr.rsplit(":", 1)[1]) if ":" in addr and addr.rsplit(":", 1)[1] else 0
        slots = []
        for s in parts[8:]:
            if s.startswith("["):  # a slot being migrated/imported
                continue
            lo, _, hi = s.partition("-")
            slots.append((int(lo), int(hi or lo)))
        out.append(ClusterNodeInfo(
            node_id=parts[0],
            port=port,
            flags=frozenset(parts[2].split(",")),
            master_id=None if parts[3] == "-" else parts[3],
            connected=parts[7] == "connected",
            slots=tuple(slots),
        ))
    return out


def _progress(message: str) -> None:
    print(f"[redis-cluster] {message}", flush=True)


class RedisClusterServer:
    """``masters`` masters, each with ``replicas_per_master`` replicas, on free ports of 127.0.0.1."""

    def __init__(self, masters: int = 3, replicas_per_master: int = 1, node_timeout_ms: int = 1000,
                 verbose: bool = True) -> None:
        self.masters = masters
        self.replicas_per_master = replicas_per_master
        self.node_timeout_ms = node_timeout_ms
        self.verbose = verbose
        self.ports: list[int] = []
        self._procs: dict[int, subprocess.Popen] = {}
        self._dir: Path | None = None

    # -- addresses ------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """``redis+cluster://`` URL naming every node as a startup node (any live one is enough)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def _say(self, message: str) -> None:
        if self.verbose:
            _progress(message)

    def _client(self, port: int):
        import redis

        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=1,
                           decode_responses=True)

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self, timeout_s: float = 30.0) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        t0 = time.monotonic()
        self._dir = Path(tempfile.mkdtemp(prefix="tcrag-rcluster-"))
        total = self.masters * (1 + self.replicas_per_master)
        self.ports = []
        while len(self.ports) < total:
            port = free_port()
            # The cluster bus listens on port + 10000: both must be free.
            if port + 10000 < 65536 and port not in self.ports and _port_free(port + 10000):
                self.ports.append(port)
        self._say(f"starting {total} redis-server processes in {self._dir}")
        for port in self.ports:
            self._spawn(port)
        deadline = time.monotonic() + timeout_s
        for port in self.ports:
            self._wait_ping(port, deadline)
        try:
            self._build(deadline)
        except Exception:
            self.stop()
            raise
        self._say(f"cluster ok on ports {self.ports} in {time.monotonic() - t0:.1f}s")

    def _spawn(self, port: int) -> None:
        assert self._dir is not None
        self._procs[port] = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self._dir), "--cluster-enabled", "yes",
             "--cluster-config-file", f"nodes-{port}.conf",
             "--cluster-node-timeout", str(self.node_timeout_ms),
             # A replica with a stale link may still be promoted (tests kill masters on purpose).
             "--cluster-replica-validity-factor", "0",
             "--protected-mode", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _wait_ping(self, port: int, deadline: float) -> None:
        import redis

        while time.monotonic() < deadline:
            try:
                with self._client(port) as c:
                    if c.ping():
                        return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {port}")

    def _build(self, deadline: float) -> None:
        masters = self.ports[: self.masters]
        replicas = self.ports[self.masters:]
        ids = {}
        for port, (lo, hi) in zip(masters, slot_ranges(self.masters)):
            with self._client(port) as c:
                c.execute_command("CLUSTER", "ADDSLOTS", *range(lo, hi + 1))
                ids[port] = c.execute_command("CLUSTER", "MYID")
        first = self.ports[0]
        with self._client(first) as c:
            for port in self.ports[1:]:
                c.execute_command("CLUSTER", "MEET", "127.0.0.1", port)
        self._say("waiting for the nodes to meet")
        self._wait(lambda: all(len([n for n in self.nodes(p) if "handshake" not in n.flags]) == len(self.ports)
                               for p in self.ports), deadline, "nodes to meet")
        for i, port in enumerate(replicas):
            master = masters[i % self.masters]
            with self._client(port) as c:
                c.execute_command("CLUSTER", "REPLICATE", ids[master])
        self._say("waiting for cluster_state:ok and the replicas' links")
        self.wait_ok(deadline - time.monotonic())
        self._wait(lambda: all(self._link_up(p) for p in replicas), deadline, "replica links")

    def _link_up(self, port: int) -> bool:
        with self._client(port) as c:
            info = c.info("replication")
        return info.get("role") == "slave" and info.get("master_link_status") == "up"

    @staticmethod
    def _wait(predicate, deadline: float, what: str) -> None:
        import redis

        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except redis.RedisError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"redis cluster: timed out waiting for {what}")

    def stop(self) -> None:
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs = {}
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    # -- state ----------------------------------------------------------------------------------------
    def running(self, port: int) -> bool:
        proc = self._procs.get(port)
        return proc is not None and proc.poll() is None

    def live_ports(self) -> list[int]:
        return [p for p in self.ports if self.running(p)]

    def nodes(self, port: int | None = None) -> list[ClusterNodeInfo]:
        """CLUSTER NODES as seen by ``port`` (default: the first live node)."""
        port = port if port is not None else self.live_ports()[0]
        with self._client(port) as c:
            return parse_cluster_nodes(c.execute_command("CLUSTER", "NODES"))

    def master_ports(self) -> list[int]:
        """Ports of the live masters that serve slots, as the first live node sees them."""
        return sorted(n.port for n in self.nodes() if n.is_master and n.slots and self.running(n.port))

    def cluster_ok(self) -> bool:
        """``cluster_state:ok`` on every live node."""
        for port in self.live_ports():
            with self._client(port) as c:
                if "cluster_state:ok" not in c.execute_command("CLUSTER", "INFO"):
                    return False
        return True

    def wait_ok(self, timeout_s: float = 20.0) -> float:
        """Wait for ``cluster_state:ok`` on every live node, with every slot on a live master; seconds."""
        t0 = time.monotonic()
        want = set(range(self.masters))

        def healthy() -> bool:
            if not self.cluster_ok():
                return False
            covered = sum(hi - lo + 1 for n in self.nodes() if n.is_master and self.running(n.port)
                          for lo, hi in n.slots)
            return covered == SLOTS and len(want) == len(self.master_ports())

        self._wait(healthy, t0 + timeout_s, "cluster_state:ok")
        return time.monotonic() - t0

    # -- faults ---------------------------------------------------------------------------------------
    def kill(self, port: int) -> None:
        """SIGKILL one node (no goodbye to the cluster: it must be detected as failed)."""
        proc = self._procs[port]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self._say(f"killed node {port}")

    def kill_master(self, index: int = 0) -> int:
        """SIGKILL the ``index``-th live master that has a connected replica (so it can fail over), by
        port order; returns its port."""
        nodes = self.nodes()
        with_replica = {n.master_id for n in nodes if n.master_id and n.connected and self.running(n.port)}
        ports = sorted(n.port for n in nodes
                       if n.is_master and n.slots and n.node_id in with_replica and self.running(n.port))
        port = ports[index]
        self.kill(port)
        return port

    def restart(self, port: int, timeout_s: float = 20.0) -> float:
        """Start a killed node again (same port and nodes file): it rejoins as a replica of the master that
        took its slots. Waits for its replication link and cluster_state:ok; returns seconds."""
        if self.running(port):
            raise RuntimeError(f"node {port} is running")
        t0 = time.monotonic()
        self._spawn(port)
        deadline = t0 + timeout_s
        self._wait_ping(port, deadline)
        self._wait(lambda: self._link_up(port), deadline, f"node {port} to rejoin as a replica")
        self.wait_ok(deadline - time.monotonic())
        self._say(f"node {port} rejoined as a replica in {time.monotonic() - t0:.1f}s")
        return time.monotonic() - t0


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
