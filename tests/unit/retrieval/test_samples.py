import ast
from pathlib import Path

from retrieval.chunker import chunk_text
from retrieval.samples import SAMPLE_COLLECTIONS, load_sample_collections, read_folder
from retrieval.models import StoreLimits
from retrieval.store import CollectionStore
from tests.fakes.hashing_embedder import HashingEmbedder, word_count

REPO = Path(__file__).resolve().parents[3]


def chunker(text: str) -> list[str]:
    return chunk_text(text, word_count, target_tokens=64, max_tokens=96)


def write_samples(root: Path) -> None:
    (root / "support_kb").mkdir(parents=True)
    for i in range(5):
        (root / "support_kb" / f"article-{i}.md").write_text(f"# Article {i}\n\nBody of article {i}.\n")
    (root / "support_kb" / "notes.txt").write_text("plain text without a heading")
    (root / "support_kb" / "ignored.json").write_text("{}")
    (root / "eval").mkdir()
    (root / "eval" / "support_kb.jsonl").write_text('{"query": "q", "expected_doc": "article-1"}\n')


def test_load_is_idempotent(tmp_path):
    write_samples(tmp_path / "data")
    store = CollectionStore(tmp_path / "db", limits=StoreLimits(max_documents_per_call=2))
    embedder = HashingEmbedder(64)
    progress = []
    loaded = load_sample_collections(store, tmp_path / "data", chunker, embedder.embed, lambda *a: progress.append(a))
    assert loaded["support_kb"] == 6
    assert set(loaded) == set(SAMPLE_COLLECTIONS)  # all six exist, eval is not a collection
    assert progress[-1] == ("support_kb", 6, 6)
    assert store.get_document("support_kb", "article-3").metadata == {"title": "Article 3", "source": "article-3.md"}
    assert store.get_document("support_kb", "notes").metadata["title"] == "notes"
    version = store.version("support_kb")
    again = load_sample_collections(store, tmp_path / "data", chunker, embedder.embed)
    assert again["support_kb"] == 0 and store.version("support_kb") == version


def test_read_folder_sorted(tmp_path):
    write_samples(tmp_path / "data")
    assert [d.id for d in read_folder(tmp_path / "data" / "support_kb")] == [
        "article-0", "article-1", "article-2", "article-3", "article-4", "notes",
    ]


def test_retrieval_package_does_not_import_ray():
    for path in (REPO / "retrieval").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not any(n == "ray" or n.startswith("ray.") for n in names), f"{path.name} imports {names}"


async def test_service_load_samples_uses_async_embed(tmp_path):
    from retrieval.service import RetrievalService

    write_samples(tmp_path / "data")
    store = CollectionStore(tmp_path / "db")
    embedder = HashingEmbedder(64)
    service = RetrievalService(store, embedder.aembed, chunker)
    loaded = await service.load_samples(tmp_path / "data")
    assert loaded["support_kb"] == 6
    hits = await service.search("support_kb", "Body of article 3", 1)
    assert hits[0].chunk.doc_id == "article-3"
    assert (await service.load_samples(tmp_path / "data"))["support_kb"] == 0


def test_config_validation():
    import pytest
    from pydantic import ValidationError

    from retrieval.config import RetrievalConfig

    assert RetrievalConfig().max_tokens == 512
    with pytest.raises(ValidationError):
        RetrievalConfig(target_tokens=600, max_tokens=512)
    with pytest.raises(ValidationError):
        RetrievalConfig(unknown=1)


def test_evaluate_recall_with_fake_embedder(tmp_path):
    from retrieval.eval_recall import evaluate

    write_samples(tmp_path / "data")
    (tmp_path / "data" / "eval" / "support_kb.jsonl").write_text(
        '{"query": "Body of article 1", "expected_doc": "article-1"}\n'
        '{"query": "zzz unrelated", "expected_doc": "missing-doc"}\n'
    )
    store = CollectionStore(tmp_path / "db")
    embedder = HashingEmbedder(64)
    load_sample_collections(store, tmp_path / "data", chunker, embedder.embed)
    [result] = evaluate(store, embedder, tmp_path / "data" / "eval", k=5)
    assert (result.collection, result.queries, result.hits, result.recall) == ("support_kb", 2, 1, 0.5)
    assert result.failures[0][:2] == ("zzz unrelated", "missing-doc")
