"""Ingest a folder of .md/.txt files into one collection of a store, with progress.

    python -m retrieval.ingest --db var/collections.sqlite3 --collection support_kb data/support_kb

Each batch of documents is one atomic write; unchanged documents are skipped, so re-running is
cheap. Chunk sizes use the served model's tokenizer when `--tokenizer` or `$TCRAG_MODEL` points at
one, else a conservative estimate (see retrieval/tokens.py).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from retrieval.config import RetrievalConfig
from retrieval.embedder import SentenceTransformerEmbedder
from retrieval.exceptions import RetrievalError
from retrieval.samples import read_folder
from retrieval.store import CollectionStore
from retrieval.tokens import make_token_counter

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m retrieval.ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="folder of .md/.txt files; document id = file stem")
    parser.add_argument("--db", type=Path, required=True, help="SQLite file (or data directory) of the store")
    parser.add_argument("--collection", required=True, help="collection name, [a-z0-9_-]{1,64}; created if missing")
    parser.add_argument("--tokenizer", default=None, help="HF tokenizer folder of the served model")
    parser.add_argument("--target-tokens", type=int, default=RetrievalConfig().target_tokens)
    parser.add_argument("--max-tokens", type=int, default=RetrievalConfig().max_tokens)
    parser.add_argument("--batch-docs", type=int, default=16, help="documents per atomic write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    if not args.folder.is_dir():
        print(f"error: not a folder: {args.folder}", file=sys.stderr)
        return 2
    try:
        store = CollectionStore(args.db)
        store.create_collection(args.collection)
        docs = read_folder(args.folder)
        chunker = RetrievalConfig(target_tokens=args.target_tokens, max_tokens=args.max_tokens).chunker(
            make_token_counter(args.tokenizer)
        )
        embedder = SentenceTransformerEmbedder()
        start = time.perf_counter()
        total_chunks = upserted = skipped = 0
        for i in range(0, len(docs), args.batch_docs):
            result = store.upsert_documents(args.collection, docs[i : i + args.batch_docs], chunker, embedder.embed)
            total_chunks += len(result.changed_chunks)
            upserted += len(result.upserted_doc_ids)
            skipped += len(result.skipped_doc_ids)
            elapsed = time.perf_counter() - start
            print(
                f"\r{min(i + args.batch_docs, len(docs))}/{len(docs)} documents, {total_chunks} chunks written, "
                f"{total_chunks / elapsed if elapsed else 0.0:.1f} chunks/s",
                end="",
                flush=True,
            )
        elapsed = time.perf_counter() - start
        info = store.get_collection(args.collection)
    except RetrievalError as err:
        print(f"\nerror: {err}", file=sys.stderr)
        return 1
    print(
        f"\n{args.collection}: {upserted} upserted, {skipped} unchanged, {total_chunks} chunks in {elapsed:.2f}s; "
        f"collection now v{info.version} with {info.documents} documents, {info.chunks} chunks"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
