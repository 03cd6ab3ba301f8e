from cache.keys import ChunkKey, ChunkRef, hash_content


def chunk(text="alpha beta", collection="support_kb"):
    return ChunkRef(collection=collection, doc_id="doc-1", chunk_id="doc-1#0", text=text)


def test_hash_content_is_sha256_hex():
    assert hash_content("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_storage_key_format():
    key = ChunkKey.for_chunk(chunk(), "0123456789abcdef" + "9" * 48)
    assert key.storage_key == f"tcrag:tok:support_kb:0123456789abcdef:{hash_content('alpha beta')}"


def test_key_changes_with_content_tokenizer_and_collection():
    fp = "a" * 64
    base = ChunkKey.for_chunk(chunk(), fp).storage_key
    assert ChunkKey.for_chunk(chunk(text="alpha beta!"), fp).storage_key != base
    assert ChunkKey.for_chunk(chunk(), "b" * 64).storage_key != base
    assert ChunkKey.for_chunk(chunk(collection="docs"), fp).storage_key != base


def test_key_ignores_doc_and_chunk_ids():
    # Content-addressed: the same text under another document shares the entry.
    other = ChunkRef("support_kb", "doc-2", "doc-2#3", "alpha beta")
    assert ChunkKey.for_chunk(other, "a" * 64) == ChunkKey.for_chunk(chunk(), "a" * 64)
