from __future__ import annotations

from retrieval.models import SearchHit
from tests.unit.agents.conftest import retrieved
from agents.text import (
    best_per_document,
    clean_model_text,
    code_blocks,
    code_identifiers,
    markdown_section,
    mentioned_documents,
    resolve_document,
    split_items,
)

DOC = """# Title

Intro paragraph
on two lines.

## Problem

It hurts.

### Detail

More.

## Risks

```python
# not a heading
```
- one
"""


def _source(doc_id: str, title: str, chunk: int = 0) -> SearchHit:
    return retrieved(f"{doc_id}#{chunk}", doc_id, title, "", 0.5)


def test_clean_model_text_drops_chat_markers_and_non_strings():
    assert clean_model_text("  Hello<|im_end|>\n<|im_start|>assistant") == "Hello"
    assert clean_model_text(None) == ""


def test_code_blocks_including_an_unterminated_one():
    text = "a\n```python\nx = 1\n```\nb\n```\ny = 2\n"
    assert code_blocks(text) == [("python", "x = 1"), ("", "y = 2")]


def test_markdown_section_stops_at_same_level_and_ignores_fenced_comments():
    assert markdown_section(DOC, "problem") == "It hurts.\n\n### Detail\n\nMore."
    assert markdown_section(DOC, "Risks") == "```python\n# not a heading\n```\n- one"
    assert markdown_section(DOC, "Offer") == ""


def test_split_items():
    assert split_items("- a\n- b\n  continued\n* c") == ["a", "b continued", "c"]
    assert split_items("x; y; and z.") == ["x", "y", "z"]
    assert split_items("ads (paid, organic), SEO, and referrals") == ["ads (paid, organic)", "SEO", "referrals"]
    assert split_items("  ") == []


def test_code_identifiers_across_languages():
    code = "def load():\nclass Cart:\nfunction render() {}\nfunc (s *Srv) Serve() {}\nconst go = async () => 1\n"
    assert code_identifiers(code) == ["load", "Cart", "render", "Serve", "go"]


def test_documents_by_mention_and_label():
    sources = [_source("reset-forgotten-password", "Reset a Forgotten Password"),
               _source("audit-log", "Audit Log"), _source("reset-forgotten-password", "Reset a Forgotten Password", 1)]
    assert [s.chunk_id for s in best_per_document(sources)] == ["reset-forgotten-password#0", "audit-log#0"]
    assert mentioned_documents("see the AUDIT LOG page", sources) == ["audit-log"]
    assert mentioned_documents("nothing relevant", sources) == []
    assert resolve_document("Reset a forgotten password", sources) == "reset-forgotten-password"
    assert resolve_document("audit", sources) == "audit-log"
    assert resolve_document("x", sources) is None
    assert resolve_document("", sources) is None


def test_best_per_document_keeps_the_best_chunk_in_first_appearance_order():
    low = retrieved("a#0", "a", "A", "", 0.2)
    other = retrieved("b#0", "b", "B", "", 0.5)
    high = retrieved("a#3", "a", "A", "", 0.9)
    assert [s.chunk_id for s in best_per_document([low, other, high])] == ["a#3", "b#0"]
