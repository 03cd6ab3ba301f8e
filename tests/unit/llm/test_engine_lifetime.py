"""Engine processes die with their replica: the parent-death guard on plain processes, and its install
into an engine-core class (a stand-in for vLLM's ``EngineCoreProc``; the real engine is checked by
``scripts/check_engine_dies_with_parent.py``)."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from llm import engine_lifetime
from llm.engine_lifetime import install_engine_core_guard, run_engine_core_dying_with_parent

REPO = Path(__file__).resolve().parents[3]

# The "engine": ignores SIGTERM (as a wedged engine would), has a child of its own, and runs the guard.
ENGINE = """
import signal, subprocess, sys, time
from llm.engine_lifetime import die_with_parent
signal.signal(signal.SIGTERM, signal.SIG_IGN)
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(grandchild.pid, flush=True)
die_with_parent(poll_interval_s=0.05, grace_s=0.5)
time.sleep(120)
"""

# The "replica": starts the engine, reports both pids, then waits to be killed.
REPLICA = """
import subprocess, sys, time
engine = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdout=subprocess.PIPE, text=True)
grandchild = engine.stdout.readline().strip()
print(engine.pid, grandchild, flush=True)
time.sleep(120)
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = [p for p in pids if not _gone(p)]
        if not alive:
            return []
        time.sleep(0.05)
    return [p for p in pids if not _gone(p)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="re-parenting on parent death as on Linux")
def test_engine_process_and_its_children_die_when_the_replica_is_sigkilled():
    replica = subprocess.Popen([sys.executable, "-c", REPLICA, ENGINE], cwd=REPO, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    engine_pid = grandchild_pid = None
    try:
        engine_pid, grandchild_pid = (int(x) for x in replica.stdout.readline().split())
        time.sleep(0.3)  # several polls with the parent alive: the guard must not fire
        assert not _gone(engine_pid), "the guard ended the engine while its replica was alive"
        replica.send_signal(signal.SIGKILL)
        replica.wait()
        # SIGTERM is ignored, so this needs the SIGKILL after the grace (0.05 s poll + 0.5 s grace).
        assert _wait_gone([engine_pid, grandchild_pid], timeout_s=10) == []
    finally:
        for pid in (engine_pid, grandchild_pid):
            if pid is not None and not _gone(pid):
                os.kill(pid, signal.SIGKILL)
        if replica.poll() is None:
            replica.kill()


class _FakeEngineCore:
    calls: list[tuple] = []

    @staticmethod
    def run_engine_core(*args, **kwargs):
        _FakeEngineCore.calls.append((args, kwargs))


def test_install_routes_the_engine_core_entry_point_through_the_guard():
    original = _FakeEngineCore.run_engine_core
    assert install_engine_core_guard(_FakeEngineCore) is True
    assert _FakeEngineCore.run_engine_core is run_engine_core_dying_with_parent
    assert getattr(_FakeEngineCore, engine_lifetime._ORIGINAL_ATTR) is original
    # Idempotent: a second replica in the same process does not wrap the wrapper.
    assert install_engine_core_guard(_FakeEngineCore) is True
    assert getattr(_FakeEngineCore, engine_lifetime._ORIGINAL_ATTR) is original
    # `spawn` pickles the process target by name: the child imports this module, not the patched class.
    assert pickle.loads(pickle.dumps(_FakeEngineCore.run_engine_core)) is run_engine_core_dying_with_parent
    assert b"llm.engine_lifetime" in pickle.dumps(_FakeEngineCore.run_engine_core)


def test_install_leaves_an_engine_without_the_entry_point_alone():
    class Other:
        pass

    assert install_engine_core_guard(Other) is False
    assert not hasattr(Other, "run_engine_core")
