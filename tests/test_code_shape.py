"""Code shape outside tests/: no function longer than 80 lines (docstring included, decorators not)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 80
CHECKED = ("aigi", "common", "cache", "extractors", "heads", "fakes", "pipeline", "benchmarks")


def long_functions(path: Path, *, limit: int = MAX_LINES) -> list[tuple[str, int]]:
    """(qualified name, lines) of every function or method in `path` longer than `limit` lines."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef) and child.end_lineno - child.lineno + 1 > limit:
                    found.append((name, child.end_lineno - child.lineno + 1))
                visit(child, f"{name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), "")
    return found


def test_no_function_over_80_lines_outside_tests() -> None:
    files = [f for package in CHECKED for f in sorted((ROOT / package).rglob("*.py"))]
    assert len(files) > 50
    long = {f"{f.relative_to(ROOT)}::{name}": n for f in files for name, n in long_functions(f)}
    assert not long, f"functions over {MAX_LINES} lines (split them): {long}"


def test_the_checker_counts_nested_functions_and_methods(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(80))
    f = tmp_path / "m.py"
    f.write_text(
        f"def short():\n    return 1\n\n\ndef long():\n{body}\n\n\n"
        f"class C:\n    def method(self):\n{body.replace('    ', '        ')}\n\n\n"
        f"def outer():\n    def inner():\n{body.replace('    ', '        ')}\n    return inner\n"
    )
    assert long_functions(f) == [("long", 81), ("C.method", 81), ("outer", 83), ("outer.inner", 81)]
    assert long_functions(f, limit=81) == [("outer", 83)]


# ---------------------------------------------------------------------------------------------------------------
# no module-level mutable state used as configuration (docs/ARCHITECTURE.md section 1)

MUTATORS = {"append", "extend", "insert", "pop", "popitem", "clear", "update", "setdefault", "add", "discard",
            "remove", "appendleft", "extendleft", "sort", "reverse"}  # fmt: skip
ALLOWED_FACTORIES = {"Registry"}  # registration tables: written at import, read afterwards
# memoisation of immutable inputs kept as a dict where functools.cache does not fit (file -> names)
MEMOS = {
    "common/files.py": {"_SHA_CACHE"},  # a file's digest by (path, size, mtime); its test reads the dict
    "pipeline/extract.py": {"_EXTRACTORS"},  # the backbone built from its options' JSON, one at a time
}


def _module_names(tree: ast.Module) -> dict[str, ast.AST]:
    """Module-level name -> the value it is bound to (plain and annotated assignments)."""
    out = {}
    for node in tree.body:
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        for target in targets:
            if isinstance(target, ast.Name) and getattr(node, "value", None) is not None:
                out[target.id] = node.value
    return out


def _allowed(value: ast.AST) -> bool:
    func = value.func if isinstance(value, ast.Call) else None
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
    return name in ALLOWED_FACTORIES


def _root_name(node: ast.AST) -> str | None:
    while isinstance(node, ast.Subscript):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _targets(node: ast.AST) -> list[ast.AST]:
    """The assigned expressions of an assignment, tuples unpacked (`a.X, a.Y = ...`)."""
    out = list(node.targets) if isinstance(node, ast.Assign | ast.Delete) else [node.target]
    while any(isinstance(t, ast.Tuple | ast.List) for t in out):
        out = [e for t in out for e in (t.elts if isinstance(t, ast.Tuple | ast.List) else [t])]
    return out


def module_state(files: list[Path], *, root: Path) -> list[str]:
    """Module-level names used as mutable state: rebound in a function (`global`), changed in place (item
    assignment, a mutating method call), or assigned from another module (`module.NAME = ...`, a switch)."""
    trees = {f: ast.parse(f.read_text(encoding="utf-8"), filename=str(f)) for f in files}
    modules = {".".join(f.relative_to(root).with_suffix("").parts): f for f in files}
    found = []
    for f, tree in trees.items():
        where = str(f.relative_to(root))
        names = {k: v for k, v in _module_names(tree).items() if not _allowed(v) and k not in MEMOS.get(where, ())}
        body = [
            n
            for top in tree.body
            if isinstance(top, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            for n in ast.walk(top)
        ]  # fmt: skip  (statements at import time only build the module's constants)
        for node in body:
            if isinstance(node, ast.Global):
                found += [f"{where}:{node.lineno} `global {n}`" for n in node.names if n in names]
            elif isinstance(node, ast.Assign | ast.AugAssign | ast.Delete):
                for t in _targets(node):
                    if isinstance(t, ast.Subscript) and _root_name(t.value) in names:
                        found.append(f"{where}:{node.lineno} `{_root_name(t.value)}[...]` changed")
                    if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name):
                        found += _switch(t, node, where, tree, modules)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MUTATORS:
                if isinstance(node.func.value, ast.Name) and node.func.value.id in names:
                    found.append(f"{where}:{node.lineno} `{node.func.value.id}.{node.func.attr}(...)`")
    return sorted(found, key=lambda line: (line.split(":")[0], int(line.split(":")[1].split(" ")[0])))


def _switch(target: ast.Attribute, node: ast.AST, where: str, tree: ast.Module, modules: dict) -> list[str]:
    """`mod.NAME = ...` where `mod` is one of the checked modules imported here: another module's setting switched."""
    alias = target.value.id
    for imp in ast.walk(tree):
        if isinstance(imp, ast.Import | ast.ImportFrom):
            for a in imp.names:
                full = f"{imp.module}.{a.name}" if isinstance(imp, ast.ImportFrom) and imp.module else a.name
                if (a.asname or a.name.split(".")[-1]) == alias and _project_module(full, modules):
                    return [f"{where}:{node.lineno} `{alias}.{target.attr} = ...` switches another module's setting"]
    return []


def _project_module(name: str, modules: dict) -> bool:
    parts = name.split(".")
    return parts[0] == "aigi" and (".".join(parts[1:]) in modules or ".".join(parts) in modules)


LIBRARY = ("aigi", "common", "cache", "extractors", "heads", "fakes", "pipeline")


def test_no_module_level_mutable_state_used_as_configuration() -> None:
    files = [f for package in LIBRARY for f in sorted((ROOT / package).rglob("*.py"))]
    assert len(files) > 50
    found = module_state(files, root=ROOT)
    assert not found, f"module-level state used as configuration (pass explicit objects instead): {found}"


def test_the_state_checker_sees_switches_caches_and_globals(tmp_path: Path) -> None:
    pkg = tmp_path / "pipeline"
    pkg.mkdir()
    (pkg / "streaming.py").write_text(
        "import functools\nfrom aigi.common.registry import Registry\n"
        "REUSE = False\n_ROWS = {}\nCOUNTS = {'loaded': 0}\nKINDS = Registry('kind')\nLIMIT = 4\n"
        "def load(key):\n    if key not in _ROWS:\n        _ROWS[key] = 1\n"
        "    COUNTS['loaded'] += 1\n    return _ROWS[key]\n"
        "def set_limit(n):\n    global LIMIT\n    LIMIT = n\n"
        "KINDS.register('a', 1)\n@functools.cache\ndef table():\n    return {'x': 1}\n"
    )
    (pkg / "ablate.py").write_text("from aigi.pipeline import streaming\ndef worker():\n    streaming.REUSE = True\n")
    (pkg / "clean.py").write_text("SIZES = {'a': 1}\ndef size(k):\n    return SIZES[k]\n")
    found = module_state(sorted(pkg.glob("*.py")), root=tmp_path)
    assert [line.split(" ", 1)[0] for line in found] == [
        "pipeline/ablate.py:3", "pipeline/streaming.py:10", "pipeline/streaming.py:11", "pipeline/streaming.py:14",
    ], found  # fmt: skip
    assert "switches another module's setting" in found[0] and "`global LIMIT`" in found[3]
