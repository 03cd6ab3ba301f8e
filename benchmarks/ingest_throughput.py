"""Ingest chunks/s through the running app, per embedder setting: one large PUT as a job, on an idle app.

    python -m benchmarks.ingest_throughput [--settings previous,default] [--port 8012]
        [--out benchmarks/results/ingest_throughput.json]

For each setting the real app is started (``serve run``, ``retrieval.embedder`` overridden) on a fresh
store, left to finish its warm-up, and sent CPython's 79 help topics (``pydoc_data.topics``, 465 KB, the
set that once failed after 31 s) in one ``PUT /v1/collections/documentation/documents``; the job is
followed to ``done`` and chunks/s is its total over the time from the PUT to ``done``. ``previous`` is
the embedder as it ran before issue 16 (one torch thread, as Ray gives a replica with ``num_cpus`` < 1;
batches of 64; float32), ``default`` the shipped ``serve_config.yaml``. Settings run one after the other
on the same machine: compare the ratio, not the absolute rates.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from testbed.app_process import AppProcess, http_json, wait_for_warmup

__all__ = ["SETTINGS", "main"]

SETTINGS: dict[str, dict[str, Any]] = {
    "previous": {"num_threads": 1, "batch_size": 64, "precision": "float32"},
    "default": {},
}
DEFAULT_OUT = Path("benchmarks/results/ingest_throughput.json")


def help_topics() -> list[dict[str, Any]]:
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    return [{"id": f"pydoc-{name}", "text": topics[name], "metadata": {"source": "pydoc_data.topics"}}
            for name in sorted(topics)]


def run_one(name: str, embedder: dict[str, Any], port: int, workdir: Path) -> dict[str, Any]:
    home = workdir / name
    home.mkdir(parents=True, exist_ok=True)
    app = AppProcess(env={"TCRAG_DATA_DIR": str(home / "data")}, log_path=home / "serve.log", port=port,
                     overrides={"retrieval": {"embedder": embedder}} if embedder else {})
    print(f"[ingest-throughput] {name}: starting the app ({app.log_path})", file=sys.stderr, flush=True)
    try:
        app.start()
        wait_for_warmup(app.base_url, timeout_s=900.0)
        time.sleep(10)  # let the start-up work settle: the measurement is of an idle app
        docs = help_topics()
        started = time.monotonic()
        status, job = http_json("PUT", f"{app.base_url}/v1/collections/documentation/documents",
                                {"documents": docs}, timeout_s=600)
        if status not in (200, 202):
            raise RuntimeError(f"PUT answered {status}: {job}")
        while status == 202 or job.get("state") in ("queued", "running"):
            time.sleep(0.5)
            status, job = http_json("GET", f"{app.base_url}/v1/jobs/{job['job']}")
            if job.get("state") in ("done", "failed"):
                break
        elapsed = time.monotonic() - started
        if job.get("state") != "done":
            raise RuntimeError(f"job ended {job.get('state')}: {job.get('error')}")
        entry = {"setting": name, "embedder": embedder or "serve_config.yaml", "documents": len(docs),
                 "chunks": job["total"], "seconds": round(elapsed, 2), "chunks_per_s": round(job["total"] / elapsed, 2)}
        print(f"[ingest-throughput] {json.dumps(entry)}", file=sys.stderr, flush=True)
        return entry
    finally:
        app.stop()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ingest_throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", default="previous,default", help=f"comma-separated, of {', '.join(SETTINGS)}")
    p.add_argument("--port", type=int, default=8012)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    names = [n.strip() for n in args.settings.split(",") if n.strip()]
    if not names or any(n not in SETTINGS for n in names):
        p.error(f"--settings: choose from {', '.join(SETTINGS)}")
    workdir = Path(tempfile.mkdtemp(prefix="tcrag-ingest-"))
    runs = [run_one(n, SETTINGS[n], args.port, workdir) for n in names]
    from benchmarks.run import machine_info

    by_name = {r["setting"]: r for r in runs}
    ratio = (round(by_name["default"]["chunks_per_s"] / by_name["previous"]["chunks_per_s"], 2)
             if {"default", "previous"} <= set(by_name) else None)
    result = {"schema": "token-cached-rag/ingest-throughput/v1",
              "command": "python -m benchmarks.ingest_throughput " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": machine_info(""), "runs": runs, "default_vs_previous": ratio}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"[ingest-throughput] default vs previous: {ratio}x; wrote {args.out}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
