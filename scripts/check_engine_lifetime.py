"""Check with a real vLLM engine that its processes die when the process that owns it is SIGKILLed.

    .venv/bin/python -m scripts.check_engine_lifetime [--mp-method spawn|fork] [--kv-mib 256] [--timeout-s 30]

A child process (standing in for a Serve replica) starts one ``llm.VLLMEngine`` on the prepared model with
a small KV cache and reports its descendants (``VLLM::EngineCore`` and its workers). The check SIGKILLs
the child alone, as Ray's OOM killer or a crash would, and waits for every one of those descendants to
be gone. Exit 0: none left (prints how long it took); 1: some survived (they are killed before exiting);
0 with "skipped" when less than ``--min-free-gb`` of memory is available. One engine at a time.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys
import time

import psutil

from llm.model_files import resolve_model_path

__all__ = ["main"]


def _replica(model: str, kv_bytes: int, mp_method: str, ready: multiprocessing.Queue) -> None:
    # vLLM spawns its engine inside a Ray actor; outside one it forks unless told otherwise.
    os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = mp_method
    from llm import EngineConfig, VLLMEngine

    VLLMEngine(EngineConfig(model=model, max_model_len=1024, kv_cache_memory_bytes=kv_bytes, max_num_seqs=2))
    ready.put([p.pid for p in psutil.Process().children(recursive=True)])
    time.sleep(3600)


def _describe(pid: int) -> str:
    try:
        proc = psutil.Process(pid)
        return f"{pid} {' '.join(proc.cmdline())[:60] or proc.name()} ({proc.status()})"
    except psutil.NoSuchProcess:
        return f"{pid} (gone)"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.check_engine_lifetime", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mp-method", choices=["spawn", "fork"], default="spawn")
    parser.add_argument("--kv-mib", type=int, default=256)
    parser.add_argument("--timeout-s", type=float, default=30.0, help="how long the engine may outlive its owner")
    parser.add_argument("--start-timeout-s", type=float, default=600.0)
    parser.add_argument("--min-free-gb", type=float, default=6.0)
    args = parser.parse_args(argv)

    free_gb = psutil.virtual_memory().available / (1 << 30)
    if free_gb < args.min_free_gb:
        print(f"skipped: {free_gb:.1f} GB available, below {args.min_free_gb} GB")
        return 0
    model = resolve_model_path(None)
    ready: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()
    owner = multiprocessing.get_context("spawn").Process(
        target=_replica, args=(model, args.kv_mib << 20, args.mp_method, ready), name="replica-stand-in"
    )
    started = time.monotonic()
    owner.start()
    engine_pids: list[int] = []
    try:
        engine_pids = ready.get(timeout=args.start_timeout_s)
        print(f"engine up in {time.monotonic() - started:.0f} s ({args.mp_method}); owner {owner.pid}, "
              f"descendants: {[_describe(p) for p in engine_pids]}")
        if not engine_pids:
            print("FAIL: the engine started no process of its own; nothing to check")
            return 1
        os.kill(owner.pid, signal.SIGKILL)
        owner.join()
        killed_at = time.monotonic()
        while time.monotonic() - killed_at < args.timeout_s:
            alive = [p for p in engine_pids if _alive(p)]
            if not alive:
                print(f"OK: every engine process was gone {time.monotonic() - killed_at:.1f} s after its owner was SIGKILLed")
                return 0
            time.sleep(0.2)
        print(f"FAIL: still running {args.timeout_s:.0f} s after the owner was SIGKILLed: "
              f"{[_describe(p) for p in engine_pids if _alive(p)]}")
        return 1
    finally:
        for pid in [owner.pid, *engine_pids]:
            if pid and _alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


if __name__ == "__main__":
    sys.exit(main())
