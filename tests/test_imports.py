"""How nepa's modules import each other: no cycle, and params are read without torch."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from nepa.verbs import VERBS

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "timm", "deepspeed")


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """module -> the package's modules it imports, at the top level or inside functions. A `from a.b import c`
    imports the module a.b.c if there is one, else a.b; a package named on the way is imported too, unless
    it is one of the importer's own packages (those are loaded before it anyway)."""
    files = {module_name(p, root): p for p in (root / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        current = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(current.split(".")[: len(current.split(".")) - node.level + 1]) if node.level else ""
                base = ".".join(filter(None, [base, node.module]))
                targets.update(f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names)
        chains = {".".join(t.split(".")[:i]) for t in targets for i in range(1, t.count(".") + 2)}
        graph[name] = {t for t in chains if t in files and t not in own and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules, the first repeated at the end), or None."""
    state: dict[str, str] = {}  # "open" while on the path, "done" once explored

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt) :], node, nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, node])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [])):
            return cycle
    return None


def test_nepa_has_no_import_cycle() -> None:
    graph = import_graph(ROOT, "nepa")
    # The CLI imports each verb's module by name (nepa/verbs.py): those are its imports too.
    graph["nepa.cli"] |= {verb.module for verb in VERBS.values()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])
    assert "nepa.data.prepare" in graph["nepa.cli"] and "nepa.config" in graph["nepa.engine.pretrain"]


def test_the_cycle_finder_finds_cycles_through_functions_and_packages(tmp_path: Path) -> None:
    """The checker above on a planted tree: a cycle through a function-level import and a package's __init__."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pkg.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("from . import c\n")
    (pkg / "sub" / "b.py").write_text("")
    (pkg / "sub" / "c.py").write_text("import pkg.a\n")
    assert find_cycle(import_graph(tmp_path, "pkg")) == ["pkg.a", "pkg.sub", "pkg.sub.c", "pkg.a"]
    (pkg / "sub" / "c.py").write_text("")
    assert find_cycle(import_graph(tmp_path, "pkg")) is None


def loaded_after(code: str) -> list[str]:
    """The heavy packages a fresh interpreter has loaded after running `code` (in the repository root)."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [m for m in json.loads(out.stdout.splitlines()[-1]) if m in HEAVY]


@pytest.mark.parametrize(
    "code",
    [
        "import nepa.config",
        "import nepa.pipeline, nepa.launch",  # the Snakefile's and a SLURM task's imports
        "from nepa.config import load_params; load_params('params.yaml', size='base')",
        "import pathlib, nepa.pipeline as p, nepa.config as c; p.render(pathlib.Path('.'), c.load_params())",
        "from nepa.cli import main; main(['params'])",
    ],
)
def test_reading_params_does_not_import_torch(code: str) -> None:
    assert loaded_after(code) == []


def test_the_probe_sees_torch_where_it_is_imported() -> None:
    assert loaded_after("import nepa.objectives") == ["timm", "torch"]
