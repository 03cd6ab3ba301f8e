"""Runs the real app the way a user does (`serve run serve_config.yaml`) for the end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def http_json(method: str, url: str, body: object | None = None, timeout_s: float = 300.0,
              headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """One JSON request; returns (status, parsed body) for 2xx and error statuses alike."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            return err.code, json.loads(raw or b"{}")
        except json.JSONDecodeError:
            return err.code, {"raw": raw.decode(errors="replace")}


def config_copy(config: Path, target: Path, port: int, overrides: dict, serve_options: dict | None = None) -> Path:
    """The user's serve_config.yaml with the test's port, app-arg overrides (nested dicts merge) and top-level
    Serve options (e.g. ``proxy_location``)."""
    data = yaml.safe_load(config.read_text())
    data.update(serve_options or {})
    data.setdefault("http_options", {})["port"] = port
    args = data["applications"][0].setdefault("args", {})
    _merge(args, overrides)
    target.write_text(yaml.safe_dump(data, sort_keys=False))
    return target


def _merge(base: dict, extra: dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def kill_orphaned_engines() -> None:
    """A safety net: vLLM's engine processes end themselves within seconds of losing their replica
    (`llm.engine_lifetime`), but one re-parented to init would hold GBs, so the tests still reap any."""
    import psutil

    for proc in psutil.process_iter(["name", "ppid", "cmdline"]):
        try:
            title = " ".join(proc.info["cmdline"] or [proc.info["name"] or ""])
            if proc.info["ppid"] == 1 and title.startswith("VLLM::"):
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue


def wait_for_warmup(base_url: str, timeout_s: float = 900.0) -> dict:
    """Until every agent replica reports its warm-up finished (done or failed); the cache stats then."""
    deadline = time.monotonic() + timeout_s
    while True:
        status, stats = http_json("GET", f"{base_url}/v1/cache/stats", timeout_s=30)
        agents = stats.get("agents", {}).values() if status == 200 else []
        states = [(w or {}).get("state") for a in agents for w in a.get("warmup", [])]
        if states and all(s in ("done", "failed") for s in states):
            return stats
        if time.monotonic() > deadline:
            raise RuntimeError(f"warm-up not finished after {timeout_s:.0f} s: {states}")
        time.sleep(3)


class AppProcess:
    """`serve run` in a subprocess with its own environment; waits for /healthz and shuts down cleanly.

    The app gets a Ray cluster of its own (``RAY_ADDRESS=local``) and the HTTP port given, so a test run
    never attaches to, or redeploys, an app that a developer is running on the same machine.
    """

    def __init__(self, env: dict[str, str], log_path: Path, port: int = 8000,
                 config: Path = REPO / "serve_config.yaml", overrides: dict | None = None) -> None:
        self.env = {"RAY_ADDRESS": "local", **env}
        self.log_path = log_path
        self.base_url = f"http://127.0.0.1:{port}"
        self.config = config_copy(config, log_path.parent / "serve_config.yaml", port, overrides or {})
        self._proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        """Pid of the `serve run` process (the root of the app's process tree), None before start."""
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout_s: float = 900.0) -> float:
        """Start the app and return how long it took until /healthz answered 200."""
        serve = Path(sys.executable).with_name("serve")
        started = time.monotonic()
        self._log = self.log_path.open("w")
        self._proc = subprocess.Popen(
            [str(serve), "run", str(self.config)], cwd=REPO, env={**os.environ, **self.env},
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        last_report = started
        while time.monotonic() - started < timeout_s:
            if self._proc.poll() is not None:
                raise RuntimeError(f"serve run exited with {self._proc.returncode}; see {self.log_path}")
            try:
                status, _ = http_json("GET", f"{self.base_url}/healthz", timeout_s=5)
                if status == 200:
                    return time.monotonic() - started
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() - last_report > 30:
                last_report = time.monotonic()
                print(f"[e2e] waiting for the app ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
            time.sleep(2)
        self.stop()
        raise RuntimeError(f"app not healthy after {timeout_s:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            # SIGINT is what Ctrl-C sends: `serve run` then shuts down Serve and the Ray it started.
            os.killpg(self._proc.pid, signal.SIGINT)
            try:
                self._proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
        self._proc = None
        self._log.close()
        kill_orphaned_engines()
