"""Embedding throughput: the embedder's settings side by side, in one process, on the real chunks.

    .venv/bin/python -m benchmarks.embed_throughput [--repeats 2] [--limit 192] [--slice 32] [--out FILE]

The sample collections in `data/` are chunked as the app chunks them (`RetrievalConfig`'s chunker with the
served model's tokenizer when it is prepared, ~384-token chunks) and embedded by every candidate setting:
the replica's setting before this benchmark (`current`: Ray sets OMP_NUM_THREADS=1 in a replica with
num_cpus < 1, so torch ran one thread, batches of 64, float32), then torch threads matched to the cores,
batch sizes, word pieces per text, batches in arrival order instead of sorted by length, and bf16
autocast. Candidates are interleaved slice by slice within each repeat (`run_benchmark`), so they share
the machine's load; the shared 2-core machine makes absolute chunks/s noisy, which is why the report is
each candidate's ratio to `current` *in the same repeat*.

Each candidate's vectors are compared with `current`'s (cosine per chunk), and recall@5 on `data/eval` is
computed by `retrieval.eval_recall.evaluate` on a store of every chunk embedded with the candidate's
precision and length (once per such family: threads, batch size and order only reorder sums). The
winner is the fastest candidate (median ratio over repeats) whose every vector is within cosine 0.999
of `current` and whose recall@5 equals `current`'s in every collection; `EmbedderConfig`'s defaults
(serve_config.yaml `retrieval.embedder`) are set to it. ONNX Runtime is measured only when `onnxruntime`
and `optimum` are installed (they are not project dependencies); otherwise the report says so.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.config import EmbedderConfig, RetrievalConfig
from retrieval.embedder import Embedder, SentenceTransformerEmbedder, available_cores, cpu_has_native_bf16
from retrieval.eval_recall import evaluate
from retrieval.samples import SAMPLE_COLLECTIONS, load_sample_collections, read_folder
from retrieval.store import CollectionStore
from retrieval.tokens import make_token_counter
from settings.paths import repo_data_dir

__all__ = ["Candidate", "candidates", "main"]

COSINE_TOLERANCE = 0.999
RECALL_K = 5


@dataclass(frozen=True)
class Candidate:
    """One embedder setting. ``sorted_batches=False`` embeds each batch by itself in arrival order (what
    one `@serve.batch` call or a caller's own batching loop does), so padding follows the data."""

    name: str
    config: EmbedderConfig
    sorted_batches: bool = True
    note: str = ""

    @property
    def vector_family(self) -> tuple[str, int | None]:
        """Settings that change the arithmetic of a vector beyond summation order: precision and length.
        Threads, batch size and batch order only reorder float sums (cosine >= 0.99999 to each other)."""
        return (self.config.precision, self.config.max_seq_length)

    def settings(self) -> dict[str, Any]:
        return {
            "num_threads": self.config.resolved_num_threads(),
            "batch_size": self.config.batch_size,
            "max_seq_length": self.config.max_seq_length,
            "precision": self.config.precision,
            "sorted_batches": self.sorted_batches,
        }


def candidates(cores: int) -> list[Candidate]:
    """`current` first (the baseline), then one change at a time, then combinations."""
    c = cores
    return [
        Candidate("current", EmbedderConfig(num_threads=1, batch_size=64, precision="float32"),
                  note="the replica before: OMP_NUM_THREADS=1 from Ray, batch 64, float32"),
        Candidate(f"threads{c}_b64", EmbedderConfig(num_threads=c, batch_size=64, precision="float32")),
        Candidate(f"threads{c}_b16", EmbedderConfig(num_threads=c, batch_size=16, precision="float32")),
        Candidate(f"threads{c}_b16_unsorted", EmbedderConfig(num_threads=c, batch_size=16, precision="float32"),
                  sorted_batches=False, note="each batch of 16 by itself, in data order"),
        Candidate(f"threads{c}_b16_seq128", EmbedderConfig(num_threads=c, batch_size=16, max_seq_length=128,
                                                           precision="float32"),
                  note="half the model's limit: vectors change"),
        Candidate(f"threads{c}_b16_seq512", EmbedderConfig(num_threads=c, batch_size=16, max_seq_length=512,
                                                           precision="float32"),
                  note="whole ~384-token chunks, past the length the model was trained at: vectors change"),
        Candidate("threads1_b16_bf16", EmbedderConfig(num_threads=1, batch_size=16, precision="bfloat16"),
                  note="bf16 autocast on one core"),
        Candidate(f"threads{c}_b32_bf16", EmbedderConfig(num_threads=c, batch_size=32, precision="bfloat16")),
        Candidate(f"threads{c}_b16_bf16", EmbedderConfig(num_threads=c, batch_size=16, precision="bfloat16")),
    ]


def spread(texts: list[str], limit: int | None) -> list[str]:
    """``limit`` texts evenly spaced over ``texts`` (every collection represented), or all of them."""
    if not limit or limit >= len(texts):
        return texts
    step = len(texts) / limit
    return [texts[int(i * step)] for i in range(limit)]


def load_chunks(data_dir: Path, tokenizer: str | None) -> list[str]:
    """Chunk texts of the sample collections, as `CollectionStore.prepare_upsert` makes them."""
    chunker = RetrievalConfig().chunker(make_token_counter(tokenizer))
    texts: list[str] = []
    for name in SAMPLE_COLLECTIONS:
        for doc in read_folder(data_dir / name):
            texts.extend(t for t in chunker(doc.text) if t.strip())
    return texts


class _Run:
    """A loaded candidate: sets its torch thread count before every call (the count is per process)."""

    def __init__(self, candidate: Candidate) -> None:
        self.candidate = candidate
        self.embedder = candidate.config.create()
        self.dim = self.embedder.dim

    def embed(self, texts: list[str]) -> np.ndarray:
        import torch

        torch.set_num_threads(self.candidate.config.resolved_num_threads())
        if self.candidate.sorted_batches:
            return self.embedder.embed(texts)
        size = self.candidate.config.batch_size
        return np.concatenate([self.embedder.embed(texts[i : i + size]) for i in range(0, len(texts), size)])


class _QueryEmbedder(Embedder):
    def __init__(self, run: _Run) -> None:
        self._run = run
        self.dim = run.dim

    def embed(self, texts):
        return self._run.embed(list(texts))


def recall_at_k(run: _Run, data_dir: Path, tokenizer: str | None, vectors: dict[str, np.ndarray]) -> dict[str, float]:
    """recall@k per collection with `retrieval.eval_recall.evaluate`, chunks carrying this run's vectors."""
    chunker = RetrievalConfig().chunker(make_token_counter(tokenizer))

    def lookup(texts: list[str]) -> np.ndarray:
        missing = [t for t in texts if t not in vectors]
        if missing:  # texts the throughput pass did not embed (--limit)
            for text, vec in zip(missing, run.embed(missing)):
                vectors[text] = vec
        return np.stack([vectors[t] for t in texts])

    with tempfile.TemporaryDirectory(prefix="tcrag-embed-bench-") as tmp:
        store = CollectionStore(Path(tmp) / "bench.sqlite3")
        try:
            load_sample_collections(store, data_dir, chunker, lookup)
            results = evaluate(store, _QueryEmbedder(run), data_dir / "eval", RECALL_K)
        finally:
            store.close()
    return {r.collection: round(r.recall, 4) for r in results}


def onnx_status() -> str | None:
    """None when an ONNX backend could be measured; else why not."""
    missing = [m for m in ("onnxruntime", "optimum") if importlib.util.find_spec(m) is None]
    if missing:
        return (f"not measured: {', '.join(missing)} not installed here (not project dependencies; on PyPI as "
                "onnxruntime and optimum-onnx)")
    return "not measured: installed, but this benchmark has no ONNX candidate yet"


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "cores_available": available_cores(),
        "native_bf16": cpu_has_native_bf16(),
        "torch": _version("torch"),
        "sentence_transformers": _version("sentence-transformers"),
        "python": platform.python_version(),
    }


