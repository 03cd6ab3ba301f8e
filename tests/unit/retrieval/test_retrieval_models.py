import pytest

from retrieval.models import Chunk, SearchHit, make_chunk


def chunk(metadata: dict) -> Chunk:
    return make_chunk("kb", "reset-password", 2, "Open settings.", "h", metadata)


@pytest.mark.parametrize(
    ("metadata", "title"),
    [({"title": "Reset your password"}, "Reset your password"), ({}, "reset-password"),
     ({"title": ""}, "reset-password"), ({"title": None}, "reset-password"), ({"title": 7}, "7")],
)
def test_chunk_title_is_the_metadata_title_else_the_doc_id(metadata, title):
    assert chunk(metadata).title == title


def test_chunk_id_names_the_document_and_position():
    c = chunk({})
    assert (c.chunk_id, c.doc_id, c.position, c.collection) == ("reset-password#2", "reset-password", 2, "kb")


def test_search_hit_reads_through_to_its_chunk():
    hit = SearchHit(chunk({"title": "Reset"}), 0.75)
    assert (hit.chunk_id, hit.doc_id, hit.title, hit.text, hit.score) == (
        "reset-password#2", "reset-password", "Reset", "Open settings.", 0.75)


@pytest.mark.parametrize("name", ["chunk_id", "doc_id", "title", "text", "score"])
def test_search_hit_is_read_only(name):
    hit = SearchHit(chunk({}), 0.5)
    # FrozenInstanceError is an AttributeError; a frozen slots dataclass on Python 3.11 raises
    # TypeError for a name that is not a field (its generated __setattr__ calls super() of the
    # pre-slots class).
    with pytest.raises((AttributeError, TypeError)):
        setattr(hit, name, "x")
