"""The shard index: digests and row counts recorded at commit; verify and loading use them; repair drops damage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from aigi import cache
from aigi.cache.locking import owner_tag
from tests.cache.helpers import FEATURES, SPEC, as_stored, rows

N, SHARD = 12, 4


def make(path, fmt="h5"):
    meta, feats = rows(N)
    with cache.CacheWriter(path, spec=SPEC, features=FEATURES, fmt=fmt, shard_size=SHARD) as w:
        w.append(meta, feats)
    return meta, feats


def flip(file, offset: int) -> None:
    with open(file, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ 0x01]))


def dataset_offset(file, name: str) -> int:
    with h5py.File(file, "r") as f:
        return f[name].id.get_offset()


def test_index_records_rows_size_and_digest_of_each_committed_shard(tmp_path):
    make(tmp_path)
    index = json.loads((tmp_path / "index.json").read_text())
    assert sorted(index["shards"]) == ["00000.h5", "00001.h5", "00002.h5"]
    import hashlib

    for name, rec in index["shards"].items():
        data = (tmp_path / "shards" / name).read_bytes()
        assert rec == {"rows": SHARD, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_flipped_feature_byte_is_caught_by_verify(tmp_path):
    make(tmp_path)
    shard = tmp_path / "shards/00001.h5"
    before = cache.open(tmp_path).load(dtype="float16").features["l3.cls"].copy()
    flip(shard, dataset_offset(shard, "features/l3.cls") + 3)  # low mantissa bit: finite, slightly off
    after = cache.open(tmp_path).load(dtype="float16").features["l3.cls"]
    assert np.isfinite(after).all() and not np.array_equal(before, after)
    with pytest.raises(ValueError, match="00001.h5: bytes differ from the digest recorded at commit"):
        cache.verify(tmp_path)


def test_flipped_label_byte_is_caught_by_verify(tmp_path):
    make(tmp_path)
    shard = tmp_path / "shards/00002.h5"
    flip(shard, dataset_offset(shard, "meta/label"))
    labels = cache.open(tmp_path).meta()["label"].to_numpy()
    assert labels[8] == 1 - rows(N)[0]["label"].iloc[8]  # the label really changed
    with pytest.raises(ValueError, match="00002.h5: bytes differ"):
        cache.verify(tmp_path)


def test_deleted_shard_fails_verify_and_loading(tmp_path):
    make(tmp_path)
    (tmp_path / "shards/00001.h5").unlink()
    with pytest.raises(ValueError, match="00001.h5: recorded in index.json but missing"):
        cache.verify(tmp_path)
    with pytest.raises(ValueError, match="00001.h5: damaged shard .*missing.*aigi cache repair"):
        cache.open(tmp_path).load()


def test_loading_checks_row_counts_against_the_index(tmp_path):
    make(tmp_path)
    body = json.loads((tmp_path / "index.json").read_text())
    body["shards"]["00000.h5"]["rows"] = 5
    (tmp_path / "index.json").write_text(json.dumps(body))
    with pytest.raises(ValueError, match="00000.h5: damaged shard .*holds 4 rows.*recorded 5 rows"):
        cache.open(tmp_path).meta()


def test_loading_refuses_repeated_keys_unless_asked(tmp_path):
    meta, feats = make(tmp_path)
    w = cache.CacheWriter(tmp_path, spec=SPEC, features=FEATURES)
    w.write_shard(3, meta.iloc[:2], {k: v[:2] for k, v in feats.items()})
    with pytest.raises(ValueError, match=r"4 rows repeat an \(image_id, view\) key, e.g. paths \['gen0/img_0.png'"):
        cache.open(tmp_path).load()
    assert len(cache.open(tmp_path, keep_duplicates=True).load()) == N + 2


def test_repair_drops_damage_and_the_import_recreates_it(tmp_path):
    meta, feats = make(tmp_path)
    w = cache.CacheWriter(tmp_path, spec=SPEC, features=FEATURES)
    w.write_shard(3, meta.iloc[2:6], {k: v[2:6] for k, v in feats.items()})  # rows 2..5 again: 2 from 0, 2 from 1
    flip(tmp_path / "shards/00002.h5", dataset_offset(tmp_path / "shards/00002.h5", "features/l5.tokens") + 1)
    (tmp_path / "shards/00009.h5").write_bytes((tmp_path / "shards/00000.h5").read_bytes())  # never committed
    result = cache.repair(tmp_path)
    assert result["dropped_shards"] == {"00002.h5": 4}
    assert result["repeated_rows_dropped"] == 4 and result["rewritten"] == []
    assert "00009.h5" in result["removed"]
    assert cache.verify(tmp_path)["rows"] == 8
    c = cache.open(tmp_path)
    assert sorted(c.meta()["image_id"]) == sorted(meta["image_id"].iloc[:8])
    todo = ~meta["image_id"].isin(set(c.meta()["image_id"])).to_numpy()
    with cache.CacheWriter(tmp_path, spec=SPEC, features=FEATURES, shard_size=SHARD) as w:
        w.append(meta[todo], {k: v[todo] for k, v in feats.items()})
    assert cache.verify(tmp_path)["rows"] == N
    got = cache.open(tmp_path).load()
    order = np.argsort(got.meta["image_id"].to_numpy())
    ref = np.argsort(meta["image_id"].to_numpy())
    assert np.array_equal(got.features["l3.cls"][order], as_stored(feats["l3.cls"])[ref])


def test_repair_rewrites_a_partly_repeated_shard(tmp_path):
    meta, feats = make(tmp_path, fmt="parquet")
    w = cache.CacheWriter(tmp_path, spec=SPEC, features=FEATURES, fmt="parquet")
    extra, extra_feats = rows(2, start=100)
    both = pd.concat([meta.iloc[:2], extra], ignore_index=True)
    w.write_shard(3, both, {k: np.concatenate([feats[k][:2], extra_feats[k]]) for k in FEATURES})
    result = cache.repair(tmp_path)
    assert result["repeated_rows_dropped"] == 2 and result["rewritten"] == ["00003.parquet"]
    assert cache.verify(tmp_path)["rows"] == N + 2
    got = cache.open(tmp_path).load(where={"image_id": list(extra["image_id"])})
    assert np.array_equal(got.features["l3.cls"], as_stored(extra_feats["l3.cls"]))


def test_a_cache_without_index_is_adopted(tmp_path):
    make(tmp_path)
    (tmp_path / "index.json").unlink()
    with pytest.raises(ValueError, match="no index.json"):
        cache.verify(tmp_path)
    assert len(cache.open(tmp_path)) == N  # still readable
    cache.repair(tmp_path)
    assert cache.verify(tmp_path)["rows"] == N


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_only_dead_writers_temp_and_claim_files_are_removed(tmp_path):
    make(tmp_path)
    host = owner_tag().rsplit("-", 1)[0]
    shards = tmp_path / "shards"
    dead = [shards / f".00005.h5.tmp-{host}-{dead_pid()}", shards / f".00006.claim-{host}-{dead_pid()}"]
    live = [shards / f".00007.h5.tmp-{host}-{os.getpid()}", shards / f".00008.h5.tmp-otherhost-{dead_pid()}"]
    for f in dead + live:
        f.write_bytes(b"partial")
    cache.CacheWriter(tmp_path, spec=SPEC, features=FEATURES)
    assert [f.exists() for f in dead + live] == [False, False, True, True]


def test_compact_removes_a_dead_compacts_temp_file(tmp_path):
    make(tmp_path / "c")
    host = owner_tag().rsplit("-", 1)[0]
    left = tmp_path / f".all.h5.tmp-{host}-{dead_pid()}"
    left.write_bytes(b"x" * 1000)
    cache.compact(tmp_path / "c", tmp_path / "all.h5")
    assert not left.exists() and len(cache.open(tmp_path / "all.h5")) == N


def test_compact_refuses_repeated_keys_and_the_cli_repairs_them(tmp_path, capsys):
    from aigi.cli import main

    meta, feats = make(tmp_path / "c")
    cache.CacheWriter(tmp_path / "c", spec=SPEC, features=FEATURES).write_shard(
        3, meta.iloc[:2], {k: v[:2] for k, v in feats.items()}
    )
    with pytest.raises(ValueError, match="rows repeat an"):
        cache.compact(tmp_path / "c", tmp_path / "all.h5")
    assert main(["cache", "verify", str(tmp_path / "c")]) == 2
    assert "key(s) occur on several rows" in capsys.readouterr().err
    assert main(["cache", "repair", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "2 repeated row(s)" in out and f"ok: {N} rows" in out
    assert len(cache.open(cache.compact(tmp_path / "c", tmp_path / "all.h5"))) == N


def test_repeated_keys_are_found_as_pandas_finds_them():
    """The integer-coded key check flags exactly the rows `DataFrame.duplicated` flags: one image in several views is
    fine, one (image_id, view) twice is not, missing views count as one value."""
    from aigi.cache.reader import _refuse_duplicates

    ok = pd.DataFrame(
        {"image_id": ["a", "a", "b", "c"], "view": ["full", "crop", "full", "full"], "path": list("wxyz")}
    )
    _refuse_duplicates(ok.astype("string"), Path("c"))
    rng = np.random.default_rng(0)
    for _ in range(20):
        df = pd.DataFrame(
            {
                "image_id": rng.choice(list("abcdefgh"), 12),
                "view": rng.choice(["full", "crop", None], 12),
                "path": [f"p{i}" for i in range(12)],
            }
        ).astype("string")
        expected = df.duplicated(subset=["image_id", "view"], keep=False)
        if expected.any():
            with pytest.raises(ValueError, match=f"{int(expected.sum())} rows repeat an"):
                _refuse_duplicates(df, Path("c"))
        else:
            _refuse_duplicates(df, Path("c"))
