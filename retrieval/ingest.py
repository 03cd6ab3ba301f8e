"""Ingest a folder of Markdown/text files into one collection, with a progress bar.

    python -m retrieval.ingest DIR --collection NAME                  # through the running app
    python -m retrieval.ingest DIR --collection NAME --url http://host:8000
    python -m retrieval.ingest DIR --collection NAME --db var/collections.sqlite3   # offline, no app

By default the documents go through the app's HTTP API (`PUT /v1/collections/{name}/documents`) in
calls of at most 256 documents and a few MiB each; a call the app runs as a job (202) is followed on
`GET /v1/jobs/{id}` until it is done. `$TCRAG_API_KEY`, when set, is sent as the bearer token. Each
call switches the collection atomically; a folder larger than one call arrives call by call. Unchanged
documents are skipped by the app, so re-running after a failure only sends the rest through the
embedder. A file larger than one document may be (`--max-doc-chars`) is split at paragraph breaks into
parts ``<id>.part001`` ... `--db` writes straight into a store file with a local embedder instead (the
app must not be writing that file at the same time).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from retrieval.models import Document, StoreLimits

__all__ = ["HttpIngestor", "IngestError", "ProgressBar", "main", "plan_calls", "read_documents", "split_document"]

logger = logging.getLogger(__name__)

API_KEY_ENV = "TCRAG_API_KEY"
DEFAULT_URL = "http://127.0.0.1:8000"
_LIMITS = StoreLimits()
MAX_DOCS_PER_CALL = _LIMITS.max_documents_per_call
DEFAULT_MAX_CALL_BYTES = 8 << 20  # half the app's 16 MiB body limit: JSON escaping grows some texts


class IngestError(Exception):
    """A call or a job failed; the message says which and why."""


# ----------------------------------------------------------------------------- documents


def read_documents(folder: Path, *, recursive: bool = False) -> list[Document]:
    """The folder's *.md / *.txt files as documents (see `retrieval.samples.read_folder`); with `recursive`,
    files in subfolders too, their ids prefixed by the subfolder path joined with dots (``guide.install``)."""
    from retrieval.samples import read_folder

    docs = read_folder(folder)
    if recursive:
        for sub in sorted(p for p in folder.rglob("*") if p.is_dir() and not p.name.startswith(".")):
            prefix = ".".join(sub.relative_to(folder).parts)
            docs.extend(replace(d, id=f"{prefix}.{d.id}"[-128:].lstrip(".-"),
                                metadata={**d.metadata, "source": f"{sub.relative_to(folder)}/{d.metadata['source']}"})
                        for d in read_folder(sub))
    return docs


def split_document(doc: Document, max_chars: int) -> list[Document]:
    """`doc` itself when it fits in `max_chars`, else parts ``<id>.part001``... cut at the last paragraph
    break (else line break, else anywhere) before the limit, each titled "<title> (part i/n)"."""
    if len(doc.text) <= max_chars:
        return [doc]
    texts: list[str] = []
    rest = doc.text
    while len(rest) > max_chars:
        window = rest[:max_chars]
        cut = window.rfind("\n\n")
        if cut <= 0:
            cut = window.rfind("\n")
        if cut <= 0:
            cut = max_chars
        texts.append(rest[:cut])
        rest = rest[cut:].lstrip("\n")
    if rest.strip():
        texts.append(rest)
    title = doc.metadata.get("title", doc.id)
    stem = doc.id[: 128 - len(".part000")]
    return [Document(id=f"{stem}.part{i:03d}", text=text,
                     metadata={**doc.metadata, "title": f"{title} (part {i}/{len(texts)})"})
            for i, text in enumerate(texts, 1)]


def plan_calls(docs: Sequence[Document], max_docs: int = MAX_DOCS_PER_CALL,
               max_bytes: int = DEFAULT_MAX_CALL_BYTES) -> list[list[Document]]:
    """Consecutive groups of at most `max_docs` documents and about `max_bytes` of JSON each (a single
    larger document still gets a call of its own)."""
    calls: list[list[Document]] = []
    current: list[Document] = []
    size = 0
    for doc in docs:
        doc_bytes = len(json.dumps(_doc_json(doc)).encode())
        if current and (len(current) >= max_docs or size + doc_bytes > max_bytes):
            calls.append(current)
            current, size = [], 0
        current.append(doc)
        size += doc_bytes
    if current:
        calls.append(current)
    return calls


def _doc_json(doc: Document) -> dict[str, Any]:
    return {"id": doc.id, "text": doc.text, "metadata": doc.metadata}


# ----------------------------------------------------------------------------- progress


class ProgressBar:
    """One status line: documents sent and done, the current job's chunks, throughput. Redrawn in place on
    a terminal; elsewhere (a log file, CI) a line at most every `interval_s`."""

    def __init__(self, total_docs: int, stream: TextIO | None = None, *, width: int = 30,
                 interval_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.total_docs = total_docs
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.interval_s = interval_s
        self._clock = clock
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = float("-inf")
        self._drawn = False

    def line(self, docs_done: int, note: str = "") -> str:
        filled = round(self.width * docs_done / self.total_docs) if self.total_docs else self.width
        bar = "#" * filled + "-" * (self.width - filled)
        return f"[{bar}] {docs_done}/{self.total_docs} documents" + (f"  {note}" if note else "")

    def update(self, docs_done: int, note: str = "", *, force: bool = False) -> None:
        now = self._clock()
        if not (self._tty or force or now - self._last >= self.interval_s):
            return
        self._last = now
        text = self.line(docs_done, note)
        if self._tty:
            self.stream.write("\r\x1b[2K" + text)
            self._drawn = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


# ----------------------------------------------------------------------------- through the app


@dataclass
class Totals:
    calls: int = 0
    jobs: int = 0
    upserted: int = 0
    skipped: int = 0
    chunks: int = 0
    version: int | None = None


class HttpIngestor:
    """Sends documents to the app's PUT route call by call and follows each job to its end."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout_s: float = 600.0,
                 poll_s: float = 1.0, retries: int = 2, sleep: Callable[[float], None] = time.sleep) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.retries = retries
        self._sleep = sleep

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any], dict[str, str]]:
        """(status, JSON body, headers) of one call; HTTP errors are answers too."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return response.status, _json(response.read()), dict(response.headers)
        except urllib.error.HTTPError as err:
            return err.code, _json(err.read()), dict(err.headers or {})

    def _call(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        """`request`, retried on 503 (after its Retry-After) and on connection errors. Safe for our writes:
        the app skips documents that are already stored unchanged."""
        for attempt in range(self.retries + 1):
            try:
                status, answer, headers = self.request(method, path, body)
            except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
                if attempt == self.retries:
                    raise IngestError(f"{method} {self.base_url}{path}: {getattr(err, 'reason', err) or err}") from err
                self._sleep(self.poll_s)
                continue
            if status != 503 or attempt == self.retries:
                return status, answer
            retry_after = headers.get("Retry-After") or headers.get("retry-after") or ""
            self._sleep(float(retry_after) if retry_after.isdigit() else self.poll_s)
        raise AssertionError("unreachable")

    def check_collection(self, collection: str) -> dict[str, Any]:
        status, answer = self._call("GET", f"/v1/collections/{urllib.parse.quote(collection)}")
        if status != 200:
            raise IngestError(f"collection {collection!r} on {self.base_url}: {_message(status, answer)}")
        return answer

    def ingest(self, collection: str, calls: Sequence[Sequence[Document]], progress: ProgressBar) -> Totals:
        totals = Totals()
        sent = 0
        path = f"/v1/collections/{urllib.parse.quote(collection)}/documents"
        for number, docs in enumerate(calls, 1):
            where = f"call {number}/{len(calls)} ({len(docs)} documents"
            progress.update(sent, f"{where}) sending", force=True)
            status, answer = self._call("PUT", path, {"documents": [_doc_json(d) for d in docs]})
            if status == 202:
                totals.jobs += 1
                answer = self.follow_job(answer, lambda note: progress.update(sent, f"{where}) {note}"))
            elif status != 200:
                raise IngestError(f"{where}, {docs[0].id} .. {docs[-1].id}): {_message(status, answer)}")
            sent += len(docs)
            totals.calls += 1
            totals.upserted += len(answer.get("upserted", []))
            totals.skipped += len(answer.get("skipped", []))
            totals.chunks += int(answer.get("changed_chunks", 0))
            totals.version = answer.get("version", totals.version)
            progress.update(sent, f"{where}) v{totals.version}", force=True)
        return totals

    def follow_job(self, accepted: dict[str, Any], note: Callable[[str], None]) -> dict[str, Any]:
        """Poll the job until it is done (its write result) or failed (IngestError with its error)."""
        url = accepted.get("status_url") or f"/v1/jobs/{accepted['job']}"
        started = time.monotonic()
        while True:
            status, job = self._call("GET", url)
            if status != 200:
                raise IngestError(f"job {accepted.get('job')}: {_message(status, job)}")
            done, total = job.get("done", 0), job.get("total", 0)
            elapsed = time.monotonic() - started
            rate = f", {done / elapsed:.1f} chunks/s" if elapsed > 0 and done else ""
            note(f"job {job['job'][:8]} {job['state']}: {done}/{total} chunks{rate}")
            if job["state"] == "done":
                return job.get("result") or {}
            if job["state"] == "failed":
                raise IngestError(f"job {job['job']} failed: {job.get('error')} (the collection keeps its previous "
                                  "version for these documents)")
            self._sleep(self.poll_s)


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw or b"{}")
    except json.JSONDecodeError:
        return {"raw": raw.decode(errors="replace")[:500]}
    return value if isinstance(value, dict) else {"value": value}


def _message(status: int, answer: dict[str, Any]) -> str:
    error = answer.get("error")
    if isinstance(error, dict):
        return f"HTTP {status}: {error.get('message') or error.get('type')}"
    return f"HTTP {status}: {answer}"


# ----------------------------------------------------------------------------- straight into a store file


def ingest_into_store(db: Path, collection: str, calls: Sequence[Sequence[Document]], progress: ProgressBar, *,
                      tokenizer: str | None, target_tokens: int, max_tokens: int,
                      embed: Callable[[list[str]], Any] | None = None) -> Totals:
    """Offline: write `calls` into the store file at `db` (collection created if missing), each call one
    atomic write, embedding with the local all-MiniLM-L6-v2 unless `embed` is given."""
    from retrieval.config import RetrievalConfig
    from retrieval.store import CollectionStore
    from retrieval.tokens import make_token_counter

    store = CollectionStore(db)
    try:
        store.create_collection(collection)
        chunker = RetrievalConfig(target_tokens=target_tokens, max_tokens=max_tokens).chunker(
            make_token_counter(tokenizer))
        if embed is None:
            from retrieval.embedder import SentenceTransformerEmbedder

            embed = SentenceTransformerEmbedder().embed
        totals = Totals()
        sent = 0
        for number, docs in enumerate(calls, 1):
            progress.update(sent, f"write {number}/{len(calls)} ({len(docs)} documents) embedding", force=True)
            result = store.upsert_documents(collection, docs, chunker, embed)
            sent += len(docs)
            totals.calls += 1
            totals.upserted += len(result.upserted_doc_ids)
            totals.skipped += len(result.skipped_doc_ids)
            totals.chunks += len(result.changed_chunks)
            totals.version = result.version
            progress.update(sent, f"write {number}/{len(calls)} v{result.version}", force=True)
        return totals
    finally:
        store.close()


# ----------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m retrieval.ingest",
                                     description="Ingest a folder of .md/.txt files into one collection.")
    parser.add_argument("folder", type=Path, help="folder of .md/.txt files; document id = file stem")
    parser.add_argument("--collection", required=True, help="collection name, [a-z0-9_-]{1,64}")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--url", default=None, help=f"the running app (default {DEFAULT_URL}); "
                        f"${API_KEY_ENV} is sent as the bearer token when set")
    target.add_argument("--db", type=Path, default=None,
                        help="offline: write straight into this SQLite store file (or data directory); "
                        "the collection is created if missing")
    parser.add_argument("--recursive", action="store_true", help="also files in subfolders (ids: sub.dir.stem)")
    parser.add_argument("--batch-docs", type=int, default=None,
                        help=f"documents per call (default and most: {MAX_DOCS_PER_CALL}) or, with --db, per "
                        "atomic write (default 16)")
    parser.add_argument("--max-call-mb", type=float, default=DEFAULT_MAX_CALL_BYTES / (1 << 20),
                        help="approximate JSON size of one call, MiB (the app refuses bodies over 16 MiB)")
    parser.add_argument("--max-doc-chars", type=int, default=_LIMITS.max_document_chars,
                        help="larger files are split into parts (the app's limit per document)")
    parser.add_argument("--poll-s", type=float, default=1.0, help="seconds between job status checks")
    parser.add_argument("--timeout-s", type=float, default=600.0, help="HTTP timeout of one call")
    parser.add_argument("--tokenizer", default=None, help="--db: HF tokenizer folder of the served model")
    parser.add_argument("--target-tokens", type=int, default=None, help="--db: chunk size (default: the app's)")
    parser.add_argument("--max-tokens", type=int, default=None, help="--db: chunk size bound (default: the app's)")
    return parser


def main(argv: list[str] | None = None, *, stream: TextIO | None = None,
         embed: Callable[[list[str]], Any] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out = stream if stream is not None else sys.stdout
    if not args.folder.is_dir():
        print(f"error: not a folder: {args.folder}", file=sys.stderr)
        return 2
    if args.batch_docs is None:
        args.batch_docs = 16 if args.db is not None else MAX_DOCS_PER_CALL
    if not 1 <= args.batch_docs <= MAX_DOCS_PER_CALL:
        print(f"error: --batch-docs must be between 1 and {MAX_DOCS_PER_CALL}", file=sys.stderr)
        return 2
    docs = [part for doc in read_documents(args.folder, recursive=args.recursive)
            for part in split_document(doc, args.max_doc_chars)]
    if not docs:
        print(f"error: no non-empty .md/.txt files in {args.folder}", file=sys.stderr)
        return 2
    calls = plan_calls(docs, args.batch_docs, int(args.max_call_mb * (1 << 20)))
    progress = ProgressBar(len(docs), stream=sys.stderr)
    started = time.perf_counter()
    try:
        if args.db is not None:
            from retrieval.config import RetrievalConfig

            defaults = RetrievalConfig()
            where = str(args.db)
            totals = ingest_into_store(args.db, args.collection, calls, progress, tokenizer=args.tokenizer,
                                       target_tokens=args.target_tokens or defaults.target_tokens,
                                       max_tokens=args.max_tokens or defaults.max_tokens, embed=embed)
        else:
            ingestor = HttpIngestor(args.url or DEFAULT_URL, api_key=os.environ.get(API_KEY_ENV) or None,
                                    timeout_s=args.timeout_s, poll_s=args.poll_s)
            where = ingestor.base_url
            ingestor.check_collection(args.collection)
            totals = ingestor.ingest(args.collection, calls, progress)
    except Exception as err:  # command-line boundary: one readable line, no traceback
        progress.close()
        print(f"error: {err}", file=sys.stderr)
        return 1
    progress.close()
    elapsed = time.perf_counter() - started
    rate = totals.chunks / elapsed if elapsed > 0 else 0.0
    how = f"{totals.calls} atomic writes" if args.db is not None else f"{totals.calls} calls ({totals.jobs} as jobs)"
    print(f"{args.collection} at {where}: {len(docs)} documents in {how}: "
          f"{totals.upserted} upserted, {totals.skipped} unchanged, {totals.chunks} chunks written in "
          f"{elapsed:.1f} s ({rate:.1f} chunks/s); collection now v{totals.version}", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
