"""`aigi import uar` / `aigi export npy`: exact values, pairs, splits, appending, resuming, refusals."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from aigi import cache
from aigi.cli import main
from aigi.pipeline.importers import ImportOptions, export_npy, import_uar
from tests.conftest import shared_path


def test_import_shared_uar_sample_exactly(tmp_path):
    folder = shared_path("uar_sample")
    out = tmp_path / "c"
    assert main(["import", "uar", str(folder), "--cache", str(out), "--split-ratio", "train=0.8,test=0.2"]) == 0
    c = cache.open(out)
    assert c.dtype == "float32" and c.features == {"probe": (3072,)}
    assert c.spec["extractor"] == {"name": "aim-v1-3b", "feature": "probe", "source": "uar-shipped"}
    fs = c.load()
    assert (fs.labels == 0).sum() == 2000 and (fs.labels == 1).sum() == 2000
    for path, vec in zip(fs.meta["path"], fs.features["probe"]):  # float32 storage: bit-identical to np.load
        np.testing.assert_array_equal(vec, np.load(folder / path.removeprefix("uar/"), allow_pickle=False)[0])
    pairs = fs.meta.groupby("pair_id")["label"].agg(["count", "sum"])
    assert len(pairs) == 2000 and (pairs["count"] == 2).all() and (pairs["sum"] == 1).all()
    assert fs.meta.groupby("pair_id")["split"].nunique().max() == 1  # a real and its fake share the split
    assert abs((fs.meta["split"] == "train").mean() - 0.8) < 1e-9
    assert cache.verify(out)["rows"] == 4000


def make_sets(root, names=("progan", "sd14"), n=3, dim=5, seed=0):
    rng = np.random.default_rng(seed)
    values = {}
    for name in names:
        for label in ("0_real", "1_fake"):
            (root / name / label).mkdir(parents=True)
            for i in range(n):
                arr = rng.standard_normal((1, dim)).astype(np.float32)
                np.save(root / name / label / f"im{i}.npy", arr)
                values[f"{name}/{label}/im{i}.npy"] = arr[0]
    return values


def test_sets_sources_append_and_export_roundtrip(tmp_path):
    values = make_sets(tmp_path / "a")
    stats = import_uar(
        tmp_path / "a", tmp_path / "c", ImportOptions(split="test", fmt="parquet", shard_size=4, progress=False)
    )
    assert stats == {"files": 12, "written": 12, "skipped_present": 0, "dim": 5, "failed": []}
    values.update({f"extra/{k.split('/', 1)[1]}": v for k, v in make_sets(tmp_path / "b", ("x",), seed=1).items()})
    bare = ImportOptions(source="extra", split="train", progress=False)
    import_uar(tmp_path / "b" / "x", tmp_path / "c", bare)  # a bare folder
    again = import_uar(tmp_path / "a", tmp_path / "c", ImportOptions(split="test", progress=False))
    assert again["written"] == 0 and again["skipped_present"] == 12  # re-running is a no-op (resume)
    meta = cache.open(tmp_path / "c").meta()
    assert meta.groupby("source")["split"].agg(lambda s: sorted(set(s))).to_dict() == {
        "extra": ["train"],
        "progan": ["test"],
        "sd14": ["test"],
    }
    assert len(meta) == 18 and cache.verify(tmp_path / "c")["rows"] == 18
    assert export_npy(tmp_path / "c", tmp_path / "out") == 18
    for rel, vec in values.items():
        back = np.load(tmp_path / "out" / rel, allow_pickle=False)
        assert back.shape == (1, 5) and back.dtype == np.float32
        np.testing.assert_array_equal(back[0], vec)


def test_float16_import_is_the_float16_cast(tmp_path):
    values = make_sets(tmp_path / "a", ("g",))
    import_uar(tmp_path / "a", tmp_path / "c", ImportOptions(dtype="float16", progress=False))
    fs = cache.open(tmp_path / "c").load()
    for path, vec in zip(fs.meta["path"], fs.features["probe"]):
        np.testing.assert_array_equal(vec, values[path].astype(np.float16).astype(np.float32))


def test_cli_bad_files_are_skipped_and_named(tmp_path, capsys):
    make_sets(tmp_path / "a", ("g",))
    np.save(tmp_path / "a/g/1_fake/odd.npy", np.zeros((1, 7), np.float32))
    np.save(tmp_path / "a/g/1_fake/obj.npy", np.array([None, 1], dtype=object), allow_pickle=True)
    nan = np.ones((1, 5), np.float32)
    nan[0, 2] = np.nan
    np.save(tmp_path / "a/g/0_real/nan.npy", nan)
    assert main(["import", "uar", str(tmp_path / "a"), "--cache", str(tmp_path / "c")]) == 0
    err = capsys.readouterr().err
    assert "skipped 3 file(s)" in err
    assert "odd.npy: has 7 values but earlier files have 5" in err
    assert "obj.npy: refused, it needs pickle" in err
    assert "nan.npy: contains NaN/inf values" in err
    c = cache.open(tmp_path / "c")
    assert len(c) == 6 and sorted(e["path"].rsplit("/", 1)[1] for e in c.errors()) == ["nan.npy", "obj.npy", "odd.npy"]
    assert cache.verify(tmp_path / "c")["rows"] == 6
    for name in ("odd", "obj", "nan"):
        (tmp_path / "a/g" / ("0_real" if name == "nan" else "1_fake") / f"{name}.npy").unlink()
    assert main(["import", "uar", str(tmp_path / "a"), "--cache", str(tmp_path / "c")]) == 0
    make_sets(tmp_path / "wide", ("w",), dim=9)
    assert main(["import", "uar", str(tmp_path / "wide"), "--cache", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "fingerprint mismatch" in err and "dim: 5 -> 9" in err


def test_export_refuses_colliding_stems(tmp_path):
    for cat in ("car", "cat"):
        (tmp_path / "a/gen" / cat / "0_real").mkdir(parents=True)
        np.save(tmp_path / "a/gen" / cat / "0_real/x.npy", np.ones((1, 3), np.float32))
    import_uar(tmp_path / "a", tmp_path / "c", ImportOptions(progress=False))
    with pytest.raises(ValueError, match="same file"):
        export_npy(tmp_path / "c", tmp_path / "out")


def test_every_file_bad_exits_2(tmp_path, capsys):
    (tmp_path / "a/g/0_real").mkdir(parents=True)
    for i in range(3):
        np.save(tmp_path / f"a/g/0_real/{i}.npy", np.full((1, 4), np.inf, np.float32))
    assert main(["import", "uar", str(tmp_path / "a"), "--cache", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "0.npy: contains NaN/inf values" in err[0]


IMPORTER = """
import sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from aigi.pipeline.importers import ImportOptions, import_uar
Path({flag!r} + ".ready").touch()
while not Path({go!r}).exists():  # both start together
    time.sleep(0.01)
