import pickle

import pytest

from retrieval.exceptions import (
    CollectionNotFoundError,
    DocumentNotFoundError,
    EmbeddingError,
    InvalidCollectionNameError,
    InvalidDocumentError,
    RetrievalError,
    StoreWriteError,
)


@pytest.mark.parametrize(
    "err",
    [
        InvalidDocumentError("documents[2].text", "must be a non-empty string"),
        InvalidCollectionNameError("collection", "bad"),
        CollectionNotFoundError("kb"),
        CollectionNotFoundError("kb", "name"),
        DocumentNotFoundError("kb", "doc-1"),
        DocumentNotFoundError("kb", "doc-1", "documents[0].id"),
        EmbeddingError("down"),
        StoreWriteError("locked"),
    ],
)
def test_errors_survive_pickling_with_their_fields(err):
    # Ray pickles exceptions between replicas; the HTTP layer needs the fields on the other side.
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is type(err) and str(copy) == str(err) and isinstance(copy, RetrievalError)
    assert vars(copy) == vars(err)


def test_invalid_document_names_field():
    err = InvalidDocumentError("documents[2].text", "must be a non-empty string")
    assert err.field == "documents[2].text" and isinstance(err, ValueError)
    assert "documents[2].text" in str(err)


def test_not_found_errors_name_their_field():
    # Issue 16: a 404 names the request field (or path parameter) that held the missing name.
    assert CollectionNotFoundError("kb").field == "collection"
    assert CollectionNotFoundError("kb", field="name").field == "name"
    assert str(CollectionNotFoundError("kb", field="name")) == "name: collection not found: 'kb'"
    assert DocumentNotFoundError("kb", "doc-1").field == "doc_id"
    assert str(DocumentNotFoundError("kb", "doc-1")) == "doc_id: document not found: 'kb'/'doc-1'"
