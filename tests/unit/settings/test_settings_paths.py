import subprocess
import sys
from pathlib import Path

from settings import paths


def test_home_defaults_to_the_user_cache(monkeypatch):
    monkeypatch.delenv("TCRAG_HOME", raising=False)
    assert paths.tcrag_home() == Path.home() / ".cache" / "token-cached-rag"


def test_model_and_store_follow_tcrag_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TCRAG_HOME", str(tmp_path))
    monkeypatch.delenv("TCRAG_DATA_DIR", raising=False)
    assert paths.default_model_dir() == tmp_path / "models" / "SmolLM2-135M-Instruct"
    assert paths.default_store_path() == tmp_path / "store" / "collections.sqlite3"


def test_data_dir_env_moves_the_store(tmp_path, monkeypatch):
    monkeypatch.setenv("TCRAG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TCRAG_DATA_DIR", str(tmp_path / "data"))
    assert paths.default_store_path() == (tmp_path / "data").resolve() / "collections.sqlite3"


def test_env_model_path(monkeypatch):
    monkeypatch.delenv("TCRAG_MODEL", raising=False)
    assert paths.env_model_path() is None
    monkeypatch.setenv("TCRAG_MODEL", "")
    assert paths.env_model_path() is None
    monkeypatch.setenv("TCRAG_MODEL", "/models/x")
    assert paths.env_model_path() == "/models/x"


def test_repo_data_dir_holds_the_sample_collections():
    from retrieval.samples import SAMPLE_COLLECTIONS

    assert all((paths.repo_data_dir() / name).is_dir() for name in SAMPLE_COLLECTIONS)


def test_prepare_model_cli_prints_the_settings_path(tmp_path):
    env = {"TCRAG_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "scripts.prepare_model", "--print-path"], env=env,
                         cwd=paths.REPO_ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(tmp_path / "models" / "SmolLM2-135M-Instruct")


def test_settings_imports_nothing_of_ours():
    import ast

    tree = ast.parse(Path(paths.__file__).read_text())
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    modules |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert modules <= {"__future__", "os", "pathlib"}