def run_benchmark(texts: list[str], cands: list[Candidate], repeats: int, slice_size: int, log=print) -> dict[str, Any]:
    """Throughput of every candidate in each repeat, interleaved slice by slice.

    Each repeat walks the texts in slices of ``slice_size``; every candidate embeds a slice before the
    next slice starts (in an order rotated per slice), so load from other processes on the shared
    machine falls on all candidates alike. Per slice, each candidate's rate is divided by `current`'s on
    the same slice; a repeat's ratio is the median over its slices (a stall of the machine during one
    slice moves one sample, not the result), and its rate the median slice rate. Vectors: first repeat."""
    runs = {c.name: _Run(c) for c in cands}
    for run in runs.values():  # warm-up: first calls allocate and pick kernels
        run.embed(texts[:8])
    slices = [texts[i : i + slice_size] for i in range(0, len(texts), slice_size)]
    names = list(runs)
    base = names[0]
    per_repeat: list[dict[str, Any]] = []
    vectors: dict[str, np.ndarray] = {}
    for rep in range(repeats):
        slice_rates: dict[str, list[float]] = {name: [] for name in names}
        parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
        load_before = os.getloadavg()[0]
        for i, part in enumerate(slices):
            for name in names[i % len(names):] + names[: i % len(names)]:
                started = time.perf_counter()
                out = runs[name].embed(part)
                slice_rates[name].append(len(part) / (time.perf_counter() - started))
                parts[name].append(out)
        rates = {name: statistics.median(r) for name, r in slice_rates.items()}
        ratios = {name: statistics.median(a / b for a, b in zip(slice_rates[name], slice_rates[base])) for name in names}
        for name in names:
            vectors.setdefault(name, np.concatenate(parts[name]))
            log(f"[embed] repeat {rep + 1}/{repeats} {name:<26} {rates[name]:6.1f} chunks/s "
                f"({ratios[name]:.2f}x current, median of {len(slices)} slices)")
        per_repeat.append({
            "load_avg_1m_before": round(load_before, 2), "load_avg_1m_after": round(os.getloadavg()[0], 2),
            "chunks_per_s": {k: round(v, 2) for k, v in rates.items()},
            "ratio_vs_current": {k: round(v, 3) for k, v in ratios.items()},
            "slice_chunks_per_s": {k: [round(x, 2) for x in v] for k, v in slice_rates.items()},
        })
    return {"runs": runs, "per_repeat": per_repeat, "vectors": vectors}


