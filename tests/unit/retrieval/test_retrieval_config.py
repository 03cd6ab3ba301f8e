import pytest
from pydantic import ValidationError

from retrieval.config import RetrievalConfig
from retrieval.exceptions import InvalidInputError
from retrieval.models import DEFAULT_TOP_K, MAX_TOP_K, Document, StoreLimits
from retrieval.service import RetrievalService
from settings.paths import repo_data_dir
from tests.fakes.hashing_embedder import HashingEmbedder, word_count


def test_defaults_are_the_request_bounds():
    config = RetrievalConfig()
    assert (config.default_top_k, config.max_top_k) == (DEFAULT_TOP_K, MAX_TOP_K)
    assert (config.db_path, config.data_dir) == (None, None)


def test_top_k_limits_are_validated():
    RetrievalConfig(default_top_k=3, max_top_k=3)
    with pytest.raises(ValidationError):
        RetrievalConfig(default_top_k=4, max_top_k=3)
    with pytest.raises(ValidationError):
        RetrievalConfig(max_top_k=MAX_TOP_K + 1)


def test_resolved_paths_prefer_arguments_then_fields_then_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("TCRAG_DATA_DIR", str(tmp_path / "env"))
    config = RetrievalConfig().resolved()
    assert config.db_path == (tmp_path / "env").resolve() / "collections.sqlite3"
    assert config.data_dir == repo_data_dir()
    own = RetrievalConfig(db_path=tmp_path / "own.sqlite3", data_dir=tmp_path / "own").resolved()
    assert (own.db_path, own.data_dir) == ((tmp_path / "own.sqlite3").resolve(), (tmp_path / "own").resolve())
    args = RetrievalConfig(db_path=tmp_path / "own.sqlite3").resolved(str(tmp_path / "yaml.sqlite3"), str(tmp_path))
    assert (args.db_path, args.data_dir) == ((tmp_path / "yaml.sqlite3").resolve(), tmp_path.resolve())
    monkeypatch.delenv("TCRAG_DATA_DIR")
    monkeypatch.setenv("TCRAG_HOME", str(tmp_path / "home"))
    assert RetrievalConfig().resolved().db_path == tmp_path / "home" / "store" / "collections.sqlite3"


def test_chunker_uses_the_configured_sizes():
    text = "\n\n".join(f"paragraph {i} " + "word " * 20 for i in range(10))
    chunks = RetrievalConfig(target_tokens=30, max_tokens=40).chunker(word_count)(text)
    assert len(chunks) > 1 and all(word_count(c) <= 40 for c in chunks)


async def test_service_from_config_reads_store_and_top_k_limits(tmp_path):
    config = RetrievalConfig(db_path=tmp_path / "db", default_top_k=2, max_top_k=3,
                             limits=StoreLimits(max_documents_per_call=4))
    embedder = HashingEmbedder(64)
    service = RetrievalService.from_config(config, embedder.aembed, word_count)
    assert service.store.path == tmp_path / "db"
    assert service.store.limits.max_documents_per_call == 4
    await service.create_collection("kb")
    await service.upsert("kb", [Document(f"d{i}", f"document number {i} about refunds") for i in range(4)])
    assert len(await service.search("kb", "refunds")) == 2
    assert len(await service.search("kb", "refunds", 3)) == 3
    with pytest.raises(InvalidInputError) as err:
        await service.search("kb", "refunds", 4)
    assert err.value.field == "top_k"
    service.store.close()


def test_service_refuses_inconsistent_limits():
    with pytest.raises(ValueError):
        RetrievalService(None, None, None, default_top_k=5, max_top_k=4)  # type: ignore[arg-type]
