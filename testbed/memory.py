"""Memory of a whole process tree over time: `serve run` and everything under it (Ray's GCS, raylet and
workers, every replica, vLLM's engine processes), as a user's machine sees the app."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

__all__ = ["TreeMemory", "TreeMemorySampler", "sample_tree"]


@dataclass(frozen=True, slots=True)
class TreeMemory:
    """One sample. ``rss_bytes`` sums each process's resident set, so pages shared between processes
    (libraries, Ray's shared-memory object store) count once per process: an upper bound. ``pss_bytes``
    splits shared pages between their processes (a closer figure of what the tree costs), when the
    processes' memory maps are readable; else 0. ``system_used_bytes`` is the machine's used memory."""

    at_s: float
    processes: int
    rss_bytes: int
    pss_bytes: int
    system_used_bytes: int
    top: tuple[tuple[str, int], ...] = field(default=())  # the largest processes: (name[pid], rss_bytes)


def _title(proc: psutil.Process) -> str:
    try:
        cmdline = proc.cmdline()
        title = cmdline[0] if len(cmdline) == 1 else " ".join(cmdline[:2])  # Ray and vLLM set titles
    except psutil.Error:
        title = ""
    return f"{(title or proc.name())[:60]}[{proc.pid}]"


def sample_tree(root_pid: int, with_pss: bool = True, top: int = 8) -> TreeMemory:
    """Memory of ``root_pid`` and all its descendants now (processes that exit meanwhile are skipped)."""
    try:
        root = psutil.Process(root_pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    rss_total = pss_total = 0
    sizes: list[tuple[str, int]] = []
    for proc in procs:
        try:
            if with_pss:
                info = proc.memory_full_info()
                pss_total += getattr(info, "pss", 0)
            else:
                info = proc.memory_info()
            rss_total += info.rss
            sizes.append((_title(proc), info.rss))
        except psutil.Error:  # gone, or a zombie, or its maps are not ours to read
            continue
    sizes.sort(key=lambda item: item[1], reverse=True)
    return TreeMemory(time.time(), len(sizes), rss_total, pss_total, psutil.virtual_memory().used, tuple(sizes[:top]))


class TreeMemorySampler:
    """Samples a process tree every ``interval_s`` in a thread and keeps the peak (by RSS sum).

    ``root_pid`` is a callable so that sampling can start before the process exists (e.g. while
    `AppProcess.start` is still launching it); samples are taken once it returns a pid.
    """

    def __init__(self, root_pid: Callable[[], int | None], interval_s: float = 1.0) -> None:
        self._root_pid = root_pid
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="tree-memory", daemon=True)
        self.peak: TreeMemory | None = None
        self.last: TreeMemory | None = None
        self.samples = 0

    def __enter__(self) -> TreeMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            pid = self._root_pid()
            if pid is not None:
                self.take(pid)
            self._stop.wait(self._interval_s)

    def take(self, pid: int) -> TreeMemory:
        sample = sample_tree(pid)
        with self._lock:
            self.samples += 1
            self.last = sample
            if self.peak is None or sample.rss_bytes > self.peak.rss_bytes:
                self.peak = sample
        return sample

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
