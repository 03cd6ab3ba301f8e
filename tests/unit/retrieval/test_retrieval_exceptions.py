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
        DocumentNotFoundError("kb", "doc-1"),
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
