from functools import partial

import pytest

from retrieval.chunker import chunk_text
from tests.fakes.hashing_embedder import word_count


def para(n: int, word: str = "word") -> str:
    return " ".join(f"{word}{i}" for i in range(n)) + "."


def test_empty_text_gives_no_chunks():
    assert chunk_text("", word_count) == []
    assert chunk_text("  \n\n  ", word_count) == []


def test_small_text_is_one_chunk():
    text = "# Title\n\nFirst paragraph here.\n\nSecond paragraph."
    assert chunk_text(text, word_count) == [text]


def test_deterministic_for_same_input():
    text = "\n\n".join([f"# H{i}\n\n" + para(40 + i) for i in range(30)])
    first = chunk_text(text, word_count, target_tokens=100, max_tokens=150)
    for _ in range(3):
        assert chunk_text(text, word_count, target_tokens=100, max_tokens=150) == first


def test_heading_starts_new_chunk_when_current_is_non_trivial():
    text = f"# A\n\n{para(30, 'a')}\n\n# B\n\n{para(30, 'b')}"
    chunks = chunk_text(text, word_count, target_tokens=200, max_tokens=300, min_section_tokens=20)
    assert len(chunks) == 2
    assert chunks[0].startswith("# A") and chunks[1].startswith("# B")


def test_sections_below_half_target_merge_by_default():
    text = f"# A\n\n{para(30, 'a')}\n\n# B\n\n{para(30, 'b')}\n\n# C\n\n{para(60, 'c')}\n\n# D\n\n{para(30, 'd')}"
    chunks = chunk_text(text, word_count, target_tokens=100, max_tokens=150)
    assert [c.split("\n")[0] for c in chunks] == ["# A", "# C", "# D"]


def test_tiny_sections_merge():
    text = "# Title\n\nShort intro.\n\n## Section\n\n" + para(30)
    chunks = chunk_text(text, word_count, target_tokens=200, max_tokens=300)
    assert chunks == [text]


def test_heading_not_left_dangling_at_chunk_end():
    text = f"{para(50, 'a')}\n\n## Next part\n\n{para(60, 'b')}"
    chunks = chunk_text(text, word_count, target_tokens=100, max_tokens=120, min_section_tokens=1000)
    assert all(not c.rstrip().splitlines()[-1].startswith("#") for c in chunks)
    assert any(c.startswith("## Next part") for c in chunks)


def test_packs_paragraphs_up_to_target():
    paras = [para(30, f"p{i}x") for i in range(10)]
    chunks = chunk_text("\n\n".join(paras), word_count, target_tokens=100, max_tokens=150)
    assert [word_count(c) for c in chunks] == [90, 90, 90, 30]
    assert "\n\n".join(chunks) == "\n\n".join(paras)


@pytest.mark.parametrize("target,max_tokens", [(20, 30), (50, 64), (384, 512)])
def test_never_exceeds_max_tokens(target, max_tokens):
    sentences = " ".join(para(n % 37 + 1, f"s{n}w") for n in range(200))  # one huge paragraph
    huge_word = "x" * 5000
    text = f"# Big\n\n{sentences}\n\n{huge_word}\n\n```python\n" + "\n".join(
        f"x = {i}  # comment {i}" for i in range(300)
    ) + "\n```\n\n" + para(1000)
    char_count = lambda s: max(word_count(s), len(s) // 40)  # noqa: E731 -- makes the huge word matter
    chunks = chunk_text(text, char_count, target_tokens=target, max_tokens=max_tokens)
    assert chunks
    assert all(char_count(c) <= max_tokens for c in chunks)
    # Nothing is lost: every word of the input appears in the output, in order.
    assert "".join("".join(chunks).split()) == "".join(text.split())


def test_oversized_paragraph_splits_on_sentences():
    sentences = [para(8, f"s{i}w") for i in range(20)]  # 20 sentences of 8 words
    chunks = chunk_text(" ".join(sentences), word_count, target_tokens=30, max_tokens=40)
    assert all(c.endswith(".") for c in chunks)
    assert all(word_count(c) <= 40 for c in chunks)


def test_code_comments_are_not_headings():
    code = "```python\n# not a heading\nx = 1\n\n# still code\ny = 2\n```"
    text = f"# Real\n\n{para(30)}\n\n{code}"
    chunks = chunk_text(text, word_count, target_tokens=200, max_tokens=300)
    assert chunks == [text]


def test_target_clamped_to_max():
    chunks = chunk_text(para(100), partial(word_count), target_tokens=500, max_tokens=40)
    assert all(word_count(c) <= 40 for c in chunks)
