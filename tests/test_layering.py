"""The package layering of DESIGN §2: cache knows no torch, heads and extractors know no storage or pipeline."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "cache": {"torch", "timm", "open_clip", "extractors", "heads", "pipeline"},
    "heads": {"extractors", "cache", "pipeline"},
    "extractors": {"cache", "heads", "pipeline"},
}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


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
