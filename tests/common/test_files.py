"""The one file hash and the one atomic write: written then read back, compared with hashlib, failures leave nothing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from aigi.common.files import _SHA_CACHE, atomic_path, atomic_write, sha256_file


def test_sha256_file_streams_and_caches(tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(b"a" * 10_000_000)
    assert sha256_file(path) == hashlib.sha256(b"a" * 10_000_000).hexdigest()
    key = next(k for k in _SHA_CACHE if k[0] == str(path.resolve()))
    _SHA_CACHE[key] = "cached"
    assert sha256_file(path) == "cached"  # same (path, size, mtime): not hashed again
    path.write_bytes(b"b")
    assert sha256_file(path) == hashlib.sha256(b"b").hexdigest()  # changed file: hashed again
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        sha256_file(tmp_path / "missing.bin")


def test_atomic_write_replaces_whole_files(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.json"
    atomic_write(target, "first")
    atomic_write(target, b"second", fsync=True)
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
