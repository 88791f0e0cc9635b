"""Streaming a cache in chunks: every selected row once, the stored values, seeded order, bounded buffers."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import aigi.cache.stream as stream_mod
from aigi import cache
from aigi.cache.hdf5 import H5Shard
from aigi.cache.stream import MIX_CHUNKS, open_stream
from tests.cache.helpers import FEATURES, SPEC, rows
from tests.cache.test_uar_folder import make_folder


def _write(path, fmt: str, n: int = 1000, shard_size: int = 100, dtype: str = "float16"):
    with cache.CacheWriter(path, spec=SPEC, features=FEATURES, fmt=fmt, shard_size=shard_size, dtype=dtype) as w:
        meta, feats = rows(n)
        w.append(meta, feats)
    return cache.open(path)


def _gather(stream, **kwargs) -> tuple[dict[str, np.ndarray], np.ndarray]:
    got = {n: np.full((len(stream), *s), np.nan, dtype=stream.dtype) for n, s in stream.dims.items()}
    order = []
    for feats, pos in stream.batches(37, **kwargs):
        assert all(len(v) == len(pos) for v in feats.values()) and len(pos) <= 37
        for n, arr in feats.items():
            got[n][pos] = arr
        order.append(pos)
    return got, np.concatenate(order) if order else np.zeros(0, np.int64)


@pytest.fixture(params=["h5", "parquet", "compact"])
def store(request, tmp_path):
    if request.param == "compact":
        _write(tmp_path / "dir", "h5")
        return cache.open(cache.compact(tmp_path / "dir", tmp_path / "one.h5"))
    return _write(tmp_path / request.param, request.param)


@pytest.mark.parametrize("mapped", [True, False])
@pytest.mark.parametrize("shuffle", [False, True])
def test_every_selected_row_once_with_the_stored_values(store, shuffle: bool, mapped: bool, monkeypatch) -> None:
    monkeypatch.setattr(stream_mod, "MAP", mapped)  # HDF5 rows gathered from mapped pages, or read into a buffer
    where = {"split": "train", "source": ["gen0", "gen2"]}
    ref = store.load(where=where, dtype="float16")
    stream = open_stream(store, None, where, buffer_bytes=2 * MIX_CHUNKS * 40 * stream_row_bytes(store))
    assert len(stream) == len(ref) and stream._chunk_rows() == 40  # several chunks per shard, shards > chunks
    got, order = _gather(stream, shuffle=shuffle, seed=3)
    assert np.array_equal(np.sort(order), np.arange(len(ref)))
    for name, arr in ref.features.items():
        assert got[name].dtype == np.float16
        np.testing.assert_array_equal(got[name], arr)
    np.testing.assert_array_equal(stream.labels, ref.labels)
    if not shuffle:
        np.testing.assert_array_equal(order, np.arange(len(ref)))
    assert stream.stats.rows == len(ref) and stream.stats.bytes >= len(ref) * stream.row_bytes


def stream_row_bytes(store) -> int:
    return sum(int(np.prod(s)) for s in store.features.values()) * 2


@pytest.mark.parametrize("cached", [True, False])
def test_dense_hdf5_rows_in_the_page_cache_are_gathered_from_the_mapped_file(tmp_path, monkeypatch, cached) -> None:
    """The fast path: a dense run of HDF5 rows already in the page cache is mapped and gathered in place (one copy),
    never read into a buffer first; rows on disk, or with MAP off, come through one sequential read."""
    store = _write(tmp_path / "c", "h5")
    ref = store.load(dtype="float16").features
    reads = []
    real = H5Shard.read_range
    monkeypatch.setattr(H5Shard, "read_range", lambda self, *a: reads.append(a) or real(self, *a))
    monkeypatch.setattr(stream_mod, "_cached", lambda fd, start, length: cached)
    got, _ = _gather(open_stream(store, buffer_bytes=1 << 16), shuffle=True)
    assert (reads == []) == cached
    for name, arr in ref.items():
        np.testing.assert_array_equal(got[name], arr)
    monkeypatch.setattr(stream_mod, "MAP", False)
    reads.clear()
    got, _ = _gather(open_stream(store, buffer_bytes=1 << 16), shuffle=True)
    assert len(reads) > 0
    np.testing.assert_array_equal(got["l3.cls"], ref["l3.cls"])


def test_page_cache_residency_of_a_range(tmp_path) -> None:
    """`_cached` tells pages just read from pages evicted to disk (and says False past the end of the file)."""
    import os

    if not hasattr(os, "RWF_NOWAIT"):
        pytest.skip("no RWF_NOWAIT here: every dense range is read, never mapped")
    path = tmp_path / "f.bin"
    path.write_bytes(np.random.default_rng(0).bytes(4 << 20))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.pread(fd, 4 << 20, 0)
        if not stream_mod._cached(fd, 0, 4 << 20):
            pytest.skip("this file system does not answer RWF_NOWAIT reads")
        assert not stream_mod._cached(fd, 0, 8 << 20)  # past the end
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        if stream_mod._cached(fd, 1 << 20, 1 << 20):
            pytest.skip("this file system keeps its pages in memory (tmpfs): nothing to evict")
        os.pread(fd, 4096, 0)  # only the first page back
        assert not stream_mod._cached(fd, 0, 4 << 20) and stream_mod._cached(fd, 0, 4096)
    finally:
        os.close(fd)


def test_shuffle_is_seeded_and_mixes_chunks(tmp_path) -> None:
    store = _write(tmp_path / "c", "h5", n=2000, shard_size=500)
    stream = open_stream(store, ["l3.cls"], buffer_bytes=2 * MIX_CHUNKS * 50 * 16)
    a = _gather(stream, shuffle=True, seed=1)[1]
    b = _gather(stream, shuffle=True, seed=1)[1]
    c = _gather(stream, shuffle=True, seed=2)[1]
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    first = a[:37] // 50  # chunk of each row of the first batch: rows of several chunks, not one run
    assert len(np.unique(first)) > 1
    assert abs(np.corrcoef(np.arange(len(a)), a)[0, 1]) < 0.2  # no trace of the storage order


def test_subset_and_rows_read_only_those(tmp_path) -> None:
    store = _write(tmp_path / "c", "parquet")
    stream = open_stream(store)
    half = stream.subset(np.arange(len(stream)) % 2 == 0)
    np.testing.assert_array_equal(half.load()["l3.cls"], store.load(dtype="float16").features["l3.cls"][::2])
    picked = np.array([5, 3, 3, 400])
    got, order = _gather(stream, rows=picked)
    np.testing.assert_array_equal(order, [3, 5, 400])
    np.testing.assert_array_equal(got["l3.cls"][order], store.take([3, 5, 400], dtype="float16").features["l3.cls"])
    np.testing.assert_array_equal(stream.load("float32")["l5.tokens"], store.load().features["l5.tokens"])


def test_uar_folder_streams_like_it_loads(tmp_path) -> None:
    make_folder(tmp_path)
    store = cache.open(tmp_path)
    got, _ = _gather(open_stream(store), shuffle=True)
    np.testing.assert_array_equal(got["probe"], store.load().features["probe"])


def test_stopping_early_ends_the_reader_and_errors_reach_the_consumer(tmp_path) -> None:
    store = _write(tmp_path / "c", "h5", n=3000, shard_size=300)
    stream = open_stream(store, buffer_bytes=1 << 16)
    before = threading.active_count()
    for _ in stream.batches(10, prefetch=1):
        break
    assert threading.active_count() == before  # the reader thread has ended
    shard = sorted((tmp_path / "c").rglob("*.h5"))[4]
    shard.write_bytes(shard.read_bytes()[:2000])  # truncated
    with pytest.raises(Exception, match="00004"):
        list(open_stream(cache.open(tmp_path / "c")).batches(64))


def _second_cache(path, fmt: str, order: np.ndarray, seed: int = 7):
    """A second cache over the rows `order` of `rows(1000)` (same image ids and labels, in that storage order), with
    its own features: `l3.cls` (a name the first cache also has) and `extra`."""
    meta, _ = rows(1000)
    rng = np.random.default_rng(seed)
    feats = {"l3.cls": rng.standard_normal((1000, 8)).astype(np.float32), "extra": rng.standard_normal((1000, 5))}
    feats["extra"] = feats["extra"].astype(np.float32)
    spec = {**SPEC, "backbone": "other"}
    sub = meta.iloc[order].reset_index(drop=True)
    with cache.CacheWriter(path, spec=spec, features={"l3.cls": (8,), "extra": (5,)}, fmt=fmt, shard_size=90) as w:
        w.append(sub, {k: v[order] for k, v in feats.items()})
    return cache.open(path)


@pytest.mark.parametrize(("fmt", "storage"), [("h5", "same"), ("h5", "shuffled"), ("parquet", "shuffled")])
@pytest.mark.parametrize("shuffle", [False, True])
def test_a_join_of_two_caches_streams_the_rows_cache_join_loads(tmp_path, fmt: str, storage: str, shuffle) -> None:
    """Every joined row once, with both caches' features as `cache.join` gives them (shared names become
    alias/name), whether the second cache stores the rows in the same order or another, and lacks some of them."""
    from aigi.cache.stream import join_streams

    first = _write(tmp_path / "a", "h5")
    keep = np.arange(1000)[np.arange(1000) % 7 != 3]  # rows the second cache lacks: not in the join
    order = keep if storage == "same" else np.random.default_rng(1).permutation(keep)
    second = _second_cache(tmp_path / "b", fmt, order)
    where = {"split": "train"}
    ref = cache.join({"a": first.load(where=where, dtype="float16"), "b": second.load(where=where, dtype="float16")})
    size = 2 * MIX_CHUNKS * 40 * (stream_row_bytes(first) + 26)
    streams = {"a": open_stream(first, None, where, buffer_bytes=size), "b": open_stream(second, None, where)}
    joined = join_streams(streams)
    assert len(joined) == len(ref) < len(streams["a"]) and sorted(joined.dims) == sorted(ref.dims)
    assert sorted(joined.dims) == ["a/l3.cls", "b/l3.cls", "extra", "l5.tokens"]
    got, seen = _gather(joined, shuffle=shuffle, seed=2)
    assert np.array_equal(np.sort(seen), np.arange(len(ref)))
    for name, arr in ref.features.items():
        np.testing.assert_array_equal(got[name], arr, err_msg=name)
    np.testing.assert_array_equal(joined.labels, ref.labels)
    assert list(joined.meta["image_id"]) == list(ref.meta["image_id"])
    half = joined.subset(np.arange(len(joined)) % 2 == 0)
    np.testing.assert_array_equal(half.load()["extra"], ref.features["extra"][::2])
