"""Retrieval benchmark: ingest throughput with the real embedder, search latency at 10k/100k chunks.

    .venv/bin/python -m benchmarks.retrieval_bench [--data-dir data] [--sizes 10000 100000] [--out FILE]

- Ingest: every sample document in `data/` chunked with the served model's tokenizer (if prepared)
  and written through `CollectionStore.upsert_documents` with the real all-MiniLM-L6-v2 embedder;
  reports chunks/s end to end and for the embedding step alone.
- Search: SYNTHETIC random unit vectors (384-d) in a real store, so that the measured numbers cover
  the exact index scan and top-k, plus the SQLite snapshot load an index rebuild costs; queries are
  random unit vectors too. Query embedding latency with the real model is reported separately.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from retrieval.config import RetrievalConfig
from retrieval.embedder import SentenceTransformerEmbedder
from retrieval.index import ExactCosineIndex
from retrieval.models import Document, StoreLimits
from retrieval.samples import SAMPLE_COLLECTIONS, read_folder
from retrieval.store import CollectionStore
from retrieval.tokens import make_token_counter
from settings.paths import repo_data_dir

DIM = 384


def percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1000.0, q))


def bench_ingest(data_dir: Path, db_dir: Path, embedder: SentenceTransformerEmbedder) -> dict:
    chunker = RetrievalConfig().chunker(make_token_counter())  # the app's default chunk sizes
    docs: list[tuple[str, Document]] = []
    for name in SAMPLE_COLLECTIONS:
        if (data_dir / name).is_dir():
            docs.extend((name, d) for d in read_folder(data_dir / name))
    store = CollectionStore(db_dir / "ingest.sqlite3")
    texts = [t for _, d in docs for t in chunker(d.text)]
    start, cpu_start = time.perf_counter(), time.process_time()
    embedder.embed(texts)
    embed_s, embed_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    chunks = 0
    start = time.perf_counter()
    for name in SAMPLE_COLLECTIONS:
        store.create_collection(name)
        batch = [d for n, d in docs if n == name]
        for i in range(0, len(batch), 16):
            chunks += len(store.upsert_documents(name, batch[i : i + 16], chunker, embedder.embed).changed_chunks)
    total_s = time.perf_counter() - start
    store.close()
    return {
        "documents": len(docs),
        "chunks": chunks,
        "mean_chunk_chars": round(float(np.mean([len(t) for t in texts])), 1) if texts else 0,
        "embed_only_chunks_per_s": round(len(texts) / embed_s, 1) if embed_s else None,
        # CPU seconds are insensitive to other load on the machine: chunks per CPU-second per core.
        "embed_only_chunks_per_cpu_s": round(len(texts) / embed_cpu_s, 1) if embed_cpu_s else None,
        "end_to_end_chunks_per_s": round(chunks / total_s, 1) if total_s else None,
        "end_to_end_s": round(total_s, 2),
    }


def bench_search(n: int, db_dir: Path, queries: int, rng: np.random.Generator) -> dict:
    """Write n synthetic chunks (10 per document) to a store, load them, and time searches."""
    store = CollectionStore(db_dir / f"search-{n}.sqlite3", limits=StoreLimits(max_documents_per_call=1000))
    store.create_collection("bench")
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    cursor = 0

    def fake_embed(texts: list[str]) -> np.ndarray:  # synthetic vectors, in order
        nonlocal cursor
        out = vectors[cursor : cursor + len(texts)]
        cursor += len(texts)
        return out

    per_doc = 10
    docs = [
        Document(f"doc-{d}", "\n\n".join(f"chunk {d}-{j} text" for j in range(per_doc)), {"shard": d % 10})
        for d in range(n // per_doc)
    ]
    one_per_paragraph = lambda text: text.split("\n\n")  # noqa: E731 -- fixed chunking for the benchmark
    start = time.perf_counter()
    for i in range(0, len(docs), 1000):
        store.upsert_documents("bench", docs[i : i + 1000], one_per_paragraph, fake_embed)
    write_s = time.perf_counter() - start
    start = time.perf_counter()
    chunks, embeddings = store.load("bench")
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    index = ExactCosineIndex(chunks, embeddings)
    build_s = time.perf_counter() - start
    qs = rng.standard_normal((queries, DIM)).astype(np.float32)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    for q in qs[:10]:
        index.search(q, 5)  # warm up
    plain, filtered, plain_cpu = [], [], []
    for q in qs:
        t, c = time.perf_counter(), time.process_time()
        index.search(q, 5)
        plain.append(time.perf_counter() - t)
        plain_cpu.append(time.process_time() - c)
        t = time.perf_counter()
        index.search(q, 5, where={"shard": 3})
        filtered.append(time.perf_counter() - t)
    store.close()
    return {
        "chunks": len(chunks),
        "search_top5_p50_ms": round(percentile_ms(plain, 50), 3),
        "search_top5_p99_ms": round(percentile_ms(plain, 99), 3),
        "search_top5_cpu_mean_ms": round(float(np.mean(plain_cpu)) * 1000, 3),
        "search_top5_where_p50_ms": round(percentile_ms(filtered, 50), 3),
        "search_top5_where_p99_ms": round(percentile_ms(filtered, 99), 3),
        "store_write_synthetic_chunks_per_s": round(n / write_s, 1),
        "snapshot_load_s": round(load_s, 3),
        "index_build_s": round(build_s, 3),
    }


def bench_query_embedding(embedder: SentenceTransformerEmbedder, n: int = 50) -> dict:
    samples, cpu = [], []
    for i in range(n):
        t, c = time.perf_counter(), time.process_time()
        embedder.embed([f"how do I reset the password for account {i}"])
        samples.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return {
        "p50_ms": round(percentile_ms(samples, 50), 2),
        "p99_ms": round(percentile_ms(samples, 99), 2),
        "cpu_mean_ms": round(float(np.mean(cpu)) * 1000, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.retrieval_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=repo_data_dir(), help="default: the repo's data/")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--skip-ingest", action="store_true")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    results: dict = {
        "note": "search uses synthetic random unit vectors (384-d); ingest uses the real embedder",
        "machine": {"cpus": os.cpu_count(), "loadavg_1m_at_start": round(os.getloadavg()[0], 2)},
    }
    with tempfile.TemporaryDirectory(prefix="tcrag-bench-") as tmp:
        if not args.skip_ingest:
            embedder = SentenceTransformerEmbedder()
            results["ingest"] = bench_ingest(args.data_dir, Path(tmp), embedder)
            print("ingest:", json.dumps(results["ingest"]), flush=True)
            results["query_embedding"] = bench_query_embedding(embedder)
            print("query embedding:", json.dumps(results["query_embedding"]), flush=True)
        results["search"] = {}
        for n in args.sizes:
            results["search"][str(n)] = bench_search(n, Path(tmp), args.queries, rng)
            print(f"search @ {n}:", json.dumps(results["search"][str(n)]), flush=True)
    results["machine"]["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    print("machine:", json.dumps(results["machine"]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
