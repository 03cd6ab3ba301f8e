"""Where the project keeps its files: computed here and nowhere else.

- ``$TCRAG_HOME`` (default ``~/.cache/token-cached-rag``): the per-user cache root.
- The prepared default model: ``$TCRAG_HOME/models/SmolLM2-135M-Instruct`` (see ``llm.model_files``);
  ``$TCRAG_MODEL`` names another served-model folder instead.
- The collection store: ``$TCRAG_DATA_DIR/collections.sqlite3`` when ``$TCRAG_DATA_DIR`` is set, else
  ``$TCRAG_HOME/store/collections.sqlite3``.
- The repo's ``data/``: the sample knowledge bases and labelled evaluation queries.

Functions, not constants: the environment is read on each call, so tests and child processes that set
it see the paths it implies.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "DEFAULT_MODEL_NAME",
    "REPO_ROOT",
    "STORE_FILENAME",
    "default_model_dir",
    "default_store_path",
    "env_model_path",
    "repo_data_dir",
    "tcrag_home",
]

HOME_ENV = "TCRAG_HOME"
DATA_DIR_ENV = "TCRAG_DATA_DIR"
MODEL_ENV = "TCRAG_MODEL"

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
"""Folder name of the embedded default model that ``python -m scripts.prepare_model`` prepares."""
STORE_FILENAME = "collections.sqlite3"
"""File name of the collection store inside a data directory."""
REPO_ROOT = Path(__file__).resolve().parents[1]


def tcrag_home() -> Path:
    """``$TCRAG_HOME``, else ``~/.cache/token-cached-rag``."""
    return Path(os.environ.get(HOME_ENV, Path.home() / ".cache" / "token-cached-rag"))


def default_model_dir() -> Path:
    """Where the prepared embedded default model lives: ``$TCRAG_HOME/models/SmolLM2-135M-Instruct``."""
    return tcrag_home() / "models" / DEFAULT_MODEL_NAME


def env_model_path() -> str | None:
    """``$TCRAG_MODEL`` (a served-model folder chosen by the environment), or None when unset or empty."""
    return os.environ.get(MODEL_ENV) or None


def default_store_path() -> Path:
    """The collection store file: ``$TCRAG_DATA_DIR/collections.sqlite3``, else
    ``$TCRAG_HOME/store/collections.sqlite3``."""
    data_dir = os.environ.get(DATA_DIR_ENV)
    if data_dir:
        return Path(data_dir).expanduser().resolve() / STORE_FILENAME
    return tcrag_home() / "store" / STORE_FILENAME


def repo_data_dir() -> Path:
    """The repo's ``data/`` folder: one subfolder of sample documents per collection, and ``eval/``."""
    return REPO_ROOT / "data"
