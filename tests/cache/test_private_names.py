"""No module of the cache package reaches into another module's private (underscore) names: what one module needs
from another is a public function or method. Checked on the source with `ast`, and shown to fail on planted code."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SELF = {"self", "cls"}


def private(name: str | None) -> bool:
    """An underscore name that is not a dunder (`_x`, `__x`; not `__init__`)."""
    return bool(name) and name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def defined_names(tree: ast.AST) -> set[str]:
    """The private names a module defines: functions, classes, methods, assigned names and attributes, parameters."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return {n for n in names if private(n)}


def defined_params(tree: ast.AST) -> set[str]:
    """The private parameter names of a module's functions."""
    return {node.arg for node in ast.walk(tree) if isinstance(node, ast.arg) and private(node.arg)}


def _owner(node: ast.expr) -> str:
    """'self' for `self.x`, `cls.x` and `super().x`; 'other' for any other object."""
    if isinstance(node, ast.Name) and node.id in SELF:
        return "self"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super":
        return "self"
    return "other"


def _reached(tree: ast.AST) -> list[tuple[int, str, str, str]]:
    """(line, private name, 'import' / 'self' / 'other' / 'keyword', how it was written) of every private name `tree`
    takes from somewhere: imported, read as an attribute (also through getattr), passed as a keyword argument."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            parts = (node.module or "").split(".")
            found += [(node.lineno, a.name, "import", f"from {node.module} import {a.name}") for a in node.names]
            found += [(node.lineno, p, "import", f"from {node.module}") for p in parts if private(p)]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, p, "import", f"import {a.name}") for a in node.names for p in a.name.split(".")]
        elif isinstance(node, ast.Attribute):
            found.append((node.lineno, node.attr, _owner(node.value), f"{ast.unparse(node.value)}.{node.attr}"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr"):
            if len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
                found.append((node.lineno, node.args[1].value, _owner(node.args[0]), ast.unparse(node)))
        elif isinstance(node, ast.keyword) and private(node.arg):
            found.append((getattr(node, "lineno", 0), node.arg, "keyword", f"{node.arg}=..."))
    return [f for f in found if private(f[1])]


def foreign_private_uses(folder: Path) -> dict[str, list[str]]:
    """Module file -> the private names it takes from another module of `folder`'s package (or from outside it).

    A module may use a private name only when it defines that name itself: on `self`, `cls` or `super()` any name it
    defines; on another object only a name that no other module of the package defines too (else it may be that
    module's); as a keyword argument any name but another module's own parameter. Private names are never imported.
    """
    trees = {f.name: ast.parse(f.read_text(encoding="utf-8"), filename=str(f)) for f in sorted(folder.glob("*.py"))}
    defined = {name: defined_names(tree) for name, tree in trees.items()}
    params = {name: defined_params(tree) for name, tree in trees.items()}
    out = {}
    for name, tree in trees.items():
        elsewhere = set().union(*(d for other, d in defined.items() if other != name))
        params_elsewhere = set().union(*(d for other, d in params.items() if other != name))
        bad = []
        for line, attr, owner, text in _reached(tree):
            if owner == "keyword":  # another module's parameter; else e.g. a DataFrame column, `assign(_part=...)`
                mine = attr in params[name] or attr not in params_elsewhere
            else:
                mine = attr in defined[name] and (owner == "self" or attr not in elsewhere)
            if owner == "import" or not mine:
                bad.append(f"{name}:{line}: {text}")
        if bad:
            out[name] = bad
    return out


def test_no_cache_module_uses_another_modules_private_names() -> None:
    assert len(list((ROOT / "cache").glob("*.py"))) > 10
    assert foreign_private_uses(ROOT / "cache") == {}


def test_the_check_fails_on_planted_reaches_into_other_modules(tmp_path: Path) -> None:
    """Planted: a private function imported, private methods and attributes of another module's objects called or
    read (directly, through getattr, on an inherited `self`), a private keyword of another module's function."""
    modules = {
        "reader.py": """
            def _refuse(index): ...
            class Cache:
                def _names(self, features):
                    return features
            class Part:
                def __init__(self):
                    self._layout = {}
                def _check(self): ...
            def read(n, _sel=None): ...
        """,
        "stream.py": """
            from aigi.cache.reader import Part, _refuse
            import aigi.cache._private as hidden
            class Stream:
                def __init__(self, cache, part):
                    self.names = cache._names(None)
                    part._check()
                    getattr(part, "_layout")
                    _refuse(None)
            class MyPart(Part):
                def size(self):
                    return len(self._layout)
            def go(reader):
                reader.read(3, _sel=1)
        """,
        "clean.py": """
            class Own:
                def __init__(self, other=None):
                    self._rows = []
                    self._peer = other
                def _helper(self):
                    return self._rows
                def copy(self, other):
                    return other._helper() + self._helper() + super().__init_subclass__() + self.__class__.__name__
            def _free(_x=None):
                return Own()._helper()
        """,
    }
    for name, text in modules.items():
        (tmp_path / name).write_text(textwrap.dedent(text), encoding="utf-8")
    found = foreign_private_uses(tmp_path)
    assert sorted(found) == ["stream.py"]  # reader.py uses only its own names, clean.py too
    flagged = [line.split(": ", 1)[1] for line in found["stream.py"]]
    assert sorted(flagged) == sorted(
        [
            "from aigi.cache.reader import _refuse",
            "import aigi.cache._private",
            "cache._names",
            "part._check",
            "getattr(part, '_layout')",
            "self._layout",
            "_sel=...",
        ]
    ), flagged