import_uar({folder!r}, {out!r}, ImportOptions(shard_size=2, progress=False))
"""


def _run_together(tmp_path, folders, out):
    root = str(Path(__file__).resolve().parents[2])
    go = tmp_path / "go"
    kids = []
    for i, folder in enumerate(folders):
        code = IMPORTER.format(root=root, flag=str(tmp_path / f"k{i}"), go=str(go), folder=str(folder), out=str(out))
        kids.append(subprocess.Popen([sys.executable, "-c", code], cwd=root))
    try:
        while not all((tmp_path / f"k{i}.ready").exists() for i in range(len(kids))):
            assert all(k.poll() is None for k in kids)
            time.sleep(0.05)
        go.touch()
        return [k.wait(timeout=300) for k in kids]
    finally:
        for k in kids:
            if k.poll() is None:
                k.kill()


def test_two_concurrent_imports_give_the_union(tmp_path):
    values = make_sets(tmp_path / "a", ("g1", "g2"), n=10)
    values.update(make_sets(tmp_path / "b", ("g3", "g4"), n=10, seed=1))
    assert _run_together(tmp_path, [tmp_path / "a", tmp_path / "b"], tmp_path / "c") == [0, 0]
    assert cache.verify(tmp_path / "c")["rows"] == 80
    fs = cache.open(tmp_path / "c").load()
    assert sorted(fs.meta["path"]) == sorted(values)
    for path, vec in zip(fs.meta["path"], fs.features["probe"]):
        np.testing.assert_array_equal(vec, values[path])


def test_two_concurrent_imports_of_one_folder_store_each_row_once(tmp_path):
    make_sets(tmp_path / "a", ("g1", "g2"), n=10)
    assert _run_together(tmp_path, [tmp_path / "a", tmp_path / "a"], tmp_path / "c") == [0, 0]
    assert cache.verify(tmp_path / "c")["rows"] == 40
