"""Two real processes writing one cache: appends give the union, writers of one shard never break each other."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from aigi import cache
from tests.cache.helpers import FEATURES, SPEC, as_stored, rows

ROOT = Path(__file__).resolve().parents[2]

APPENDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {root!r})
    from aigi import cache
    from tests.cache.helpers import FEATURES, SPEC, rows
    meta, feats = rows(40, start={start})
    w = cache.CacheWriter({path!r}, spec=SPEC, features=FEATURES, shard_size=2)
    Path({path!r}, "ready-{start}").touch()
    while not Path({path!r}, "go").exists():  # both writers are open before either writes
        time.sleep(0.01)
    with w:
        for lo in range(0, 40, 2):
            w.append(meta.iloc[lo : lo + 2], {{k: v[lo : lo + 2] for k, v in feats.items()}})
    """
)


def test_two_appending_processes_give_the_union(tmp_path):
    path = tmp_path / "c"
    kids = [
        subprocess.Popen([sys.executable, "-c", APPENDER.format(root=str(ROOT), path=str(path), start=s)], cwd=ROOT)
        for s in (0, 1000)
    ]
    try:
        while not all((path / f"ready-{s}").exists() for s in (0, 1000)):
            assert all(k.poll() is None for k in kids), "a writer died before writing"
            time.sleep(0.05)
        (path / "go").touch()
        assert [k.wait(timeout=300) for k in kids] == [0, 0]
    finally:
        for k in kids:
            if k.poll() is None:
                k.kill()
    assert cache.verify(path)["rows"] == 80
    got = cache.open(path).load()
    expected = {
        **dict(zip(rows(40)[0]["image_id"], as_stored(rows(40)[1]["l3.cls"]))),
        **dict(zip(rows(40, start=1000)[0]["image_id"], as_stored(rows(40, start=1000)[1]["l3.cls"]))),
    }
    assert sorted(got.meta["image_id"]) == sorted(expected)
    for image_id, vec in zip(got.meta["image_id"], got.features["l3.cls"]):
        assert np.array_equal(vec, expected[image_id])


SLOW_WRITER = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {root!r})
    from aigi import cache
    from tests.cache.helpers import FEATURES, SPEC, rows
    real_replace = os.replace

    def slow_replace(src, dst):
        if os.path.basename(dst) == "00000.h5":
            print("committing", flush=True)
            time.sleep(3)  # the other writer of the same shard runs now
        real_replace(src, dst)

    os.replace = slow_replace
    meta, feats = rows(8)
    cache.CacheWriter({path!r}, spec=SPEC, features=FEATURES).write_shard(0, meta, feats)
    print("done", flush=True)
    """
)


def test_two_writers_of_one_shard_both_succeed_and_it_is_stored_once(tmp_path):
    path = tmp_path / "c"
    code = SLOW_WRITER.format(root=str(ROOT), path=str(path))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert child.stdout.readline().strip() == "committing"
        meta, feats = rows(8)  # the same shard of the same plan, written by a second process meanwhile
        cache.CacheWriter(path, spec=SPEC, features=FEATURES).write_shard(0, meta, feats)
        out, _ = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0 and out.strip() == "done"  # its temporary file was not deleted under it
    assert sorted(p.name for p in (path / "shards").iterdir()) == ["00000.errors.json", "00000.h5"]
    assert cache.verify(path)["rows"] == 8


CLAIMER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {root!r})
    from aigi import cache
    from tests.cache.helpers import FEATURES, SPEC
    w = cache.CacheWriter({path!r}, spec=SPEC, features=FEATURES)
    print("claimed" if w.claim_shard(4) else "refused", flush=True)
    time.sleep(120)
    """
)


def test_a_live_writers_shard_claim_is_respected_and_a_dead_ones_taken_over(tmp_path):
    path = tmp_path / "c"
    code = CLAIMER.format(root=str(ROOT), path=str(path))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert child.stdout.readline().strip() == "claimed"
        w = cache.CacheWriter(path, spec=SPEC, features=FEATURES)
        assert w.claim_shard(4) is None  # the other process works on it
        mine = w.claim_shard(5)
        assert mine is not None and w.claim_shard(5) == mine  # claiming again in one process is idempotent
    finally:
        child.kill()
        child.wait(timeout=30)
    assert w.claim_shard(4) is not None  # its owner died: taken over
    meta, feats = rows(3)
    w.write_shard(5, meta, feats)
    assert w.claim_shard(5) is None  # committed


PLANNER = textwrap.dedent(
    """
    import json, sys, time
    sys.path.insert(0, {root!r})
    from aigi.cache.writer import job_plan

    def make(first):
        time.sleep(1.5)  # the other process asks for the same plan meanwhile
        return {{"first_shard": first, "n_shards": 3, "maker": {who!r}}}

    print(json.dumps(job_plan({path!r}, "job", make)), flush=True)
    """
)


def test_two_processes_starting_one_job_get_one_plan(tmp_path):
    import json

    path = tmp_path / "c"
    (path / "shards").mkdir(parents=True)
    (path / "shards/00002.h5").touch()  # numbers after every shard on disk
    kids = [
        subprocess.Popen(
            [sys.executable, "-c", PLANNER.format(root=str(ROOT), path=str(path), who=who)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )  # fmt: skip
        for who in ("a", "b")
    ]
    plans = [json.loads(k.communicate(timeout=120)[0]) for k in kids]
    assert plans[0] == plans[1] and plans[0]["first_shard"] == 3
    from aigi.cache.writer import job_plan

    other = job_plan(path, "other", lambda first: {"first_shard": first, "n_shards": 2})
    assert other["first_shard"] == 6  # after the first job's reserved range
