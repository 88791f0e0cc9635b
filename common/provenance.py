"""Which code made a result: the installed distribution's version and, from a git checkout, the git revision."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "aigi"
_SOURCE_ROOT = Path(__file__).resolve().parents[1]


def package_version() -> str:
    """The version of the installed `aigi` distribution, or "unknown" when it is not installed (code on PYTHONPATH)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


def git_revision(root: str | Path = _SOURCE_ROOT) -> str | None:
    """The commit `root` is checked out at ("+dirty" when tracked files changed), or None outside a git checkout."""
    root = Path(root)
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):  # no git binary, or a hung file system
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def code_revision() -> str:
    """The git revision of the running code when it runs from a checkout, else `aigi <version>`."""
    return git_revision() or f"aigi {package_version()}"
