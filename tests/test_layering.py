"""The package layering of DESIGN §2 (cache knows no torch, heads and extractors know no storage or pipeline, common is
the bottom) and no import cycle between the modules of a package."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "cache", "extractors", "heads", "pipeline", "aigi")
TORCH = {"torch", "timm", "open_clip"}
FORBIDDEN = {  # `aigi` (the public Python API) is the top: it may import all, nothing imports it
    "common": {"cache", "extractors", "heads", "pipeline", "aigi"},
    "cache": {*TORCH, "extractors", "heads", "pipeline", "aigi"},
    "heads": {"extractors", "cache", "pipeline", "aigi"},
    "extractors": {"cache", "heads", "pipeline", "aigi"},
    "pipeline": {"aigi"},
}


def imported_modules(path: Path, *, package: str = "") -> set[str]:
    """Every module `path` imports (also inside functions); `from a import b` counts as `a` and `a.b`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing module's package
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([base] if base else [])])
            if base:
                names.add(base)
                names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def imported_roots(path: Path) -> set[str]:
    return {name.split(".")[0] for name in imported_modules(path) if name}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (a package import counts as its `__init__`)."""
    files = {module_name(f): f for f in sorted((ROOT / package).rglob("*.py"))}
    graph = {}
    for name, path in files.items():
        pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = {m for m in imported_modules(path, package=pkg) if m in files and m != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` as [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_respect_layering(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"package {package} has no modules"
    bad = {str(f.relative_to(ROOT)): sorted(imported_roots(f) & FORBIDDEN[package]) for f in files}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"forbidden imports (DESIGN §2): {bad}"


def test_checker_sees_forbidden_import(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("import os\nfrom torch import nn\nimport heads.linear\nfrom . import x\n")
    assert imported_roots(f) == {"os", "torch", "heads"}


def test_cache_uses_only_the_torch_free_modules_of_common() -> None:
    used = {m for f in (ROOT / "cache").rglob("*.py") for m in imported_modules(f) if m.startswith("common.")}
    for name in used:
        path = ROOT / (name.replace(".", "/") + ".py")
        if path.is_file():
            assert not imported_roots(path) & TORCH, f"cache imports {name}, which imports torch"


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle_inside_a_package(package: str) -> None:
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    cycle = find_cycle(import_graph(package))
    assert cycle is None, f"import cycle in {package}: {' -> '.join(cycle)}"


def test_cycle_finder_sees_a_cycle(tmp_path: Path) -> None:
    assert find_cycle({"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": set()}) == ["p.a", "p.b", "p.c", "p.a"]
    assert find_cycle({"p.a": {"p.b"}, "p.b": set(), "p.c": {"p.a", "p.b"}}) is None
