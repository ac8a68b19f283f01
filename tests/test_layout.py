"""The package's shape, as docs/architecture.md states it: layers imported in one direction, no import
circle, a small root, and files and functions of a readable size."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "swiftsd"
ORDER = ["engine", "drafters", "optimize", "hf", "persist", "loading", "core", "server", "bench", "cli"]


def _modules() -> dict[str, Path]:
    mods = {}
    for f in ROOT.rglob("*.py"):
        parts = list(f.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


def _edges() -> dict[str, set[str]]:
    """Module -> the package modules it imports (TYPE_CHECKING and function-level imports included)."""
    mods = _modules()

    def target(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        pkg = m if f.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            for n in names:
                t = target(n)
                if t and t != m and not m.startswith(t + "."):
                    graph[m].add(t)
    return graph


def test_the_import_graph_has_no_circle() -> None:
    graph, state, circles = _edges(), {}, []

    def visit(v: str, path: list[str]) -> None:
        state[v] = "open"
        for w in sorted(graph[v]):
            if state.get(w) == "open":
                circles.append(" -> ".join(path[path.index(w):] + [w]) if w in path else f"{v} -> {w}")
            elif w not in state:
                visit(w, path + [w])
        state[v] = "done"

    for v in sorted(graph):
        if v not in state:
            visit(v, [v])
    assert circles == []


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ORDER) else None


def test_layers_import_only_the_layers_before_them() -> None:
    wrong = []
    for m, targets in _edges().items():
        mine = _layer(m)
        for t in targets:
            theirs = _layer(t)
            if mine is None and theirs is not None and m != "swiftsd":
                wrong.append(f"{m} (package root) imports {t}")
            elif mine and theirs and mine != theirs and ORDER.index(theirs) > ORDER.index(mine):
                wrong.append(f"{m} ({mine}) imports {t} ({theirs})")
    assert wrong == []


def test_the_package_root_holds_at_most_six_modules() -> None:
    assert len([f for f in ROOT.glob("*.py")]) <= 6


@pytest.mark.parametrize("path", sorted(ROOT.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_files_and_functions_stay_readable(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count("\n") <= 400, f"{path.name}: {text.count(chr(10))} lines"
    long = [f"{n.name} ({n.end_lineno - n.lineno} lines)" for n in ast.walk(ast.parse(text))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno > 60]
    assert long == []
