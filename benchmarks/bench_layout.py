"""The shape of the code, measured from its own imports: lines per package, modules that mix the command line into
library code, the deepest import chain among stage modules, and imports that run back up between folders.

    python benchmarks/bench_layout.py                   # this checkout
    python benchmarks/bench_layout.py --root OTHER      # another checkout (e.g. `git worktree add /tmp/old REV`)

Works on the one-namespace layout (folders mapped onto `aigi.<name>` by pyproject.toml) and on the older layout
where each folder was a top-level package. Prints a markdown table and writes JSON with `--json FILE`.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections import defaultdict
from functools import cache
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_FOLDERS = ("common", "cache", "extractors", "fakes", "heads", "pipeline", "aigi")


def module_map(root: Path) -> dict[str, Path]:
    """Import name -> file for every module of the project (either layout)."""
    tool = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8")).get("tool", {})
    mapping = tool.get("setuptools", {}).get("package-dir") or {name: name for name in PACKAGE_FOLDERS}
    out = {}
    for package, folder in mapping.items():
        base = root / folder
        for path in sorted(base.rglob("*.py")) if base.is_dir() else []:
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(base).with_suffix("").parts)
            name = ".".join([package, *(parts[:-1] if parts[-1] == "__init__" else parts)])
            out.setdefault(name, path)
    return out


def imports_of(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports (also inside functions), resolved to the longest known module name."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([base] if base else [])])
            # `from a import b`: the module a.b when b is a module, else a (b is one of its names)
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for imported in names:
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                found.add(imported)
    return found


def room(path: Path, root: Path) -> str:
    """A module's folder: the top-level folder, or its direct sub-folder (pipeline/demo, aigi/cli)."""
    parts = path.relative_to(root).parts
    return "/".join(parts[:2]) if len(parts) > 2 else parts[0]


def measure(root: Path) -> dict:
    modules = module_map(root)
    graph = {name: imports_of(path, name, modules) for name, path in modules.items()}
    lines: dict[str, int] = defaultdict(int)
    for path in modules.values():
        lines[path.relative_to(root).parts[0]] += len(path.read_text(encoding="utf-8").splitlines())
    cli_rooms = ("aigi/cli",)
    mixing = sorted(
        str(p.relative_to(root))
        for n, p in modules.items()
        if "argparse" in {a.split(".")[0] for a in _raw_imports(p)} and room(p, root) not in cli_rooms
        and not p.name == "cli.py" and "benchmarks" not in p.parts
    )  # fmt: skip
    stages = {n for n, p in modules.items() if p.relative_to(root).parts[0] == "pipeline"}

    @cache
    def depth(name: str, seen: frozenset = frozenset()) -> tuple[int, tuple[str, ...]]:
        best: tuple[int, tuple[str, ...]] = (1, (name,))
        for nxt in sorted(graph[name] & stages):
            if nxt in seen:
                continue
            d, chain = depth(nxt, seen | {name})
            if d + 1 > best[0]:
                best = (d + 1, (name, *chain))
        return best

    deepest = max((depth(n) for n in sorted(stages)), default=(0, ()))
    folder_edges = defaultdict(set)
    for name, targets in graph.items():
        a = room(modules[name], root)
        for t in targets:
            b = room(modules[t], root)
            if a != b:
                folder_edges[a].add(b)
    back = sorted(f"{a} -> {b}" for a in folder_edges for b in folder_edges[a] if a in _reach(folder_edges, b))
    return {
        "lines": dict(sorted(lines.items(), key=lambda kv: -kv[1])),
        "total_lines": sum(lines.values()),
        "modules_mixing_argparse": mixing,
        "deepest_stage_chain": list(deepest[1]),
        "folder_imports_back_up": back,
    }


def _raw_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
    return out


def _reach(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        for nxt in edges.get(node, ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to measure (default: this one)")
    parser.add_argument("--json", type=Path, help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    m = measure(args.root.resolve())
    total = m["total_lines"]
    print("| package folder | lines | share |\n| --- | --- | --- |")
    for folder, n in m["lines"].items():
        print(f"| `{folder}/` | {n:,} | {100 * n / total:.0f} % |")
    print(f"| all | {total:,} | |\n")
    print(f"modules outside the command line that import argparse: {len(m['modules_mixing_argparse'])}")
    for name in m["modules_mixing_argparse"]:
        print(f"  {name}")
    chain = m["deepest_stage_chain"]
    print(f"deepest import chain among pipeline modules: {len(chain)} ({' -> '.join(chain)})")
    print(f"imports that run back up between folders (folder-level cycles): {len(m['folder_imports_back_up'])}")
    for edge in m["folder_imports_back_up"]:
        print(f"  {edge}")
    if args.json:
        args.json.write_text(json.dumps(m, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
