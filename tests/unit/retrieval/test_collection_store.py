import threading

import numpy as np
import pytest

from retrieval.chunker import chunk_text
from retrieval.exceptions import (
    CollectionNotFoundError,
    DocumentNotFoundError,
    EmbeddingError,
    InvalidCollectionNameError,
    InvalidDocumentError,
    StoreWriteError,
)
from retrieval.models import Document, StoreLimits
from retrieval.store import CollectionStore
from tests.fakes.hashing_embedder import HashingEmbedder, word_count


def chunker(text: str) -> list[str]:
    return chunk_text(text, word_count, target_tokens=40, max_tokens=60)


def doc(i: int, extra: str = "") -> Document:
    body = "\n\n".join(f"Paragraph {j} of document {i} talks about topic{i} {extra}." for j in range(12))
    return Document(id=f"doc-{i}", text=f"# Doc {i}\n\n{body}", metadata={"team": "a" if i % 2 else "b"})


@pytest.fixture
def embedder():
    return HashingEmbedder(dim=64)


@pytest.fixture
def store(tmp_path):
    s = CollectionStore(tmp_path / "db")
    s.create_collection("kb")
    yield s
    s.close()


def test_create_collection_idempotent_and_validated(store):
    assert store.create_collection("kb").version == 0
    assert [c.name for c in store.list_collections()] == ["kb"]
    for bad in ["", "UPPER", "has space", "x" * 65, "a/b"]:
        with pytest.raises(InvalidCollectionNameError) as err:
            store.create_collection(bad)
        assert err.value.field == "collection"


def test_upsert_and_load(store, embedder):
    result = store.upsert_documents("kb", [doc(1), doc(2)], chunker, embedder.embed)
    assert result.version == 1
    assert result.upserted_doc_ids == ["doc-1", "doc-2"]
    chunks, emb = store.load("kb")
    assert len(chunks) == len(result.changed_chunks) > 2
    assert emb.shape == (len(chunks), 64) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    assert all(c.chunk_id == f"{c.doc_id}#{c.position}" for c in chunks)
    assert store.get_collection("kb").documents == 2
    assert store.get_document("kb", "doc-1") == doc(1)
    assert store.get_document("kb", "nope") is None


def test_unchanged_document_skipped(store, embedder):
    store.upsert_documents("kb", [doc(1)], chunker, embedder.embed)
    calls = len(embedder.calls)
    result = store.upsert_documents("kb", [doc(1)], chunker, embedder.embed)
    assert result.upserted_doc_ids == [] and result.skipped_doc_ids == ["doc-1"]
    assert result.version == 1 == store.version("kb")
    assert result.changed_chunks == [] and result.removed_chunks == []
    assert len(embedder.calls) == calls  # nothing re-embedded


def test_edit_reports_changed_and_removed_and_reuses_embeddings(store, embedder):
    store.upsert_documents("kb", [doc(1)], chunker, embedder.embed)
    old_chunks, _ = store.load("kb")
    edited = Document("doc-1", doc(1).text.replace("Paragraph 11", "Changed paragraph 11"), doc(1).metadata)
    result = store.upsert_documents("kb", [edited], chunker, embedder.embed)
    assert result.version == 2
    assert [c.chunk_id for c in result.changed_chunks] == [old_chunks[-1].chunk_id]
    assert [c.content_hash for c in result.removed_chunks] == [old_chunks[-1].content_hash]
    assert embedder.calls[-1] == [result.changed_chunks[0].text]  # only the changed chunk embedded


def test_embed_failure_leaves_old_version(store, embedder):
    store.upsert_documents("kb", [doc(1)], chunker, embedder.embed)
    before = store.load("kb")

    def broken(texts):
        raise RuntimeError("embedder down")

    with pytest.raises(EmbeddingError):
        store.upsert_documents("kb", [doc(1, "new"), doc(2)], chunker, broken)
    assert store.version("kb") == 1
    after = store.load("kb")
    assert after[0] == before[0]
    np.testing.assert_array_equal(after[1], before[1])


def test_wrong_embedding_shape_rejected(store):
    with pytest.raises(EmbeddingError):
        store.upsert_documents("kb", [doc(1)], chunker, lambda texts: np.ones((1, 8)))
    assert store.version("kb") == 0 and store.load("kb")[0] == []


@pytest.mark.parametrize("step", ["begin", "document_written", "chunks_deleted", "chunks_written", "before_commit"])
def test_fault_mid_transaction_rolls_back(tmp_path, embedder, step):
    armed = threading.Event()

    def hook(name: str) -> None:
        if armed.is_set() and name == step:
            raise RuntimeError(f"injected fault at {name}")

    store = CollectionStore(tmp_path / "db", fault_hook=hook)
    store.create_collection("kb")
    store.upsert_documents("kb", [doc(1), doc(2)], chunker, embedder.embed)
    before = store.load("kb")
    armed.set()
    with pytest.raises(RuntimeError, match="injected"):
        store.upsert_documents("kb", [doc(1, "edited"), doc(3)], chunker, embedder.embed)
    assert store.version("kb") == 1
    after = store.load("kb")
    assert after[0] == before[0]
    np.testing.assert_array_equal(after[1], before[1])
    assert store.get_document("kb", "doc-3") is None
    # A second process (a fresh store on the same file) sees the same old version.
    other = CollectionStore(tmp_path / "db")
    assert other.version("kb") == 1 and other.load("kb")[0] == before[0]
    armed.clear()
    assert store.upsert_documents("kb", [doc(3)], chunker, embedder.embed).version == 2


