"""Batched `.npy` reading: the same values and refusals as `np.load` + `load_npy`, file by file."""

from __future__ import annotations

import numpy as np
import pytest

from aigi.cache.uar import load_npy_batch


def test_batch_equals_np_load_for_mixed_headers(tmp_path) -> None:
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((1, 5)).astype(np.float32) for _ in range(700)]
    arrays[3] = arrays[3].reshape(5)  # (D,) among (1, D): another header
    arrays[9] = arrays[9].astype(np.float64)  # another dtype
    arrays[11] = np.asfortranarray(rng.standard_normal((1, 5)).astype(">f4"))  # big-endian
    files = []
    for i, arr in enumerate(arrays):
        files.append(str(tmp_path / f"{i}.npy"))
        np.save(files[-1], arr)
    got = load_npy_batch(files, dim=5, threads=3)
    want = np.stack([np.load(f, allow_pickle=False).reshape(-1).astype(np.float32) for f in files])
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.float32


@pytest.mark.parametrize("bad", ["nan", "pickle", "truncated", "dim"])
def test_batch_refuses_like_load_npy_naming_the_file(tmp_path, bad: str) -> None:
    files = []
    for i in range(300):
        files.append(str(tmp_path / f"{i}.npy"))
        np.save(files[-1], np.ones((1, 4), np.float32))
    target = files[257]
    if bad == "nan":
        np.save(target, np.array([[1, np.nan, 0, 0]], np.float32))
    elif bad == "pickle":
        with open(target, "wb") as fh:
            np.save(fh, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif bad == "truncated":
        raw = open(target, "rb").read()
        open(target, "wb").write(raw[:-3])
    else:
        np.save(target, np.ones((1, 6), np.float32))
    with pytest.raises(ValueError, match=f"{target}"):
        load_npy_batch(files, dim=4, threads=2)
