"""The real app (Ray Serve + vLLM CPU + the embedded model), started once for all end-to-end tests."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from testbed.app_process import AppProcess
from testbed.redis_server import RedisServer, free_port


@pytest.fixture(scope="package")
def redis_server() -> RedisServer:
    """The app's L2 tier: a redis-server of the tests' own, so fault tests can stop and restart it."""
    server = RedisServer(free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="package")
def app(tmp_path_factory, redis_server: RedisServer) -> AppProcess:
    workdir = tmp_path_factory.mktemp("app")
    env = {"TCRAG_DATA_DIR": str(workdir / "data"), "REDIS_URL": redis_server.url, "RAY_DEDUP_LOGS": "0"}
    port = int(os.environ.get("TCRAG_E2E_PORT", "8000"))
    # TCRAG_E2E_OVERRIDES (JSON, merged into the app args) lets a developer run the suite beside a dev app,
    # e.g. with a smaller KV cache; CI runs serve_config.yaml as users do.
    overrides = json.loads(os.environ.get("TCRAG_E2E_OVERRIDES", "{}"))
    process = AppProcess(env=env, log_path=workdir / "serve.log", port=port, overrides=overrides)
    print(f"\n[e2e] starting the app (log: {process.log_path})", file=sys.stderr, flush=True)
    start_s = process.start()
    print(f"[e2e] app healthy after {start_s:.0f} s", file=sys.stderr, flush=True)
    yield process
    process.stop()
    if os.environ.get("CI"):
        # Keep the tail of the app's log in CI output, where nothing else survives the run.
        tail = Path(process.log_path).read_text(errors="replace").splitlines()[-40:]
        print("\n[e2e] last lines of serve.log:\n" + "\n".join(tail), file=sys.stderr)


@pytest.fixture(scope="package")
def base_url(app: AppProcess) -> str:
    return app.base_url