def test_fault_during_delete_rolls_back(tmp_path, embedder):
    def hook(name: str) -> None:
        if name == "document_deleted":
            raise RuntimeError("injected")

    store = CollectionStore(tmp_path / "db", fault_hook=hook)
    store.create_collection("kb")
    store.upsert_documents("kb", [doc(1)], chunker, embedder.embed)
    with pytest.raises(RuntimeError):
        store.delete_document("kb", "doc-1")
    assert store.version("kb") == 1 and store.get_document("kb", "doc-1") == doc(1)


def test_sqlite_error_becomes_store_write_error(store, embedder):
    def hook(name: str) -> None:
        if name == "chunks_written":
            store._conn().execute("INSERT INTO nonexistent VALUES (1)")

    store._fault_hook = hook
    with pytest.raises(StoreWriteError):
        store.upsert_documents("kb", [doc(1)], chunker, embedder.embed)
    assert store.version("kb") == 0


def test_restart_keeps_every_document(tmp_path, embedder):
    path = tmp_path / "data"
    path.mkdir()
    store = CollectionStore(path)  # a directory: the store uses one file inside it
    store.create_collection("kb")
    docs = [doc(i) for i in range(20)]
    store.upsert_documents("kb", docs, chunker, embedder.embed)
    store.delete_document("kb", "doc-7")
    chunks, emb = store.load("kb")
    store.close()
    reopened = CollectionStore(path)
    assert reopened.version("kb") == 2
    assert reopened.list_document_ids("kb") == sorted(d.id for d in docs if d.id != "doc-7")
    for d in docs:
        assert reopened.get_document("kb", d.id) == (None if d.id == "doc-7" else d)
    chunks2, emb2 = reopened.load("kb")
    assert chunks2 == chunks
    np.testing.assert_array_equal(emb2, emb)


def test_delete(store, embedder):
    store.upsert_documents("kb", [doc(1), doc(2)], chunker, embedder.embed)
    result = store.delete_document("kb", "doc-1")
    assert result.version == 2 and result.removed_chunks
    assert all(c.doc_id == "doc-1" for c in result.removed_chunks)
    assert {c.doc_id for c in store.load("kb")[0]} == {"doc-2"}
    with pytest.raises(DocumentNotFoundError):
        store.delete_document("kb", "doc-1")
    assert store.version("kb") == 2


def test_unknown_collection(store, embedder):
    with pytest.raises(CollectionNotFoundError):
        store.version("missing")
    with pytest.raises(CollectionNotFoundError):
        store.get_collection("missing")
    with pytest.raises(CollectionNotFoundError):
        store.upsert_documents("missing", [doc(1)], chunker, embedder.embed)
    with pytest.raises(CollectionNotFoundError):
        store.delete_document("missing", "doc-1")
    with pytest.raises(CollectionNotFoundError):
        store.load("missing")


@pytest.mark.parametrize(
    "docs,field",
    [
        ([], "documents"),
        ([Document("ok", "text"), Document("bad id!", "text")], "documents[1].id"),
        ([Document("ok", "text"), Document("ok", "text")], "documents[1].id"),
        ([Document("a", "text"), Document("b", "text"), Document("c", "   ")], "documents[2].text"),
        ([Document("a", "x" * 1001)], "documents[0].text"),
        ([Document("a", "text", metadata=["not", "a", "dict"])], "documents[0].metadata"),
        ([Document("a", "text", metadata={"x": object()})], "documents[0].metadata"),
        ([Document(f"d{i}", "text") for i in range(6)], "documents"),
    ],
)
def test_validation_names_the_field(tmp_path, embedder, docs, field):
    store = CollectionStore(tmp_path / "db", limits=StoreLimits(max_document_chars=1000, max_documents_per_call=5))
    store.create_collection("kb")
    with pytest.raises(InvalidDocumentError) as err:
        store.upsert_documents("kb", docs, chunker, embedder.embed)
    assert err.value.field == field
    assert field in str(err.value)
    assert store.version("kb") == 0 and embedder.calls == []


def test_concurrent_reader_sees_committed_state_only(tmp_path, embedder):
    writer = CollectionStore(tmp_path / "db")
    writer.create_collection("kb")
    reader = CollectionStore(tmp_path / "db")
    stop = threading.Event()
    seen: list[tuple[int, int]] = []

    def read_loop():
        while not stop.is_set():
            snap = reader.snapshot("kb")
            seen.append((snap.version, len({c.doc_id for c in snap.chunks})))

    t = threading.Thread(target=read_loop)
    t.start()
    for i in range(10):
        writer.upsert_documents("kb", [doc(i)], chunker, embedder.embed)
    stop.set()
    t.join()
    assert seen and all(n_docs == version for version, n_docs in seen)


def test_concurrent_writers_serialize(tmp_path, embedder):
    CollectionStore(tmp_path / "db").create_collection("kb")
    errors: list[BaseException] = []

    def write(offset: int) -> None:
        store = CollectionStore(tmp_path / "db")  # one store per writer, as in separate processes
        try:
            for i in range(offset, offset + 8):
                store.upsert_documents("kb", [doc(i)], chunker, embedder.embed)
        except BaseException as err:  # noqa: BLE001 -- surfaced by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=write, args=(k * 100,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    store = CollectionStore(tmp_path / "db")
    assert store.version("kb") == 24
    assert len(store.list_document_ids("kb")) == 24
