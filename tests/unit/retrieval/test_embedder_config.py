"""`EmbedderConfig`: the embedder's speed settings come from config (serve_config.yaml `retrieval.embedder`),
resolved against the machine, and reach `SentenceTransformerEmbedder` unchanged. No model is loaded."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from retrieval import config as config_module
from retrieval import embedder as embedder_module
from retrieval.config import EmbedderConfig
from retrieval.embedder import available_cores, cpu_has_native_bf16


def test_defaults_are_the_benchmarks_winner():
    config = EmbedderConfig()
    assert (config.batch_size, config.max_seq_length, config.precision, config.num_threads) == (32, None, "auto", None)


def test_threads_default_to_the_cores_the_process_may_use():
    assert EmbedderConfig().resolved_num_threads() == available_cores() >= 1
    assert EmbedderConfig(num_threads=3).resolved_num_threads() == 3
    with pytest.raises(ValidationError):
        EmbedderConfig(precision="float16")


def test_create_passes_every_setting_to_the_embedder(monkeypatch):
    made = {}

    class Recorder:
        def __init__(self, *args, **kwargs):
            made.update(args=args, kwargs=kwargs)

    monkeypatch.setattr(config_module, "SentenceTransformerEmbedder", Recorder)
    EmbedderConfig(model_path="/m", num_threads=2, batch_size=8, max_seq_length=128, precision="bfloat16").create()
    assert made == {"args": ("/m", "cpu"),
                    "kwargs": {"batch_size": 8, "num_threads": 2, "max_seq_length": 128, "precision": "bfloat16"}}


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("flags\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n")
    assert cpu_has_native_bf16(info)
    info.write_text("flags\t: fpu avx2 avx512f\n")
    assert not cpu_has_native_bf16(info)
    assert not cpu_has_native_bf16(tmp_path / "missing")


def test_auto_precision_is_bf16_only_on_a_cpu_that_has_it(monkeypatch):
    monkeypatch.setattr(embedder_module, "cpu_has_native_bf16", lambda: True)
    assert embedder_module._resolve_precision("auto", "cpu") == "bfloat16"
    assert embedder_module._resolve_precision("auto", "cuda") == "float32"
    assert embedder_module._resolve_precision("float32", "cpu") == "float32"
    monkeypatch.setattr(embedder_module, "cpu_has_native_bf16", lambda: False)
    assert embedder_module._resolve_precision("auto", "cpu") == "float32"
    assert embedder_module._resolve_precision("bfloat16", "cpu") == "bfloat16"
