from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from retrieval.models import SearchHit, content_hash, make_chunk

DATA_DIR = Path(__file__).resolve().parents[3] / "data"


def retrieved(chunk_id: str, doc_id: str, title: str, text: str, score: float, collection: str = "test") -> SearchHit:
    """A search hit as retrieval returns it: the chunk (title in its metadata) and its score."""
    position = int(chunk_id.rpartition("#")[2] or 0)
    chunk = make_chunk(collection, doc_id, position, text, content_hash(text), {"title": title})
    assert chunk.chunk_id == chunk_id
    return SearchHit(chunk, score)


def source_from_data(collection: str, doc_id: str, score: float, position: int = 0) -> SearchHit:
    """A retrieved chunk holding the whole sample document (real titles and section text)."""
    text = (DATA_DIR / collection / f"{doc_id}.md").read_text(encoding="utf-8")
    match = re.search(r"^# (.+)$", text, re.M)
    title = match.group(1).strip() if match else doc_id
    return retrieved(f"{doc_id}#{position}", doc_id, title, text, score, collection)


@pytest.fixture
def make_source() -> Callable[..., SearchHit]:
    return source_from_data


GARBAGE_OUTPUTS = [
    "",
    "   \n\n  ",
    "<|im_end|>",
    "assistant assistant assistant",
    "```",
    "```python\n",
    "line [high] : :",
    "Title:\nOperator:\n### \n- \n* ",
    "\x00\x01\ufffd" * 20,
    "def test_(:\n  assert",
    "line 99999999999999999999 [critical] x: y",
    "Summary:",
    "a" * 20000,
]


@pytest.fixture(params=GARBAGE_OUTPUTS, ids=range(len(GARBAGE_OUTPUTS)))
def garbage(request) -> str:
    return request.param
