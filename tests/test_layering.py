"""The package layering of docs/ARCHITECTURE.md (cache knows no torch, heads, extractors and fakes know no storage or
pipeline, common is the bottom, the command line is the top) and no import cycle between the modules of a package.

Every package lives under the one `aigi.` namespace; `aigi.heads` is the folder heads/ of the repository, and so on.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package -> its folder in the repository (`aigi.<package>`; "aigi" is the public Python API, aigi/__init__.py)
FOLDERS = {
    "common": "common",
    "cache": "cache",
    "extractors": "extractors",
    "heads": "heads",
    "fakes": "fakes",
    "pipeline": "pipeline",
    "cli": "aigi/cli",
    "aigi": "aigi",
}
PACKAGES = tuple(FOLDERS)
# TEMPORARY, while the command-line layer is split off the stages (none left)
TEMPORARY: dict[str, list[str]] = {}
# the modules of pipeline/ that run one command's stage (`fakes` moves to the package aigi.fakes, below pipeline);
# the library modules they share (config, rows, scoring, metrics, report, ...) sit beside them
STAGES = ("index", "importers", "extract", "train", "evaluate", "calibrate", "robustness", "domains", "ablate",
          "predict", "cache_cmd", "head_cmd", "demo.steps")  # fmt: skip
HEAD_SIDE_STAGES = ("train", "evaluate", "calibrate", "robustness", "ablate", "demo.steps")
TORCH = {"torch", "timm", "open_clip"}
TOP = {"cli", "aigi"}  # the command line and the Python API: nothing below imports them
FORBIDDEN = {
    "common": {"cache", "extractors", "heads", "pipeline", *TOP},
    "cache": {*TORCH, "extractors", "heads", "pipeline", *TOP},
    "heads": {"extractors", "cache", "pipeline", *TOP},
    "extractors": {"cache", "heads", "pipeline", *TOP},
    "fakes": {"cache", "heads", "pipeline", *TOP},
    "pipeline": TOP,
    "cli": {"aigi"},
    "aigi": {"cli"},
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
                if base != "aigi":  # `from aigi import heads` imports aigi.heads; the API only by its names
                    names.add(base)
                names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def project_package(name: str) -> str:
    """The package of module `name` as FORBIDDEN names it: `aigi.heads.fit` -> heads, `aigi.cli` -> cli, `aigi` or an
    attribute of the API (`aigi.fit`) -> aigi; any other module -> its top-level name (`torch.nn` -> torch)."""
    parts = name.split(".")
    if parts[0] != "aigi":
        return parts[0]
    return parts[1] if len(parts) > 1 and parts[1] in FOLDERS else "aigi"


def imported_roots(path: Path) -> set[str]:
    return {project_package(name) for name in imported_modules(path) if name}


def package_files(package: str) -> list[Path]:
    """The modules of `package`: the command line is aigi/cli/ and aigi/__main__.py, the API the rest of aigi/."""
    files = sorted((ROOT / FOLDERS[package]).rglob("*.py"))
    main = ROOT / "aigi" / "__main__.py"
    if package == "aigi":
        files = [f for f in files if not f.is_relative_to(ROOT / FOLDERS["cli"]) and f != main]
    if package == "cli":
        files.append(main)
    return files


def module_name(path: Path) -> str:
    """The import name of a file of the repository: heads/fit.py -> aigi.heads.fit, aigi/cli/x.py -> aigi.cli.x."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] != "aigi":
        parts = ["aigi", *parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (a package import counts as its `__init__`)."""
    files = {module_name(f): f for f in package_files(package)}
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
    files = package_files(package)
    assert files, f"package {package} has no modules"
    bad = {str(f.relative_to(ROOT)): sorted(imported_roots(f) & FORBIDDEN[package]) for f in files}
    bad = {k: v for k, v in bad.items() if v and TEMPORARY.get(k) != v}
    assert not bad, f"forbidden imports (docs/ARCHITECTURE.md): {bad}"


def test_checker_sees_forbidden_import(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("import os\nfrom torch import nn\nimport aigi.heads.linear\nfrom aigi import cache\nfrom . import x\n")
    assert imported_roots(f) == {"os", "torch", "heads", "cache"}
    f.write_text("import aigi\nfrom aigi.cli import main\n")
    assert imported_roots(f) == {"aigi", "cli"}


def test_cache_uses_only_the_torch_free_modules_of_common() -> None:
    used = {m for f in package_files("cache") for m in imported_modules(f) if m.startswith("aigi.common.")}
    assert used, "cache uses common (the checker must see it)"
    for name in used:
        path = ROOT / (name.removeprefix("aigi.").replace(".", "/") + ".py")
        if path.is_file():
            assert not imported_roots(path) & TORCH, f"cache imports {name}, which imports torch"


def command_line_uses(path: Path) -> list[str]:
    """Where `path` imports argparse or calls print (line numbers): command-line code, which the library never holds."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "argparse" for a in node.names):
            found.append(f"import argparse (line {node.lineno})")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "argparse":
            found.append(f"import argparse (line {node.lineno})")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
            found.append(f"print() (line {node.lineno})")
    return sorted(found, key=lambda text: int(text.rsplit(" ", 1)[1].rstrip(")")))


def test_the_stages_neither_parse_arguments_nor_print() -> None:
    files = package_files("pipeline")
    assert len(files) > 10
    bad = {str(f.relative_to(ROOT)): uses for f in files if (uses := command_line_uses(f))}
    assert not bad, f"command-line code in pipeline/ (it belongs in aigi/cli/, docs/ARCHITECTURE.md section 2): {bad}"


def test_checker_sees_command_line_code(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("def f():\n    import argparse\n    print('x')\n\n\ndef fingerprint(x):\n    return fingerprint(x)\n")
    assert command_line_uses(f) == ["import argparse (line 2)", "print() (line 3)"]
    f.write_text("from argparse import Namespace\nLOG.info('print(x)')\n")
    assert command_line_uses(f) == ["import argparse (line 1)"]


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle_inside_a_package(package: str) -> None:
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    cycle = find_cycle(import_graph(package))
    assert cycle is None, f"import cycle in {package}: {' -> '.join(cycle)}"


def longest_chain(graph: dict[str, set[str]], nodes: set[str]) -> list[str]:
    """The longest import path [a, b, ...] (a imports b ...) that stays within `nodes` (the graph has no cycle)."""
    memo: dict[str, list[str]] = {}

    def path(node: str) -> list[str]:
        if node not in memo:
            tails = [path(nxt) for nxt in sorted(graph.get(node, ())) if nxt in nodes]
            memo[node] = [node, *max(tails, key=len, default=[])]
        return memo[node]

    return max((path(n) for n in sorted(nodes)), key=len, default=[])


def test_no_head_side_stage_imports_another_stage() -> None:
    graph = import_graph("pipeline")
    stages = {f"aigi.pipeline.{name}" for name in STAGES} & set(graph)  # a command module may move to aigi/cli
    assert {f"aigi.pipeline.{name}" for name in HEAD_SIDE_STAGES} <= stages
    bad = {name: sorted(graph[f"aigi.pipeline.{name}"] & stages) for name in HEAD_SIDE_STAGES}
    assert not any(bad.values()), f"stage modules import stage modules: {bad}"
    head_side = {f"aigi.pipeline.{name}" for name in HEAD_SIDE_STAGES}
    assert len(longest_chain(graph, head_side)) == 1


def test_longest_chain_follows_imports() -> None:
    graph = {"p.a": {"p.b", "p.d"}, "p.b": {"p.c"}, "p.c": set(), "p.d": set()}
    assert longest_chain(graph, set(graph)) == ["p.a", "p.b", "p.c"]
    assert longest_chain(graph, {"p.a", "p.d", "p.c"}) == ["p.a", "p.d"]


def test_cycle_finder_sees_a_cycle(tmp_path: Path) -> None:
    assert find_cycle({"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": set()}) == ["p.a", "p.b", "p.c", "p.a"]
    assert find_cycle({"p.a": {"p.b"}, "p.b": set(), "p.c": {"p.a", "p.b"}}) is None


@pytest.mark.parametrize("package", ["common", "cache", "extractors", "fakes", "heads", "aigi"])
def test_only_the_command_line_parses_arguments(package: str) -> None:
    bad = {str(f.relative_to(ROOT)): uses for f in package_files(package)
           if (uses := [u for u in command_line_uses(f) if u.startswith("import argparse")])}  # fmt: skip
    assert not bad, f"argparse outside aigi/cli/ (docs/ARCHITECTURE.md section 2): {bad}"
