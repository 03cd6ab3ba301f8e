"""Token counters for the chunker: the served model's tokenizer, or a conservative estimate.

Chunk budgets are in the served model's tokens, so the app passes its real tokenizer. Command-line
tools accept a tokenizer folder (``--tokenizer``, ``TCRAG_MODEL``, else the prepared default model
folder if present); without one they fall back to
an estimate that over-counts (about 3 UTF-8 bytes per token, where BPE tokenizers average ~4 on
English), which yields somewhat smaller chunks but never oversized ones in practice.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

from settings.paths import default_model_dir, env_model_path

__all__ = ["approx_token_count", "make_token_counter"]

logger = logging.getLogger(__name__)


def approx_token_count(text: str) -> int:
    """Conservative token estimate: ceil(UTF-8 bytes / 3)."""
    return math.ceil(len(text.encode("utf-8")) / 3)


def make_token_counter(tokenizer_path: str | None = None) -> Callable[[str], int]:
    """Count tokens with the HF tokenizer at `tokenizer_path` (or `$TCRAG_MODEL`), else estimate."""
    path = tokenizer_path or env_model_path()
    if not path:
        default = default_model_dir()  # where `python -m scripts.prepare_model` puts the default model
        if (default / "tokenizer.json").is_file():
            path = str(default)
    if path and Path(path).is_dir():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        logger.info("counting chunk tokens with the tokenizer in %s", path)

        def count(text: str) -> int:
            return len(tok.encode(text, add_special_tokens=False))

        return count
    if tokenizer_path:
        raise FileNotFoundError(f"tokenizer folder not found: {tokenizer_path}")
    logger.warning("no tokenizer folder given; chunk sizes use a conservative estimate")
    return approx_token_count
