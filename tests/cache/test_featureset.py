"""FeatureSet filtering and subsetting, and joins across caches on (image_id, view)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aigi import cache


def fs(ids, views, feats: dict, labels=None) -> cache.FeatureSet:
    meta = pd.DataFrame(
        {"image_id": ids, "view": views, "label": labels or [0] * len(ids), "split": ["train"] * len(ids)}
    )
    return cache.FeatureSet(feats, meta)


def test_featureset_basics():
    a = fs(["a", "b", "c"], ["orig"] * 3, {"x": np.arange(6, dtype=np.float16).reshape(3, 2)}, [0, 1, 1])
    assert a.features["x"].dtype == np.float16  # kept as given when float16
    b = cache.FeatureSet({"x": np.arange(6).reshape(3, 2)}, a.meta)
    assert b.features["x"].dtype == np.float32 and len(b) == 3
    np.testing.assert_array_equal(b.subset([2, 0]).features["x"], [[4, 5], [0, 1]])
    np.testing.assert_array_equal(b.subset(np.array([True, False, True])).labels, [0, 1])
    assert b.where(label=1).column("image_id").tolist() == ["b", "c"]
    assert b.where(image_id=["a", "c"], label=[0]).column("image_id").tolist() == ["a"]
    with pytest.raises(ValueError, match="rows"):
        cache.FeatureSet({"x": np.zeros((2, 2))}, a.meta)


def test_subset_of_every_row_in_order_shares_the_features():
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    a = cache.FeatureSet({"x": x}, fs(list("abcd"), ["orig"] * 4, {"x": x}).meta)
    for rows in (np.ones(4, dtype=bool), [0, 1, 2, 3]):
        whole = a.subset(rows)
        assert np.shares_memory(whole.features["x"], x)  # a train split that is the whole set costs no copy
        np.testing.assert_array_equal(whole.features["x"], x)
        assert whole.column("image_id").tolist() == list("abcd")
    for rows in ([3, 2, 1, 0], [0, 1, 2], [0, 0, 1, 2]):  # any other selection is a copy, in the order asked
        part = a.subset(rows)
        assert not np.shares_memory(part.features["x"], x)
        np.testing.assert_array_equal(part.features["x"], x[rows])
    assert len(a.subset(np.zeros(4, dtype=bool))) == 0


def test_join_inner_on_key_and_renames_shared_names():
    a = fs(["a", "b", "c", "b"], ["orig", "orig", "orig", "jpeg:75"], {"x": np.arange(4.0)[:, None]}, [0, 1, 0, 1])
    b = fs(
        ["c", "b", "z"],
        ["orig", "jpeg:75", "orig"],
        {"x": np.array([[30.0], [21.0], [99.0]]), "y": np.array([[3.0], [2.0], [9.0]])},
        [0, 1, 0],
    )
    j = cache.join({"clip": a, "aim": b})
    assert list(j.features) == ["clip/x", "aim/x", "y"]
    assert list(zip(j.meta["image_id"], j.meta["view"])) == [("c", "orig"), ("b", "jpeg:75")]  # first set's order
    np.testing.assert_array_equal(j.features["clip/x"][:, 0], [2.0, 3.0])
    np.testing.assert_array_equal(j.features["aim/x"][:, 0], [30.0, 21.0])
    np.testing.assert_array_equal(j.features["y"][:, 0], [3.0, 2.0])


def test_join_errors():
    a = fs(["a"], ["orig"], {"x": np.zeros((1, 1))})
    b = fs(["b"], ["orig"], {"y": np.zeros((1, 1))})
    with pytest.raises(ValueError, match="empty"):
        cache.join({"a": a, "b": b})
    with pytest.raises(ValueError, match="labels"):
        cache.join({"a": a, "b": fs(["a"], ["orig"], {"y": np.zeros((1, 1))}, [1])})
    with pytest.raises(ValueError, match="duplicate"):
        cache.join({"a": fs(["a", "a"], ["orig", "orig"], {"x": np.zeros((2, 1))}), "b": a})
