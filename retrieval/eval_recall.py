"""Recall@k of the labelled queries in `data/eval/<collection>.jsonl`, per collection.

    python -m retrieval.eval_recall --data-dir data [--db PATH] [--k 5] [--min-recall 0.8]

Loads the sample collections into a temporary store (or `--db`, loading samples only where empty)
with the real embedder, runs every labelled query (`{"query": str, "expected_doc": str}`) and counts
a hit when any of the top-k chunks belongs to the expected document. Exits 1 if any collection with
labelled queries falls below `--min-recall`, and lists the failing queries.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from retrieval.config import RetrievalConfig
from retrieval.embedder import Embedder, SentenceTransformerEmbedder
from retrieval.exceptions import CollectionNotFoundError
from retrieval.index import ExactCosineIndex
from retrieval.samples import load_sample_collections
from retrieval.store import CollectionStore
from retrieval.tokens import make_token_counter
from settings.paths import repo_data_dir

__all__ = ["CollectionRecall", "evaluate", "main"]


@dataclass(frozen=True, slots=True)
class CollectionRecall:
    collection: str
    queries: int
    hits: int
    failures: list[tuple[str, str, list[str]]] = field(default_factory=list)  # query, expected, got

    @property
    def recall(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


def read_labels(path: Path) -> list[tuple[str, str]]:
    labels = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row.get("query"), str) or not isinstance(row.get("expected_doc"), str):
            raise ValueError(f"{path}:{n}: needs string fields 'query' and 'expected_doc'")
        labels.append((row["query"], row["expected_doc"]))
    return labels


def evaluate(store: CollectionStore, embedder: Embedder, eval_dir: Path, k: int = 5) -> list[CollectionRecall]:
    """Recall@k for each `<collection>.jsonl` in `eval_dir` whose collection exists in `store`."""
    results = []
    for path in sorted(eval_dir.glob("*.jsonl")):
        collection = path.stem
        labels = read_labels(path)
        try:
            chunks, embeddings = store.load(collection)
        except CollectionNotFoundError:
            results.append(CollectionRecall(collection, len(labels), 0, [(q, d, []) for q, d in labels]))
            continue
        index = ExactCosineIndex(chunks, embeddings)
        vectors = embedder.embed([q for q, _ in labels])
        hits = 0
        failures = []
        for (query, expected), vector in zip(labels, vectors):
            # Distinct documents among the top chunks, best first.
            docs = list(dict.fromkeys(h.chunk.doc_id for h in index.search(vector, k)))
            if expected in docs:
                hits += 1
            else:
                failures.append((query, expected, docs))
        results.append(CollectionRecall(collection, len(labels), hits, failures))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m retrieval.eval_recall", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=repo_data_dir(), help="default: the repo's data/")
    parser.add_argument("--db", type=Path, default=None, help="use this store instead of a temporary one")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--min-recall", type=float, default=0.8)
    parser.add_argument("--tokenizer", default=None, help="HF tokenizer folder of the served model")
    parser.add_argument("--target-tokens", type=int, default=RetrievalConfig().target_tokens)
    parser.add_argument("--max-tokens", type=int, default=RetrievalConfig().max_tokens)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    eval_dir = args.data_dir / "eval"
    if not eval_dir.is_dir():
        print(f"error: no labelled queries in {eval_dir}", file=sys.stderr)
        return 2
    embedder = SentenceTransformerEmbedder()
    chunker = RetrievalConfig(target_tokens=args.target_tokens, max_tokens=args.max_tokens).chunker(
        make_token_counter(args.tokenizer)
    )
    with tempfile.TemporaryDirectory(prefix="tcrag-eval-") as tmp:
        store = CollectionStore(args.db or Path(tmp) / "eval.sqlite3")
        start = time.perf_counter()
        load_sample_collections(store, args.data_dir, chunker, embedder.embed)
        load_s = time.perf_counter() - start
        results = evaluate(store, embedder, eval_dir, args.k)
        infos = {c.name: c for c in store.list_collections()}
        store.close()

    print(f"samples loaded in {load_s:.1f}s")
    print(f"{'collection':<20} {'docs':>5} {'chunks':>6} {'queries':>7} {'recall@' + str(args.k):>9}")
    failed = False
    for r in results:
        info = infos.get(r.collection)
        docs, chunks = (info.documents, info.chunks) if info else (0, 0)
        ok = r.queries > 0 and r.recall >= args.min_recall
        failed |= not ok
        print(f"{r.collection:<20} {docs:>5} {chunks:>6} {r.queries:>7} {r.recall:>9.3f}{'' if ok else '  BELOW TARGET'}")
    for r in results:
        for query, expected, got in r.failures:
            print(f"  miss [{r.collection}] {query!r}: expected {expected}, got {got}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
