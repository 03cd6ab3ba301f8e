"""Load the sample knowledge bases in `data/<collection>/` into an empty store.

Run at startup so that a fresh `make run` has six populated collections; idempotent, because a
collection that already holds documents (from an earlier start or from users) is left untouched.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from retrieval.models import COLLECTION_NAME_RE, DOC_ID_RE, Document
from retrieval.store import CollectionStore

__all__ = ["SAMPLE_COLLECTIONS", "load_sample_collections", "pending_sample_loads", "read_folder"]

logger = logging.getLogger(__name__)

SAMPLE_COLLECTIONS: tuple[str, ...] = (
    "support_kb",
    "documentation",
    "business_templates",
    "test_templates",
    "code_patterns",
    "darwin_operators",
)
"""The agents' default collections; created (possibly empty) on every load."""

_SKIP_DIRS = frozenset({"eval"})
_TITLE = re.compile(r"^#\s+(.+?)\s*#*\s*$", re.MULTILINE)
_DOC_SUFFIXES = (".md", ".txt")

Progress = Callable[[str, int, int], None]
"""progress(collection, documents_done, documents_total)."""


def _doc_id(stem: str) -> str:
    if DOC_ID_RE.fullmatch(stem):
        return stem
    cleaned = re.sub(r"[^A-Za-z0-9._:-]+", "-", stem).strip("-")[:128] or "doc"
    logger.warning("file stem %r is not a valid document id; using %r", stem, cleaned)
    return cleaned


def read_folder(folder: Path) -> list[Document]:
    """Documents of the *.md / *.txt files in `folder` (sorted by name): id = file stem, metadata
    title = first `# ` heading (else the stem) and source = file name. Empty files are skipped."""
    docs: list[Document] = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _DOC_SUFFIXES):
        text = path.read_text(encoding="utf-8")
        if not text.strip():
            logger.warning("skipping empty file %s", path)
            continue
        match = _TITLE.search(text)
        title = match.group(1) if match else path.stem
        docs.append(Document(id=_doc_id(path.stem), text=text, metadata={"title": title, "source": path.name}))
    return docs


def pending_sample_loads(store: CollectionStore, data_dir: Path) -> dict[str, list[Document]]:
    """Create the default collections (and any other valid folder's) and return, per collection,
    the documents to load: the folder's documents when the collection is empty, else none."""
    data_dir = Path(data_dir)
    names = list(SAMPLE_COLLECTIONS)
    if data_dir.is_dir():
        names.extend(
            sorted(
                p.name
                for p in data_dir.iterdir()
                if p.is_dir()
                and p.name not in _SKIP_DIRS
                and p.name not in names
                and COLLECTION_NAME_RE.fullmatch(p.name)
            )
        )
    pending: dict[str, list[Document]] = {}
    for name in names:
        info = store.create_collection(name)
        folder = data_dir / name
        pending[name] = read_folder(folder) if info.documents == 0 and folder.is_dir() else []
    return pending


def load_sample_collections(
    store: CollectionStore,
    data_dir: Path,
    chunker: Callable[[str], list[str]],
    embed: Callable[[list[str]], np.ndarray],
    progress: Progress | None = None,
) -> dict[str, int]:
    """Create the six default collections and fill each empty one from `data_dir/<collection>/`.

    Returns the number of documents loaded per collection (0 when it was already populated or has no
    folder). Documents go in batches no larger than the store's per-call limit; each batch is atomic,
    and a batch that another process loaded meanwhile is skipped as unchanged.
    """
    loaded: dict[str, int] = {}
    batch_size = min(store.limits.max_documents_per_call, 32)
    for name, docs in pending_sample_loads(store, data_dir).items():
        for start in range(0, len(docs), batch_size):
            store.upsert_documents(name, docs[start : start + batch_size], chunker, embed)
            if progress is not None:
                progress(name, min(start + batch_size, len(docs)), len(docs))
        loaded[name] = len(docs)
        if docs:
            logger.info("loaded %d sample documents into %s", len(docs), name)
    return loaded
