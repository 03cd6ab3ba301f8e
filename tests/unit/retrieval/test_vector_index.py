import numpy as np
import pytest

from retrieval.index import ExactCosineIndex
from retrieval.models import Chunk


def make(n: int, dim: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    chunks = [
        Chunk(f"d{i}#0", f"d{i}", "kb", 0, f"text {i}", f"h{i}", {"team": "a" if i % 2 else "b", "tags": [i % 3]})
        for i in range(n)
    ]
    return chunks, emb


def test_matches_brute_force_sort():
    chunks, emb = make(500)
    index = ExactCosineIndex(chunks, emb)
    q = np.random.default_rng(1).standard_normal(16).astype(np.float32)
    hits = index.search(q, 10)
    expected = np.argsort(-(emb @ (q / np.linalg.norm(q))))[:10]
    assert [h.chunk.doc_id for h in hits] == [f"d{i}" for i in expected]
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))


def test_exact_vector_scores_one():
    chunks, emb = make(50)
    hits = ExactCosineIndex(chunks, emb).search(emb[7] * 3.0, 1)  # unnormalized query is fine
    assert hits[0].chunk.doc_id == "d7" and hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_top_k_larger_than_index_and_empty_index():
    chunks, emb = make(3)
    assert len(ExactCosineIndex(chunks, emb).search(emb[0], 10)) == 3
    assert ExactCosineIndex([], np.zeros((0, 16), np.float32)).search(emb[0], 5) == []


def test_where_filters_on_metadata_equality():
    chunks, emb = make(200)
    index = ExactCosineIndex(chunks, emb)
    hits = index.search(emb[4], 20, where={"team": "a"})
    assert len(hits) == 20 and all(h.chunk.metadata["team"] == "a" for h in hits)
    hits = index.search(emb[4], 500, where={"team": "b", "tags": [1]})
    assert hits and all(h.chunk.metadata["team"] == "b" and h.chunk.metadata["tags"] == [1] for h in hits)
    assert len(hits) == sum(1 for c in chunks if c.metadata["team"] == "b" and c.metadata["tags"] == [1])
    assert index.search(emb[4], 5, where={"team": "zzz"}) == []
    assert index.search(emb[4], 5, where={"missing": 1}) == []


def test_bad_arguments():
    chunks, emb = make(5)
    index = ExactCosineIndex(chunks, emb)
    with pytest.raises(ValueError):
        index.search(emb[0], 0)
    with pytest.raises(ValueError):
        index.search(np.ones(3, np.float32), 1)
    with pytest.raises(ValueError):
        ExactCosineIndex(chunks, emb[:4])