def summarize(cands: list[Candidate], bench: dict[str, Any], recalls: dict[str, dict[str, float]]) -> dict[str, Any]:
    base = cands[0].name
    ref = bench["vectors"][base]
    out: dict[str, Any] = {}
    for c in cands:
        rates = [r["chunks_per_s"][c.name] for r in bench["per_repeat"]]
        ratios = [r["ratio_vs_current"][c.name] for r in bench["per_repeat"]]
        cos = (bench["vectors"][c.name] * ref).sum(axis=1)
        recall = recalls.get(c.name)
        out[c.name] = {
            "settings": c.settings(),
            "note": c.note,
            "chunks_per_s": rates,
            "ratio_vs_current": [round(r, 3) for r in ratios],
            "ratio_vs_current_median": round(statistics.median(ratios), 3),
            "cosine_vs_current_min": round(float(cos.min()), 6),
            "cosine_vs_current_mean": round(float(cos.mean()), 6),
            "within_tolerance": bool(cos.min() >= COSINE_TOLERANCE),
            f"recall@{RECALL_K}": recall,
            "recall_unchanged": recall == recalls.get(base),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.embed_throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=repo_data_dir())
    parser.add_argument("--tokenizer", default=None, help="served model folder (default: $TCRAG_MODEL or the prepared one)")
    parser.add_argument("--repeats", type=int, default=2, help="passes over every candidate (ratios per pass)")
    parser.add_argument("--limit", type=int, default=192,
                        help="chunks per pass, evenly spaced over all (0: all); recall always uses every chunk")
    parser.add_argument("--slice", type=int, default=32, help="chunks per interleaved slice (see run_benchmark)")
    parser.add_argument("--only", nargs="*", default=None, help="candidate names to run (current always runs)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/embed_throughput.json"))
    args = parser.parse_args(argv)

    all_texts = load_chunks(args.data_dir, args.tokenizer)
    texts = spread(all_texts, args.limit)
    cands = candidates(available_cores())
    if args.only:
        cands = [c for c in cands if c.name == "current" or c.name in args.only]
    print(f"[embed] {len(texts)} of {len(all_texts)} chunks, {len(cands)} candidates, {args.repeats} repeats, "
          f"{available_cores()} cores", file=sys.stderr, flush=True)
    started = time.time()
    bench = run_benchmark(texts, cands, args.repeats, args.slice, log=lambda line: print(line, file=sys.stderr, flush=True))
    # Recall once per vector family, with its fastest member (the others differ in float summation order;
    # their cosine to it is in the report).
    recalls: dict[str, dict[str, float]] = {}
    recall_by: dict[str, str] = {}
    families: dict[tuple, list[Candidate]] = {}
    for c in cands:
        families.setdefault(c.vector_family, []).append(c)
    for family in families.values():
        fastest = max(family, key=lambda c: statistics.median(r["chunks_per_s"][c.name] for r in bench["per_repeat"]))
        value = recall_at_k(bench["runs"][fastest.name], args.data_dir, args.tokenizer,
                            dict(zip(texts, bench["vectors"][fastest.name])))
        print(f"[embed] recall@{RECALL_K} {[c.name for c in family]} (measured with {fastest.name}): {value}",
              file=sys.stderr, flush=True)
        for c in family:
            recalls[c.name], recall_by[c.name] = value, fastest.name
    summary = summarize(cands, bench, recalls)
    for name, entry in summary.items():
        entry["recall_measured_with"] = recall_by[name]
    eligible = [n for n, s in summary.items() if s["within_tolerance"] and s["recall_unchanged"]]
    winner = max(eligible, key=lambda n: summary[n]["ratio_vs_current_median"])
    shipped = EmbedderConfig()
    tok_counter = make_token_counter(args.tokenizer)
    lengths = [tok_counter(t) for t in texts]
    result = {
        "command": "python -m benchmarks.embed_throughput " + " ".join(argv if argv is not None else sys.argv[1:]),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1),
        "machine": machine_info(),
        "chunks": len(texts),
        "chunks_total": len(all_texts),
        "chunk_tokens_served_model": {"p50": float(np.percentile(lengths, 50)), "max": int(max(lengths))},
        "repeats": bench["per_repeat"],
        "candidates": summary,
        "winner": winner,
        "winner_rule": f"fastest median ratio among candidates with every cosine >= {COSINE_TOLERANCE} vs current "
                       f"and recall@{RECALL_K} equal to current's in every collection",
        "shipped_default": {"config": shipped.model_dump(), "resolved": Candidate("default", shipped).settings()},
        "onnx": onnx_status(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"{'candidate':<26} {'chunks/s per repeat':<22} {'x current':<14} {'cos min':>8}  recall ok")
    for name, s in summary.items():
        rates = ", ".join(f"{r:.1f}" for r in s["chunks_per_s"])
        ratios = ", ".join(f"{r:.2f}" for r in s["ratio_vs_current"])
        print(f"{name:<26} {rates:<22} {ratios:<14} {s['cosine_vs_current_min']:>8.5f}  {s['recall_unchanged']}")
    print(f"winner: {winner} ({summary[winner]['ratio_vs_current_median']:.2f}x current, median of repeats); "
          f"ONNX: {result['onnx']}; written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
