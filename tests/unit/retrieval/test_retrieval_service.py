import asyncio

import numpy as np
import pytest

from retrieval.chunker import chunk_text
from retrieval.exceptions import CollectionNotFoundError, EmbeddingError, InvalidInputError
from retrieval.service import RetrievalService
from retrieval.models import Document
from retrieval.store import CollectionStore
from tests.fakes.hashing_embedder import HashingEmbedder, word_count

DOCS = [
    Document("reset-password", "# Reset your password\n\nOpen settings, choose security, click reset password."),
    Document("billing-refund", "# Refunds\n\nRefunds for annual billing plans are issued within ten days."),
    Document("export-data", "# Export data\n\nUse the export button to download a CSV archive of projects."),
]


def chunker(text: str) -> list[str]:
    return chunk_text(text, word_count, target_tokens=64, max_tokens=96)


@pytest.fixture
def embedder():
    return HashingEmbedder(dim=128)


@pytest.fixture
def service(tmp_path, embedder):
    store = CollectionStore(tmp_path / "db")
    store.create_collection("kb")
    store.upsert_documents("kb", DOCS, chunker, embedder.embed)
    return RetrievalService(store, embedder.aembed, chunker)


async def test_search_finds_document(service):
    hits = await service.search("kb", "how do I reset my password", top_k=2)
    assert hits[0].chunk.doc_id == "reset-password"


async def test_index_cached_until_version_changes(service):
    await service.search("kb", "refund", 1)
    await service.search("kb", "export", 1)
    assert service.reloads == 1


async def test_upsert_through_service_is_found_next_request(service):
    result = await service.upsert("kb", [Document("sso", "# Single sign-on\n\nConfigure SAML single sign-on with Okta.")])
    assert result.version == 2
    hits = await service.search("kb", "SAML single sign-on Okta", 1)
    assert hits[0].chunk.doc_id == "sso"


async def test_reloads_after_another_store_instance_writes(tmp_path, service, embedder):
    await service.search("kb", "refund", 1)
    other_process = CollectionStore(tmp_path / "db")  # another replica writing the same file
    other_process.upsert_documents(
        "kb", [Document("webhooks", "# Webhooks\n\nWebhooks retry failed deliveries with backoff.")], chunker,
        embedder.embed,
    )
    hits = await service.search("kb", "webhooks retry deliveries", 1)
    assert hits[0].chunk.doc_id == "webhooks"
    assert service.reloads == 2


async def test_delete_removes_from_search(service):
    await service.search("kb", "refund annual billing", 3)
    await service.delete("kb", "billing-refund")
    hits = await service.search("kb", "refund annual billing", 3)
    assert "billing-refund" not in {h.chunk.doc_id for h in hits}
    assert (await service.get_collection("kb")).documents == 2


async def test_concurrent_searches_rebuild_once(service):
    results = await asyncio.gather(*(service.search("kb", "export csv", 1) for _ in range(20)))
    assert all(r[0].chunk.doc_id == "export-data" for r in results)
    assert service.reloads == 1


async def test_errors(service):
    with pytest.raises(CollectionNotFoundError):
        await service.search("missing", "q", 1)
    with pytest.raises(InvalidInputError) as err:
        await service.search("kb", " ", 1)
    assert err.value.field == "query"
    with pytest.raises(InvalidInputError) as err:
        await service.search("kb", "q", 0)
    assert err.value.field == "top_k"


async def test_embed_failure_on_upsert_writes_nothing(tmp_path, embedder):
    store = CollectionStore(tmp_path / "db")
    store.create_collection("kb")

    async def broken(texts):
        raise ConnectionError("embedder replica gone")

    service = RetrievalService(store, broken, chunker)
    with pytest.raises(EmbeddingError):
        await service.upsert("kb", DOCS)
    assert store.version("kb") == 0 and (await service.list_collections())[0].documents == 0


async def test_empty_collection_returns_no_hits(tmp_path, embedder):
    store = CollectionStore(tmp_path / "db")
    store.create_collection("empty")
    service = RetrievalService(store, embedder.aembed, chunker)
    assert await service.search("empty", "anything", 5) == []
    np.testing.assert_equal(service.reloads, 1)
