"""`aigi --version` and the revision saved with a run come from the installed metadata and from git."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from aigi.common.provenance import code_revision, git_revision, package_version

ROOT = Path(__file__).resolve().parents[2]


def test_version_flag_prints_the_installed_distribution_version() -> None:
    expected = metadata.version("aigi")  # the venv installs the project (make test: pip install -e .)
    out = subprocess.run([sys.executable, "-m", "aigi", "--version"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"aigi {expected}"
    assert package_version() == expected


def test_git_revision_of_a_checkout_and_of_a_plain_folder(tmp_path: Path) -> None:
    assert git_revision(tmp_path) is None
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    try:
        subprocess.run(["git", "init", "-q", str(repo)], check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git is not available")
    (repo / "a.txt").write_text("one")
    subprocess.run([*git, "add", "a.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "one"], check=True)
    sha = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert len(sha) == 40
    assert git_revision(repo) == sha
    (repo / "a.txt").write_text("two")
    assert git_revision(repo) == sha + "+dirty"


def test_code_revision_is_git_or_the_version() -> None:
    rev = code_revision()
    assert rev == (git_revision() or f"aigi {package_version()}")
