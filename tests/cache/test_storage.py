"""Every storage kind answers the one interface alike: ranges, selected rows and mapped ranges equal whole reads."""

from __future__ import annotations

import numpy as np
import pytest

from aigi import cache
from aigi.cache.hdf5 import CompactedH5, H5Shard
from aigi.cache.kinds import open_file
from aigi.cache.npyfiles import NpyFiles
from aigi.cache.parquet import ParquetShard
from aigi.cache.storage import Storage
from tests.cache.helpers import FEATURES, SPEC, rows
from tests.cache.test_uar_folder import make_folder

N = 40


def _part(kind: str, tmp_path) -> Storage:
    if kind == "npy":
        make_folder(tmp_path / "uar")
        return cache.open(tmp_path / "uar").parts[0]
    meta, feats = rows(N)
    fmt = "parquet" if kind == "parquet" else "h5"
    with cache.CacheWriter(tmp_path / "c", spec=SPEC, features=FEATURES, fmt=fmt, shard_size=N) as w:
        w.append(meta, feats)
    if kind == "compacted":
        return cache.open(cache.compact(tmp_path / "c", tmp_path / "all.h5")).parts[0]
    return cache.open(tmp_path / "c").parts[0]


@pytest.mark.parametrize(
    ("kind", "cls"), [("h5", H5Shard), ("parquet", ParquetShard), ("compacted", CompactedH5), ("npy", NpyFiles)]
)
def test_every_kind_reads_ranges_and_rows_as_its_whole_read(tmp_path, kind: str, cls: type) -> None:
    part = _part(kind, tmp_path)
    assert type(part) is cls and part.n == len(part.meta()) > 3
    names = list(part.header["features"])
    whole = part.read(names)
    lo, hi = 1, part.n - 1
    dest = {n: np.zeros((hi - lo, *whole[n].shape[1:]), whole[n].dtype) for n in names}
    assert part.read_range(dest, lo, hi) == sum(v.nbytes for v in dest.values())
    picked = np.array([1, 2, lo + (hi - lo) // 2, hi - 1])
    chosen = part.read_rows(names, picked)
    mapped = part.map_range(names, lo, hi)
    assert (mapped is None) == (kind in ("parquet", "npy"))  # HDF5's contiguous datasets map, the others do not
    for n in names:
        np.testing.assert_array_equal(dest[n], whole[n][lo:hi])
        np.testing.assert_array_equal(chosen[n], whole[n][picked])
        if mapped is not None:
            np.testing.assert_array_equal(mapped[n], whole[n][lo:hi])
    selected = {n: np.zeros_like(v) for n, v in dest.items()}
    part.read_selected(selected, lo, hi, picked)
    for n in names:
        np.testing.assert_array_equal(selected[n][: len(picked)], whole[n][picked])
    assert part.map_range(names, lo, hi, resident=lambda fd, start, length: False) is None
    problems, meta = part.verify()
    assert problems == [] and len(meta) == part.n
    assert part.nbytes() > 0 and int(part.bounds(16)[-1]) >= part.n


def test_a_shard_file_opens_by_its_suffix_under_its_own_header(tmp_path) -> None:
    meta, feats = rows(6)
    for fmt, cls in (("h5", H5Shard), ("parquet", ParquetShard)):
        with cache.CacheWriter(tmp_path / fmt, spec=SPEC, features=FEATURES, fmt=fmt) as w:
            w.append(meta, feats)
        part = open_file(tmp_path / fmt / "shards" / f"00000.{fmt}")
        assert type(part) is cls and part.header == part.stored_header() and part.n == 6
        np.testing.assert_array_equal(part.read(["l3.cls"])["l3.cls"], feats["l3.cls"].astype(np.float16))
