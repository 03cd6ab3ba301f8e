"""The real all-MiniLM-L6-v2 embedder (offline) finds the right document for labelled queries."""

from functools import partial

import numpy as np
import pytest

from retrieval.chunker import chunk_text
from retrieval.embedder import SentenceTransformerEmbedder, make_async_embed
from retrieval.service import RetrievalService
from retrieval.models import Document
from retrieval.store import CollectionStore
from retrieval.tokens import approx_token_count

pytestmark = pytest.mark.integration

DOCS = [
    Document("password-reset", "# Resetting a forgotten password\n\nIf you cannot sign in, click 'Forgot password' "
             "on the login page. We email a reset link that expires after 30 minutes. Check your spam folder."),
    Document("refund-policy", "# Refund policy\n\nAnnual subscriptions can be refunded within 14 days of purchase. "
             "Monthly plans are not refundable, but you can cancel any time before the next billing date."),
    Document("two-factor", "# Two-factor authentication\n\nEnable 2FA under Account > Security. Scan the QR code "
             "with an authenticator app and store the backup codes somewhere safe."),
    Document("export-csv", "# Exporting reports\n\nAny report can be downloaded as CSV or Excel from the export "
             "menu. Large exports are emailed to you when they are ready."),
    Document("api-rate-limits", "# API rate limits\n\nThe REST API allows 600 requests per minute per token. "
             "Responses over the limit return HTTP 429 with a Retry-After header."),
    Document("retry-decorator", "# Retry with exponential backoff\n\n```python\ndef retry(fn, attempts=5):\n"
             "    for i in range(attempts):\n        try:\n            return fn()\n        except IOError:\n"
             "            time.sleep(2 ** i)\n```\n\nWrap flaky network calls; cap the delay and add jitter."),
]

LABELLED = [
    ("I forgot my password and can't log in", "password-reset"),
    ("can I get my money back for a yearly plan", "refund-policy"),
    ("how do I set up an authenticator app", "two-factor"),
    ("download my report as a spreadsheet", "export-csv"),
    ("what does error 429 too many requests mean", "api-rate-limits"),
    ("python code to retry a failing network call", "retry-decorator"),
]


@pytest.fixture(scope="module")
def embedder():
    return SentenceTransformerEmbedder()


def test_embeddings_are_normalized_and_deterministic(embedder):
    a = embedder.embed(["hello world", "reset password"])
    b = embedder.embed(["hello world", "reset password"])
    assert a.shape == (2, 384) and a.dtype == np.float32 and embedder.dim == 384
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(a, b, atol=1e-6)


async def test_labelled_queries_find_their_document(tmp_path, embedder):
    store = CollectionStore(tmp_path / "db")
    store.create_collection("support_kb")
    chunker = partial(chunk_text, count_tokens=approx_token_count, target_tokens=384, max_tokens=512)
    store.upsert_documents("support_kb", DOCS, chunker, embedder.embed)
    service = RetrievalService(store, make_async_embed(embedder), chunker)
    for query, expected in LABELLED:
        hits = await service.search("support_kb", query, top_k=1)
        assert hits[0].chunk.doc_id == expected, query
