"""A crash (exception or SIGKILL) leaves only whole shards, and resuming gives the same cache as one clean run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import aigi.common.files as file_io
from aigi import cache
from aigi.cache.kinds import open_file
from tests.cache.helpers import FEATURES, SPEC, rows

ROOT = Path(__file__).resolve().parents[2]
N, SHARD = 40, 8  # five shards


def assert_same_cache(a: Path, b: Path) -> None:
    """Same shard files, each with equal meta and bit-identical features."""
    names_a = sorted(p.name for p in (a / "shards").iterdir())
    assert names_a == sorted(p.name for p in (b / "shards").iterdir())
    for name in names_a:
        if name.endswith(".errors.json"):
            assert (a / "shards" / name).read_text() == (b / "shards" / name).read_text()
            continue
        shard_a, shard_b = open_file(a / "shards" / name), open_file(b / "shards" / name)
        pd.testing.assert_frame_equal(shard_a.meta(), shard_b.meta())
        fa, fb = shard_a.read(list(FEATURES)), shard_b.read(list(FEATURES))
        for k in FEATURES:
            assert fa[k].dtype == fb[k].dtype and np.array_equal(fa[k], fb[k])


def clean_run(path: Path, fmt: str) -> Path:
    meta, feats = rows(N)
    with cache.CacheWriter(path, spec=SPEC, features=FEATURES, fmt=fmt, shard_size=SHARD) as w:
        for i in range(N // SHARD):
            w.write_shard(
                i, meta.iloc[i * SHARD : (i + 1) * SHARD], {k: v[i * SHARD : (i + 1) * SHARD] for k, v in feats.items()}
            )
    return path


def resume_driver(path: Path, fmt: str) -> None:
    """What the extract driver does: skip finished shards, write the others."""
    meta, feats = rows(N)
    w = cache.CacheWriter(path, spec=SPEC, features=FEATURES, fmt=fmt, shard_size=SHARD)
    for i in range(N // SHARD):
        if not w.shard_done(i):
            sl = slice(i * SHARD, (i + 1) * SHARD)
            w.write_shard(i, meta.iloc[sl], {k: v[sl] for k, v in feats.items()})


@pytest.mark.parametrize("fmt", ["h5", "parquet"])
def test_exception_inside_a_shard_write_leaves_no_file(tmp_path, fmt, monkeypatch):
    meta, feats = rows(N)
    w = cache.CacheWriter(tmp_path / "c", spec=SPEC, features=FEATURES, fmt=fmt, shard_size=SHARD)
    w.write_shard(0, meta.iloc[:SHARD], {k: v[:SHARD] for k, v in feats.items()})

    real_replace = os.replace

    def exploding_replace(src, dst):  # the shard is fully written, the crash hits right before it becomes final
        if str(dst).endswith(fmt):
            raise OSError("disk vanished")
        real_replace(src, dst)

    monkeypatch.setattr(file_io.os, "replace", exploding_replace)
    with pytest.raises(OSError, match="disk vanished"):
        w.write_shard(
            1,
            meta.iloc[SHARD : 2 * SHARD],
            {k: v[SHARD : 2 * SHARD] for k, v in feats.items()},
            errors=[{"image_id": "e", "path": "e.png", "reason": "broken"}],
        )
    monkeypatch.undo()
    assert cache.open(tmp_path / "c").errors() == []  # errors of an unfinished shard do not count
    left = sorted(p.name for p in (tmp_path / "c/shards").iterdir())
    assert left == ["00000.errors.json", f"00000.{fmt}", "00001.errors.json"]  # no shard 1, no temporary file
    resume_driver(tmp_path / "c", fmt)
    assert_same_cache(tmp_path / "c", clean_run(tmp_path / "ref", fmt))


def test_exception_mid_append_keeps_whole_shards_and_append_resumes(tmp_path):
    meta, feats = rows(N)
    with pytest.raises(RuntimeError):
        with cache.CacheWriter(tmp_path / "c", spec=SPEC, features=FEATURES, shard_size=SHARD) as w:
            for lo in range(0, N, 6):  # batches of 6 do not line up with shards of 8
                if lo >= 18:
                    raise RuntimeError("extractor crashed")
                w.append(meta.iloc[lo : lo + 6], {k: v[lo : lo + 6] for k, v in feats.items()})
    c = cache.open(tmp_path / "c")
    assert len(c.parts) == 2 and len(c) == 16  # 18 rows buffered: two whole shards, the 2 extra rows dropped
    assert cache.verify(tmp_path / "c")["rows"] == 16
    done = set(c.meta()["image_id"])
    todo = ~meta["image_id"].isin(done).to_numpy()
    with cache.CacheWriter(tmp_path / "c", spec=SPEC, features=FEATURES, shard_size=SHARD) as w:
        w.append(meta[todo], {k: v[todo] for k, v in feats.items()})
    assert_same_cache(tmp_path / "c", clean_run(tmp_path / "ref", "h5"))


CHILD = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {root!r})
    from tests.cache import test_crash_resume as t
    real_replace = os.replace

    def slow_replace(src, dst):
        if os.path.basename(dst) == "00002.{fmt}":
            print("writing shard 2", flush=True)
            time.sleep(60)  # killed here: shard 2 is complete on disk under its temporary name only
        real_replace(src, dst)

    os.replace = slow_replace
    t.resume_driver(t.Path({path!r}), {fmt!r})
    """
)


@pytest.mark.parametrize("fmt", ["h5", "parquet"])
def test_sigkill_leaves_whole_shards_and_resume_matches(tmp_path, fmt):
    path = tmp_path / "c"
    code = CHILD.format(root=str(ROOT), path=str(path), fmt=fmt)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = child.stdout.readline()
        assert line.strip() == "writing shard 2", line
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    files = sorted(p.name for p in (path / "shards").iterdir())
    assert [f for f in files if not f.startswith(".")] == [
        "00000.errors.json",
        f"00000.{fmt}",
        "00001.errors.json",
        f"00001.{fmt}",
        "00002.errors.json",
    ]
    assert any(f.startswith(f".00002.{fmt}.tmp-") for f in files)  # the unfinished shard never got its name
    assert len(cache.open(path)) == 2 * SHARD
    assert cache.verify(path)["stale_temp_files"]
    t0 = time.perf_counter()
    resume_driver(path, fmt)
    assert time.perf_counter() - t0 < 30
    assert_same_cache(path, clean_run(tmp_path / "ref", fmt))  # also: the stale temporary file is gone
    assert len(cache.open(path)) == N
