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
