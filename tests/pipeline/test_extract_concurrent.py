"""Two `aigi extract` processes on one manifest and one cache: both succeed and every row is stored once."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from aigi import cache
from tests.pipeline.test_extract import BACKBONE, make_manifest, weights  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[2]

STARTER = """
import sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
import aigi.cache.writer as writer_mod
import aigi.pipeline.extract as extract_mod
from aigi.cli import main


def slowly(fn):
    def slow(*args, **kwargs):
        time.sleep(1.0)  # a slow disk while the job is planned: the other process plans meanwhile
        return fn(*args, **kwargs)
    return slow


for module, name in ((extract_mod, "_existing_shard_indices"), (writer_mod, "next_free_index")):
    if hasattr(module, name):
        setattr(module, name, slowly(getattr(module, name)))
Path({ready!r}).touch()
while not Path({go!r}).exists():  # both processes start together
    time.sleep(0.005)
sys.exit(main({argv!r}))
"""


def test_two_extracts_of_one_job_store_each_row_once(tmp_path, weights):  # noqa: F811
    manifest = make_manifest(tmp_path / "data", 16)
    argv = ["extract", "--manifest", str(manifest), "--backbone", BACKBONE, "--weights", str(weights),
            "--features", "pooler", "--cache", str(tmp_path / "c"), "--shard-size", "2",
            "--batch-size", "2"]  # fmt: skip
    kids = []
    for i in range(2):
        code = STARTER.format(root=str(ROOT), ready=str(tmp_path / f"r{i}"), go=str(tmp_path / "go"), argv=argv)
        kids.append(subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE, text=True))
    try:
        while not all((tmp_path / f"r{i}").exists() for i in range(2)):
            assert all(k.poll() is None for k in kids)
            time.sleep(0.05)
        (tmp_path / "go").touch()
        errs = [k.communicate(timeout=600)[1] for k in kids]
    finally:
        for k in kids:
            if k.poll() is None:
                k.kill()
    assert [k.returncode for k in kids] == [0, 0], errs
    meta = cache.open(tmp_path / "c", keep_duplicates=True).meta()
    assert sorted(meta["image_id"]) == sorted(pd.read_parquet(manifest)["image_id"])  # none lost, none twice
    assert cache.verify(tmp_path / "c")["rows"] == 16
    assert len(list((tmp_path / "c" / "jobs").glob("*.json"))) == 1  # one plan
