"""verify() finds damaged shards, NaN/inf, foreign fingerprints and duplicate keys, and lists them all."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from aigi import cache
from tests.cache.helpers import FEATURES, SPEC, rows


def make(path, n=12, shard_size=4):
    meta, feats = rows(n)
    with cache.CacheWriter(path, spec=SPEC, features=FEATURES, shard_size=shard_size) as w:
        w.append(meta, feats)
    return meta, feats


def test_sound_cache_passes(tmp_path):
    make(tmp_path)
    result = cache.verify(tmp_path)
    assert (result["ok"], result["rows"], result["shards"], result["stale_temp_files"]) == (True, 12, 3, [])


def test_nan_truncation_and_garbage_are_all_listed(tmp_path):
    make(tmp_path)
    with h5py.File(tmp_path / "shards/00001.h5", "r+") as f:
        f["features/l3.cls"][2, 3] = np.nan
    (tmp_path / "shards/00002.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(ValueError, match="2 problem") as err:
        cache.verify(tmp_path)
    assert "00001.h5: bytes differ from the digest recorded at commit" in str(err.value)
    assert "00002.h5: OSError: Unable to" in str(err.value)  # not HDF5 at all


def test_duplicate_keys_and_foreign_fingerprint(tmp_path):
    meta, feats = make(tmp_path)
    w = cache.CacheWriter(tmp_path, spec=SPEC, features=FEATURES)
    w.write_shard(3, meta.iloc[:2], {k: v[:2] for k, v in feats.items()})  # the same (image_id, view) again
    with pytest.raises(ValueError, match=r"2 \(image_id, view\) key\(s\) occur on several rows \(4 rows\)"):
        cache.verify(tmp_path)
    views = tmp_path / "views"
    make(views)
    cache.CacheWriter(views, spec=SPEC, features=FEATURES).write_shard(
        3, meta.iloc[:2].assign(view="jpeg:75"), {k: v[:2] for k, v in feats.items()}
    )
    assert cache.verify(views)["rows"] == 14  # another view of the same image is a different key
    other = tmp_path / "other"
    cache.CacheWriter(other, spec={**SPEC, "input_size": 336}, features=FEATURES).write_shard(
        0, meta.iloc[:1], {k: v[:1] for k, v in feats.items()}
    )
    (other / "shards/00000.h5").replace(views / "shards/00004.h5")  # copied in, never committed
    with pytest.raises(ValueError, match="00004.h5: not recorded in index.json"):
        cache.verify(views)
