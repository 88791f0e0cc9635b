"""Streaming a cache in chunks: every selected row once, the stored values, seeded order, bounded buffers."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import cache
from cache.stream import MIX_CHUNKS, open_stream
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


@pytest.mark.parametrize("shuffle", [False, True])
def test_every_selected_row_once_with_the_stored_values(store, shuffle: bool) -> None:
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
