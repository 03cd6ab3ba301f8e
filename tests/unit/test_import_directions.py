"""Allowed import directions between the repo's top-level packages (issue 12; /tmp/plan/REFACTOR_PLAN.md).

Every ``.py`` file of every top-level package is parsed (``ast``, nothing is imported) and each import of
one of OUR packages is checked against ``ALLOWED``: module-level imports, lazy imports inside functions,
``TYPE_CHECKING`` blocks, relative imports and ``importlib.import_module("...")`` / ``__import__("...")``
with a literal name alike. A package may always import itself. A failure lists ``file:line`` and the import.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# The layers below `deployments/` (everything `deployments/` may import).
BELOW_DEPLOYMENTS = frozenset(
    {"tokenization", "routing", "settings", "cache", "retrieval", "llm", "agents", "rag"}
)

# package -> the packages of ours it may import (besides itself). The table of REFACTOR_PLAN.md.
ALLOWED: dict[str, frozenset[str]] = {
    "tokenization": frozenset(),
    "routing": frozenset(),
    "settings": frozenset(),
    "cache": frozenset({"tokenization", "routing"}),
    "retrieval": frozenset({"tokenization", "settings"}),
    "llm": frozenset({"tokenization", "settings"}),
    "agents": frozenset({"retrieval", "llm"}),  # only retrieval.models and llm.types: see RESTRICTED
    "rag": frozenset({"cache", "retrieval", "llm", "agents", "routing", "tokenization", "settings"}),
    "deployments": BELOW_DEPLOYMENTS,
    "scripts": frozenset({"llm", "settings", "retrieval", "tokenization"}),
    "testbed": BELOW_DEPLOYMENTS,  # settings, and anything below deployments
    "benchmarks": frozenset(),  # filled in below: anything but tests
    "loadtests": frozenset(),
    "tests": frozenset(),  # filled in below: anything
}
OURS = frozenset(ALLOWED)
ALLOWED["benchmarks"] = OURS - {"tests"}
ALLOWED["loadtests"] = OURS - {"tests"}
ALLOWED["tests"] = OURS

# (importer, imported) -> the only modules of `imported` the importer may reach.
RESTRICTED: dict[tuple[str, str], frozenset[str]] = {
    ("agents", "retrieval"): frozenset({"retrieval.models"}),
    ("agents", "llm"): frozenset({"llm.types"}),
}

SKIP_DIRS = {"__pycache__", "data", "build", "dist"}


@dataclass(frozen=True)
class ImportRef:
    path: Path
    line: int
    module: str  # the absolute dotted module imported ("retrieval.models", "cache")
    statement: str  # the source text, for the failure message

    @property
    def top(self) -> str:
        return self.module.split(".")[0]

    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}: {self.statement}"


def top_level_packages() -> list[str]:
    """Folders at the repo root holding Python files (hidden folders, the venv and build output aside)."""
    found = []
    for entry in sorted(REPO.iterdir()):
        if not entry.is_dir() or entry.name.startswith(".") or entry.name in SKIP_DIRS:
            continue
        if entry.name.endswith(".egg-info"):
            continue
        if any(p for p in entry.rglob("*.py") if "__pycache__" not in p.parts):
            found.append(entry.name)
    return found


def module_name(path: Path) -> tuple[str, bool]:
    """Dotted module name of a file under the repo root, and whether it is a package's ``__init__``."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    is_init = parts[-1] == "__init__"
    if is_init:
        parts = parts[:-1]
    return ".".join(parts), is_init


