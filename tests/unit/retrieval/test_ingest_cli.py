"""`python -m retrieval.ingest`: against a fake HTTP app (calls of <= 256 documents, jobs followed to done,
a failed job reported, 503 retried, the API key sent), offline into a store file (--db), and the pieces:
reading a folder, splitting oversized files, planning calls, the progress bar."""

from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from retrieval import ingest
from retrieval.ingest import ProgressBar, plan_calls, read_documents, split_document
from retrieval.models import Document
from retrieval.store import CollectionStore
from tests.fakes.hashing_embedder import HashingEmbedder


class FakeApp:
    """A tiny stand-in for the app's HTTP API: PUTs of more than `job_over` documents become jobs that
    report `running` once, then `done` (or `failed` when `fail_jobs`)."""

    def __init__(self) -> None:
        self.collections = {"kb": 1}
        self.puts: list[list[dict]] = []
        self.auth: list[str | None] = []
        self.jobs: dict[str, dict] = {}
        self.job_over = 3
        self.fail_jobs = False
        self.unavailable_once = False
        app = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self):
                app.auth.append(self.headers.get("Authorization"))
                parts = self.path.strip("/").split("/")
                if parts[:2] == ["v1", "collections"] and len(parts) == 3:
                    if parts[2] not in app.collections:
                        return self._send(404, {"error": {"type": "not_found", "field": "name",
                                                          "message": f"name: collection not found: {parts[2]!r}"}})
                    return self._send(200, {"name": parts[2], "version": app.collections[parts[2]]})
                if parts[:2] == ["v1", "jobs"]:
                    job = app.jobs[parts[2]]
                    job["polls"] += 1
                    if job["polls"] == 1:
                        return self._send(200, {**job["body"], "state": "running", "done": 1})
                    if app.fail_jobs:
                        return self._send(200, {**job["body"], "state": "failed",
                                                "error": "batch 2/3 (32 chunks) exceeded 60 s, retried once"})
                    return self._send(200, {**job["body"], "state": "done", "done": job["body"]["total"],
                                            "result": job["result"]})
                return self._send(404, {"error": {"type": "not_found", "field": "path", "message": self.path}})

            def do_PUT(self):
                app.auth.append(self.headers.get("Authorization"))
                if app.unavailable_once:
                    app.unavailable_once = False
                    self.rfile.read(int(self.headers["Content-Length"]))
                    return self._send(503, {"error": {"type": "unavailable", "message": "busy"}},
                                      {"Retry-After": "0"})
                docs = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["documents"]
                app.puts.append(docs)
                name = self.path.split("/")[3]
                app.collections[name] += 1
                result = {"collection": name, "version": app.collections[name], "upserted": [d["id"] for d in docs],
                          "skipped": [], "changed_chunks": len(docs), "removed_chunks": 0}
                if len(docs) <= app.job_over:
                    return self._send(200, result)
                job_id = f"job{len(app.jobs)}"
                body = {"job": job_id, "status_url": f"/v1/jobs/{job_id}", "collection": name, "state": "queued",
                        "done": 0, "total": len(docs), "error": None}
                app.jobs[job_id] = {"polls": 0, "body": body, "result": result}
                return self._send(202, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_app():
    app = FakeApp()
    yield app
    app.close()


@pytest.fixture
def folder(tmp_path) -> Path:
    for i in range(7):
        (tmp_path / f"page-{i}.md").write_text(f"# Page {i}\n\nText of page {i} about glaciers.\n")
    (tmp_path / "notes.txt").write_text("plain text notes\n")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")  # ignored
    return tmp_path


def run(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    return ingest.main(argv + ["--poll-s", "0"], stream=out), out.getvalue()


def test_a_folder_goes_through_the_app_in_calls_following_each_job(fake_app, folder, monkeypatch):
    monkeypatch.setenv("TCRAG_API_KEY", "k3y")
    code, out = run([str(folder), "--collection", "kb", "--url", fake_app.url, "--batch-docs", "5"])
    assert code == 0
    assert [len(p) for p in fake_app.puts] == [5, 3]  # 8 documents, at most 5 per call
    assert [d["id"] for p in fake_app.puts for d in p] == ["notes", *[f"page-{i}" for i in range(7)]]
    assert fake_app.puts[1][0]["metadata"] == {"title": "Page 4", "source": "page-4.md"}
    assert fake_app.jobs["job0"]["polls"] == 2  # the first call's job followed to done
    assert set(fake_app.auth) == {"Bearer k3y"}
    assert "8 documents in 2 calls (1 as jobs): 8 upserted, 0 unchanged, 8 chunks" in out
    assert out.rstrip().endswith("collection now v3")


def test_calls_hold_at_most_256_documents(fake_app, tmp_path):
    for i in range(300):
        (tmp_path / f"d{i:03d}.txt").write_text(f"document {i}")
    fake_app.job_over = 1000
    code, _ = run([str(tmp_path), "--collection", "kb", "--url", fake_app.url])
    assert code == 0 and [len(p) for p in fake_app.puts] == [256, 44]


def test_a_failed_job_stops_the_run_with_its_error(fake_app, folder, capsys):
    fake_app.fail_jobs = True
    code, _ = run([str(folder), "--collection", "kb", "--url", fake_app.url])
    assert code == 1
    err = capsys.readouterr().err
    assert "error: job job0 failed: batch 2/3 (32 chunks) exceeded 60 s, retried once" in err
    assert "previous version" in err


def test_a_503_is_retried(fake_app, folder):
    fake_app.unavailable_once = True
    code, _ = run([str(folder), "--collection", "kb", "--url", fake_app.url, "--batch-docs", "2"])
    assert code == 0 and sum(len(p) for p in fake_app.puts) == 8


def test_an_unknown_collection_is_reported_before_anything_is_sent(fake_app, folder, capsys):
    code, _ = run([str(folder), "--collection", "nope", "--url", fake_app.url])
    assert code == 1 and fake_app.puts == []
    assert "collection 'nope'" in capsys.readouterr().err


def test_an_unreachable_app_is_one_readable_error(folder, capsys):
    code, _ = run([str(folder), "--collection", "kb", "--url", "http://127.0.0.1:9"])
    assert code == 1 and capsys.readouterr().err.startswith("error: GET http://127.0.0.1:9/v1/collections/kb")


def test_usage_errors_exit_2(tmp_path, capsys):
    assert ingest.main([str(tmp_path / "missing"), "--collection", "kb"]) == 2
    assert ingest.main([str(tmp_path), "--collection", "kb"]) == 2  # no files
    (tmp_path / "a.md").write_text("x")
    assert ingest.main([str(tmp_path), "--collection", "kb", "--batch-docs", "257"]) == 2
    with pytest.raises(SystemExit):
        ingest.main([str(tmp_path), "--collection", "kb", "--url", "http://x", "--db", "y"])


def test_db_mode_writes_straight_into_a_store_file(folder, tmp_path, monkeypatch):
    monkeypatch.setattr("retrieval.tokens.make_token_counter", lambda path=None: lambda text: len(text.split()))
    db = tmp_path / "store" / "collections.sqlite3"
    out = io.StringIO()
    code = ingest.main([str(folder), "--collection", "fresh", "--db", str(db), "--batch-docs", "3"], stream=out,
                       embed=HashingEmbedder().embed)
    assert code == 0
    store = CollectionStore(db)
    info = store.get_collection("fresh")
    assert (info.documents, info.version) == (8, 3)  # three atomic writes
    store.close()
    assert "8 upserted" in out.getvalue()


# ----------------------------------------------------------------------------- the pieces


def test_recursive_reading_prefixes_ids_with_the_subfolder(folder):
    (folder / "guide" / "install").mkdir(parents=True)
    (folder / "guide" / "install" / "linux.md").write_text("# Linux\n\nsteps")
    flat = {d.id for d in read_documents(folder)}
    deep = {d.id: d for d in read_documents(folder, recursive=True)}
    assert "guide.install.linux" not in flat and set(deep) - flat == {"guide.install.linux"}
    assert deep["guide.install.linux"].metadata["source"] == "guide/install/linux.md"


def test_an_oversized_file_is_split_at_paragraph_breaks():
    text = "\n\n".join(f"paragraph {i} " + "x" * 30 for i in range(10))
    parts = split_document(Document("big", text, {"title": "Big"}), max_chars=100)
    assert [p.id for p in parts] == [f"big.part{i:03d}" for i in range(1, len(parts) + 1)]
    assert all(len(p.text) <= 100 for p in parts) and parts[0].metadata["title"] == f"Big (part 1/{len(parts)})"
    assert "".join(p.text for p in parts).replace("\n", "") == text.replace("\n", "")
    assert split_document(Document("small", "tiny"), 100) == [Document("small", "tiny")]


def test_calls_are_bounded_by_documents_and_bytes():
    docs = [Document(f"d{i}", "x" * 1000) for i in range(10)]
    assert [len(c) for c in plan_calls(docs, max_docs=4, max_bytes=1 << 20)] == [4, 4, 2]
    assert [len(c) for c in plan_calls(docs, max_docs=256, max_bytes=3500)] == [3, 3, 3, 1]
    assert [len(c) for c in plan_calls(docs[:1], max_docs=256, max_bytes=10)] == [1]  # too big alone: still sent


def test_the_progress_bar_redraws_on_a_terminal_and_throttles_elsewhere():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    bar = ProgressBar(4, stream=tty, width=8)
    bar.update(1, "job ab12 running: 3/10 chunks")
    bar.update(2)
    bar.close()
    assert tty.getvalue() == ("\r\x1b[2K[##------] 1/4 documents  job ab12 running: 3/10 chunks"
                              "\r\x1b[2K[####----] 2/4 documents\n")
    now = [0.0]
    log = io.StringIO()
    bar = ProgressBar(4, stream=log, width=4, interval_s=5, clock=lambda: now[0])
    bar.update(1)
    bar.update(2)  # within 5 s: skipped
    now[0] = 6.0
    bar.update(3)
    bar.update(4, force=True)
    assert log.getvalue().splitlines() == ["[#---] 1/4 documents", "[###-] 3/4 documents", "[####] 4/4 documents"]
