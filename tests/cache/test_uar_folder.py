"""Reading UAR-style .npy folders: layout rules, and clear refusals naming the file."""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest

from aigi import cache


def make_folder(root, *, dim=6):
    rng = np.random.default_rng(0)
    arrays = {}
    for rel in [
        "progan/0_real/a.npy",
        "progan/1_fake/a.npy",
        "progan/1_fake/b.npy",
        "sd/car/0_real/a.npy",
        "sd/car/1_fake/a.npy",
        "sd/cat/0_real/a.npy",
    ]:
        arr = rng.standard_normal((1, dim) if "b" not in rel else (dim,)).astype(np.float32)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(root / rel, arr)
        arrays[rel] = arr.reshape(-1)
    return arrays


def test_scan_rules(tmp_path):
    make_folder(tmp_path)
    df = cache.scan_uar(tmp_path).set_index("path")
    sha = lambda s: hashlib.sha256(s.encode()).hexdigest()
    assert df.loc["progan/1_fake/a.npy", "image_id"] == sha("progan/1_fake/a.npy")
    assert df["source"].to_dict()["sd/cat/0_real/a.npy"] == "sd"  # category folders merge into the generator
    assert df.loc["progan/1_fake/a.npy", "pair_id"] == df.loc["progan/0_real/a.npy", "image_id"]
    assert df.loc["progan/0_real/a.npy", "pair_id"] == df.loc["progan/0_real/a.npy", "image_id"]
    assert df.loc["progan/1_fake/b.npy", "pair_id"] == ""  # no real with that stem
    assert df.loc["sd/car/1_fake/a.npy", "pair_id"] == df.loc["sd/car/0_real/a.npy", "image_id"]  # not sd/cat's
    assert df["label"].to_dict() == {p: int("1_fake" in p) for p in df.index}


def test_open_folder_reads_exact_values(tmp_path):
    arrays = make_folder(tmp_path)
    c = cache.open(tmp_path)
    assert c.features == {"probe": (6,)} and c.format == "npy" and len(c) == 6
    fs = c.load()
    for path, vec in zip(fs.meta["path"], fs.features["probe"]):
        np.testing.assert_array_equal(vec, arrays[path])
    bare = tmp_path / "progan"
    assert set(cache.open(bare, source="pg").meta()["path"]) == {
        "pg/0_real/a.npy",
        "pg/1_fake/a.npy",
        "pg/1_fake/b.npy",
    }


def test_pickled_npy_is_refused(tmp_path):
    make_folder(tmp_path)
    bad = tmp_path / "progan/0_real/evil.npy"
    np.save(bad, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"evil\.npy: refused, it needs pickle"):
        cache.open(tmp_path).load()
    bad.write_bytes(pickle.dumps([1.0, 2.0]))  # not even an .npy: a raw pickle
    with pytest.raises(ValueError, match=r"evil\.npy"):
        cache.load_npy(bad)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((2, 6), np.float32), r"shape \(2, 6\), expected \(1, D\) or \(D,\)"),
        (np.zeros((1, 5), np.float32), "mixed dims"),
        (np.array([[0, 1, np.nan, 0, 0, 0]], np.float32), "NaN/inf"),
        (np.array([[0, 1, np.inf, 0, 0, 0]], np.float32), "NaN/inf"),
    ],
)
def test_bad_arrays_name_the_file(tmp_path, array, message):
    make_folder(tmp_path)
    np.save(tmp_path / "sd/car/1_fake/zz.npy", array)
    with pytest.raises(ValueError, match=rf"zz\.npy: .*{message}"):
        cache.open(tmp_path).load()