def _resolve_relative(path: Path, level: int, module: str | None) -> str:
    name, is_init = module_name(path)
    package = name.split(".") if is_init else name.split(".")[:-1]
    if level - 1 > len(package) - 1:
        # climbs above the top-level package: report it as such (never an allowed direction)
        return "<above-top-level>" + ("." + module if module else "")
    base = package[: len(package) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _statement(source_lines: list[str], node: ast.AST) -> str:
    first = source_lines[node.lineno - 1].strip()
    end = getattr(node, "end_lineno", node.lineno)
    return first if end == node.lineno else first + " ..."


def imports_of(path: Path, source: str | None = None) -> list[ImportRef]:
    """Every import in a file, anywhere in it (module level, functions, classes, if-blocks)."""
    source = path.read_text(encoding="utf-8") if source is None else source
    tree = ast.parse(source, filename=str(path))
    lines = source.splitlines()
    refs: list[ImportRef] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                refs.append(ImportRef(path, node.lineno, alias.name, _statement(lines, node)))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = _resolve_relative(path, node.level, node.module)
            # `from pkg import sub` may name a submodule: record pkg.sub so restrictions can see it
            for alias in node.names:
                target = f"{base}.{alias.name}" if alias.name != "*" else base
                refs.append(ImportRef(path, node.lineno, target, _statement(lines, node)))
        elif isinstance(node, ast.Call) and node.args and _is_dynamic_import(node.func):
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and not arg.value.startswith("."):
                refs.append(ImportRef(path, node.lineno, arg.value, _statement(lines, node)))
    return sorted(refs, key=lambda r: r.line)  # ast.walk is breadth-first


def _is_dynamic_import(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in {"__import__", "import_module"}
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


def python_files(package: str) -> list[Path]:
    return sorted(p for p in (REPO / package).rglob("*.py") if "__pycache__" not in p.parts)


def violations(package: str, refs: list[ImportRef]) -> list[str]:
    allowed = ALLOWED[package] | {package}
    bad = []
    for ref in refs:
        top = ref.top
        if top.startswith("<above-top-level>"):
            bad.append(f"{ref.where()}  (relative import above the top-level package)")
            continue
        if top not in OURS or top == package:
            continue  # third-party / stdlib, or the package itself
        if top not in allowed:
            bad.append(f"{ref.where()}  ({package} -> {top} is not allowed)")
            continue
        only = RESTRICTED.get((package, top))
        if only is not None and not any(ref.module == m or ref.module.startswith(m + ".") for m in only):
            bad.append(f"{ref.where()}  ({package} may import only {sorted(only)} of {top}, not {ref.module})")
    return list(dict.fromkeys(bad))  # one line per statement, not per imported name


def _report(package: str, bad: list[str]) -> str:
    allowed = sorted(ALLOWED[package]) or ["nothing of ours"]
    return (f"{len(bad)} import(s) in {package}/ break the allowed directions "
            f"({package} may import: {', '.join(allowed)}):\n  " + "\n  ".join(bad))


# ------------------------------------------------------------------ the scanner itself


def test_scanner_sees_lazy_relative_and_dynamic_imports():
    pkg = REPO / "cache" / "_probe_.py"  # only its path is used, to resolve the relative import
    source = (
        "import os\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from llm.types import GenerateRequest\n"
        "from . import keys\n"
        "from .. import outside\n"
        "def f():\n"
        "    from rag import pipeline\n"
        "    import importlib\n"
        "    return importlib.import_module('deployments.app')\n"
        "class C:\n"
        "    def g(self):\n"
        "        import tests.fakes.fake_engine\n"
    )
    refs = imports_of(pkg, source)
    modules = {r.module for r in refs}
    assert {"os", "llm.types.GenerateRequest", "cache.keys", "rag.pipeline", "deployments.app",
            "tests.fakes.fake_engine"} <= modules
    bad = violations("cache", refs)
    assert [b.split("  (")[0] for b in bad] == [
        "cache/_probe_.py:4: from llm.types import GenerateRequest",
        "cache/_probe_.py:6: from .. import outside",
        "cache/_probe_.py:8: from rag import pipeline",
        "cache/_probe_.py:10: return importlib.import_module('deployments.app')",
        "cache/_probe_.py:13: import tests.fakes.fake_engine",
    ]


def test_agents_may_import_only_retrieval_models():
    probe = REPO / "agents" / "_probe_.py"
    source = ("from retrieval.models import SearchHit\nfrom retrieval import models\n"
              "import retrieval.models\nfrom retrieval.store import CollectionStore\nfrom retrieval import store\n")
    bad = violations("agents", imports_of(probe, source))
    assert [b.split(": ", 1)[0] for b in bad] == ["agents/_probe_.py:4", "agents/_probe_.py:5"]


# ------------------------------------------------------------------ the repo


def test_every_top_level_package_has_a_row_in_the_table():
    missing = [p for p in top_level_packages() if p not in ALLOWED]
    assert not missing, (f"top-level package(s) {missing} have no row in ALLOWED (tests/unit/test_import_directions.py)"
                         " nor in the package table of ARCHITECTURE.md: add one")


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_allowed_import_directions(package):
    if not (REPO / package).is_dir():
        pytest.skip(f"{package}/ does not exist (yet)")
    refs = [ref for path in python_files(package) for ref in imports_of(path)]
    bad = violations(package, refs)
    if bad:
        pytest.fail(_report(package, bad), pytrace=False)


def test_nothing_outside_tests_imports_tests():
    bad = [ref.where() for package in top_level_packages() if package != "tests"
           for path in python_files(package) for ref in imports_of(path) if ref.top == "tests"]
    if bad:
        pytest.fail("only tests/ may import tests (shared helpers live in testbed/):\n  "
                    + "\n  ".join(dict.fromkeys(bad)), pytrace=False)
