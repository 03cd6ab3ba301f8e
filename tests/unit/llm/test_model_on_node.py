"""The model on each node of a cluster (issue 17): the embedded default is prepared where a replica starts,
once per node even when several replicas start together; another folder must already be there."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from llm import model_files


@pytest.fixture
def default_dir(tmp_path, monkeypatch) -> Path:
    target = tmp_path / "models" / "SmolLM2-135M-Instruct"
    monkeypatch.setattr(model_files, "default_model_dir", lambda: target)
    return target


@pytest.fixture
def preparations(monkeypatch) -> list[str]:
    """Stands in for the ~1 minute conversion: writes a complete folder, slowly, and counts the calls."""
    calls: list[str] = []

    def prepare(target: Path, reason: str | None) -> Path:
        calls.append(reason or "forced")
        time.sleep(0.2)  # long enough for a second replica to arrive while the first prepares
        target.mkdir(parents=True, exist_ok=True)  # the real one replaces a half folder whole
        for name in model_files.REQUIRED_FILES:
            (target / name).write_text("{}")
        (target / "model.safetensors").write_bytes(b"w")
        (target / model_files.MARKER).write_text(json.dumps({"sha256": {}}))
        return target

    monkeypatch.setattr(model_files, "_prepare", prepare)
    return calls


def test_the_default_model_missing_on_a_node_is_prepared_there_once(default_dir, preparations):
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(model_files.model_on_this_node(str(default_dir))))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [str(default_dir)] * 3
    assert len(preparations) == 1 and model_files.verify_model_dir(default_dir) is None
    assert model_files.model_on_this_node(str(default_dir)) == str(default_dir) and len(preparations) == 1


def test_a_half_written_default_folder_is_rebuilt(default_dir, preparations):
    default_dir.mkdir(parents=True)
    (default_dir / "config.json").write_text("{}")  # no marker: a preparation that never finished
    assert model_files.model_on_this_node(str(default_dir)) == str(default_dir)
    assert preparations == ["no tcrag_prepared.json marker (never finished)"]


def test_a_users_model_folder_missing_on_this_node_is_a_clear_error(default_dir, preparations, tmp_path):
    with pytest.raises(FileNotFoundError, match="not on this node"):
        model_files.model_on_this_node(str(tmp_path / "my-model"))
    (tmp_path / "my-model").mkdir()
    assert model_files.model_on_this_node(str(tmp_path / "my-model")) == str(tmp_path / "my-model")
    assert preparations == []
