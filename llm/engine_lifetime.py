"""Engine processes die with their replica.

vLLM's V1 engine core runs in a child process of the replica (``VLLM::EngineCore``, started with
``multiprocessing``; spawned inside a Ray actor). When the replica process is killed hard (SIGKILL: Ray's
OOM killer, a crash, a fault test), the engine core is re-parented to init and keeps running with its
weights and KV cache, GBs that nothing will ever free. vLLM's own worker processes watch their parent
through a pipe; the engine core does not.

``install_engine_core_guard`` makes vLLM start its engine core through ``run_engine_core_dying_with_parent``
(a module-level function, so ``spawn`` pickles it by name and the child imports this module), which starts
``die_with_parent`` in the child before handing over to vLLM's own entry point. The guard is a daemon thread
that polls ``os.getppid()``: once the parent it was born under is gone, it asks vLLM to shut down
(SIGTERM, vLLM's own handler) and SIGKILLs what is left after a grace period, descendants first.

Why polling and not ``PR_SET_PDEATHSIG``: the death signal fires when the *thread* that started the child
exits, and the replica starts the engine from whatever thread Serve runs its constructor on; polling the
parent *process* has no such trap, works on any POSIX system and costs one syscall per second.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

__all__ = [
    "DEFAULT_GRACE_S",
    "DEFAULT_POLL_INTERVAL_S",
    "die_with_parent",
    "install_engine_core_guard",
    "run_engine_core_dying_with_parent",
]

logger = logging.getLogger(__name__)

DEFAULT_POLL_INTERVAL_S = 1.0
"""How often the guard looks at its parent: an orphaned engine lives at most about this long plus the grace."""

DEFAULT_GRACE_S = 5.0
"""Time vLLM gets to shut down cleanly after SIGTERM before the guard SIGKILLs the engine and its children."""

_ORIGINAL_ATTR = "_tcrag_unguarded_run_engine_core"


def _kill_descendants_and_self() -> None:
    try:
        import psutil

        children = psutil.Process().children(recursive=True)
    except Exception:  # psutil missing or /proc unreadable: killing ourselves is still the point
        children = []
    for child in children:
        try:
            child.kill()
        except Exception:
            pass
    os.kill(os.getpid(), signal.SIGKILL)


def die_with_parent(
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
    grace_s: float = DEFAULT_GRACE_S,
    *,
    parent_pid: int | None = None,
) -> threading.Thread:
    """Start a daemon thread that ends this process once its parent process is gone.

    The parent is ``parent_pid`` (default: the current parent). When ``os.getppid()`` no longer returns it
    (the process was re-parented to init or to a subreaper), the thread sends this process SIGTERM, waits
    ``grace_s`` and SIGKILLs its descendants and itself.
    """
    watched = os.getppid() if parent_pid is None else parent_pid

    def watch() -> None:
        while os.getppid() == watched:
            time.sleep(poll_interval_s)
        logger.error("parent process %d is gone; ending engine process %d", watched, os.getpid())
        os.kill(os.getpid(), signal.SIGTERM)  # vLLM's handler shuts the engine down cleanly ...
        time.sleep(grace_s)
        _kill_descendants_and_self()  # ... and whatever is still there after the grace goes now

    thread = threading.Thread(target=watch, name="die-with-parent", daemon=True)
    thread.start()
    return thread


def run_engine_core_dying_with_parent(*args: Any, **kwargs: Any) -> Any:
    """vLLM's engine-core entry point, with ``die_with_parent`` running first (in the engine process)."""
    die_with_parent()
    from vllm.v1.engine.core import EngineCoreProc

    # Started by `fork`, the child has the guarded class: call what the guard replaced. Started by `spawn`
    # (always inside a Ray actor), the child imported vLLM afresh and the class is vLLM's own.
    original = getattr(EngineCoreProc, _ORIGINAL_ATTR, None) or EngineCoreProc.run_engine_core
    return original(*args, **kwargs)


def install_engine_core_guard(engine_core_cls: Any = None) -> bool:
    """Make vLLM start every engine core through ``run_engine_core_dying_with_parent``. Idempotent.

    vLLM's ``CoreEngineProcManager`` takes ``EngineCoreProc.run_engine_core`` as the process target when it
    starts the engines, so replacing that static method in this (the replica's) process is enough.
    Returns False, and leaves vLLM alone, when its engine core has no such entry point (another vLLM
    version): engines then run as before, without the guard. ``engine_core_cls`` is for tests.
    """
    if engine_core_cls is None:
        try:
            from vllm.v1.engine.core import EngineCoreProc as engine_core_cls
        except ImportError:
            logger.warning("vLLM V1 engine core not found; engine processes will not die with the replica")
            return False
    current = getattr(engine_core_cls, "run_engine_core", None)
    if current is None:
        logger.warning("%s has no run_engine_core; engine processes will not die with the replica", engine_core_cls)
        return False
    if current is run_engine_core_dying_with_parent:
        return True
    setattr(engine_core_cls, _ORIGINAL_ATTR, staticmethod(current))
    engine_core_cls.run_engine_core = staticmethod(run_engine_core_dying_with_parent)
    return True
