"""Write -> read equality for HDF5 and Parquet caches, filtering, batching, compaction, info."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from aigi import cache
from tests.cache.helpers import FEATURES, SPEC, as_stored, rows

# float16 storage: every value read back equals np.float16(x) exactly (round-to-nearest-even cast, then widened
# to float32). float32 storage returns the input bit for bit.


def write(path, meta, feats, *, fmt="h5", shard_size=7, dtype="float16", errors=()):
    with cache.CacheWriter(path, spec=SPEC, features=FEATURES, fmt=fmt, shard_size=shard_size, dtype=dtype) as w:
        w.append(meta.iloc[:10], {k: v[:10] for k, v in feats.items()}, errors=errors)
        w.append(meta.iloc[10:], {k: v[10:] for k, v in feats.items()})
    return path


@pytest.mark.parametrize("fmt", ["h5", "parquet"])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_write_read_equal(tmp_path, fmt, dtype):
    meta, feats = rows(23)
    write(tmp_path / "c", meta, feats, fmt=fmt, dtype=dtype)
    shards = sorted(p.name for p in (tmp_path / "c" / "shards").glob(f"*.{fmt}"))
    assert shards == [f"0000{i}.{fmt}" for i in range(4)]  # 7 + 7 + 7 + 2 rows
    c = cache.open(tmp_path / "c")
    assert (len(c), c.format, c.features, c.dtype) == (23, fmt, FEATURES, dtype)
    assert c.fingerprint == cache.fingerprint(SPEC) and c.spec == SPEC
    fs = c.load()
    for name in FEATURES:
        assert fs.features[name].dtype == np.float32
        np.testing.assert_array_equal(fs.features[name], as_stored(feats[name], dtype))
    if dtype == "float16":  # the rounding is real: float16 differs from the float32 input, within 2^-11 relative
        assert not np.array_equal(fs.features["l3.cls"], feats["l3.cls"])
        np.testing.assert_allclose(fs.features["l3.cls"], feats["l3.cls"], rtol=2**-11, atol=2**-24)
    assert fs.meta["image_id"].tolist() == meta["image_id"].tolist()
    assert fs.meta["width"].tolist() == meta["width"].tolist()
    assert (fs.meta["view"] == "orig").all() and (fs.meta["domain"] == "").all()
    np.testing.assert_array_equal(fs.labels, meta["label"].to_numpy())


@pytest.mark.parametrize("fmt", ["h5", "parquet"])
def test_where_batches_take(tmp_path, fmt):
    meta, feats = rows(30)
    c = cache.open(write(tmp_path / "c", meta, feats, fmt=fmt))
    test = c.load(["l3.cls"], where={"split": "test", "source": ["gen0", "gen1"]})
    expect = ((meta["split"] == "test") & meta["source"].isin(["gen0", "gen1"])).to_numpy()
    assert list(test.features) == ["l3.cls"] and len(test) == expect.sum() > 0
    np.testing.assert_array_equal(test.features["l3.cls"], as_stored(feats["l3.cls"][expect]))
    assert c.meta(where={"split": "test"})["image_id"].tolist() == meta.loc[meta.split == "test", "image_id"].tolist()
    batches = list(c.iter_batches(4, where={"split": "train"}))
    assert [len(b) for b in batches] == [4] * 5 + [2]  # 22 train rows spread over 5 shards
    train = (meta["split"] == "train").to_numpy()
    np.testing.assert_array_equal(
        np.concatenate([b.features["l5.tokens"] for b in batches]), as_stored(feats["l5.tokens"][train])
    )
    picks = [29, 3, 3, 17, 0]
    got = c.take(picks, ["l5.tokens"])
    np.testing.assert_array_equal(got.features["l5.tokens"], as_stored(feats["l5.tokens"][picks]))
    assert got.meta["image_id"].tolist() == meta["image_id"].iloc[picks].tolist()
    with pytest.raises(ValueError, match="unknown column 'nope'"):
        c.load(where={"nope": 1})
    with pytest.raises(ValueError, match="unknown feature"):
        c.load(["l9.cls"])


def test_errors_files_and_empty_shard(tmp_path):
    meta, feats = rows(5)
    err = [{"image_id": "f" * 64, "path": "bad.png", "reason": "truncated"}]
    w = cache.CacheWriter(tmp_path / "c", spec=SPEC, features=FEATURES)
    w.write_shard(0, meta, feats, errors=err)
    empty = {k: np.zeros((0, *s), np.float32) for k, s in FEATURES.items()}
    w.write_shard(1, meta.iloc[:0], empty, errors=[{**err[0], "path": "b.png", "view": "jpeg:75"}])
    assert w.shard_done(0) and w.shard_done(1) and not w.shard_done(2)
    records = json.loads((tmp_path / "c/shards/00000.errors.json").read_text())
    assert records == [{"image_id": "f" * 64, "path": "bad.png", "view": "orig", "reason": "truncated"}]
    c = cache.open(tmp_path / "c")
    assert len(c) == 5 and len(c.errors()) == 2 and c.info()["errors"] == 2
    assert cache.verify(tmp_path / "c")["rows"] == 5


@pytest.mark.parametrize("fmt", ["h5", "parquet"])
def test_compact_equals_source(tmp_path, fmt):
    meta, feats = rows(20)
    src = write(tmp_path / "c", meta, feats, fmt=fmt, errors=[{"image_id": "x", "path": "x.png", "reason": "r"}])
    out = cache.compact(src, tmp_path / "all.h5")
    a, b = cache.open(src).load(), cache.open(out).load()
    pd.testing.assert_frame_equal(a.meta, b.meta)
    for name in FEATURES:
        np.testing.assert_array_equal(a.features[name], b.features[name])
    c = cache.open(out)
    assert (c.fingerprint, c.format, len(c.errors())) == (cache.fingerprint(SPEC), "h5", 1)
    assert cache.verify(out)["rows"] == 20


def test_info_counts(tmp_path):
    meta, feats = rows(12)
    info = cache.info(write(tmp_path / "c", meta, feats, fmt="parquet"))
    assert info["rows"] == 12 and info["shards"] == 2
    assert info["sources"] == {"gen0": 4, "gen1": 4, "gen2": 4}
    assert info["splits"] == {"test": 3, "train": 9} and info["labels"] == {"0": 6, "1": 6}
    assert info["features"] == {"l3.cls": [8], "l5.tokens": [3, 4]} and info["bytes_on_disk"] > 12 * 20 * 2


def test_parquet_dataset_and_single_files(tmp_path):
    meta, feats = rows(9)
    write(tmp_path / "c", meta, feats, fmt="parquet")
    c = cache.open(tmp_path / "c" / "shards")  # the Parquet files alone describe themselves
    assert c.fingerprint == cache.fingerprint(SPEC) and len(c) == 9
    np.testing.assert_array_equal(c.load().features["l3.cls"], as_stored(feats["l3.cls"]))
    one = cache.open(tmp_path / "c" / "shards" / "00001.parquet")
    assert one.meta()["image_id"].tolist() == meta["image_id"].iloc[7:].tolist()


def test_foreign_parquet_with_list_columns(tmp_path):
    meta, feats = rows(6)
    df = meta.assign(**{"feat.x": list(feats["l3.cls"].astype(np.float64))})
    df.to_parquet(tmp_path / "part-0.parquet", index=False)
    c = cache.open(tmp_path)
    assert c.features == {"x": (8,)}
    np.testing.assert_array_equal(c.load().features["x"], feats["l3.cls"])
    assert (c.meta()["view"] == "orig").all()


@pytest.mark.parametrize("fmt", ["h5", "parquet"])
def test_float16_load_keeps_stored_values(tmp_path, fmt):
    meta, feats = rows(16)
    c = cache.open(write(tmp_path / "c", meta, feats, fmt=fmt))
    half = c.load(dtype="float16")
    assert half.features["l5.tokens"].dtype == np.float16
    np.testing.assert_array_equal(half.features["l5.tokens"], feats["l5.tokens"].astype(np.float16))


def test_empty_cache_reads_as_zero_rows(tmp_path):
    cache.CacheWriter(tmp_path / "c", spec=SPEC, features=FEATURES)
    c = cache.open(tmp_path / "c")
    fs = c.load()
    assert len(c) == 0 and len(fs) == 0 and fs.features["l5.tokens"].shape == (0, 3, 4)
    assert c.info()["rows"] == 0 and cache.verify(tmp_path / "c")["rows"] == 0
