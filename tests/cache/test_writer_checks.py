"""The writer refuses what does not fit: another fingerprint, other features, bad shapes, NaN/inf, bad columns."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from aigi import cache
from tests.cache.helpers import FEATURES, SPEC, rows


def test_fingerprint_is_sha256_of_canonical_json():
    spec = {"b": (1, 2), "a": {"y": 1.5, "x": None}}
    text = '{"a":{"x":null,"y":1.5},"b":[1,2]}'  # sorted keys, no spaces, tuples as lists
    assert cache.canonical_json(spec) == text
    assert cache.fingerprint(spec) == hashlib.sha256(text.encode()).hexdigest()
    assert cache.fingerprint({"a": {"x": None, "y": 1.5}, "b": [1, 2]}) == cache.fingerprint(spec)


def test_cache_json_content(tmp_path):
    cache.CacheWriter(tmp_path, spec=SPEC, features=FEATURES, fmt="parquet")
    header = json.loads((tmp_path / "cache.json").read_text())
    assert header == {
        "schema_version": 1,
        "format": "parquet",
        "spec": SPEC,
        "fingerprint": cache.fingerprint(SPEC),
        "features": {"l3.cls": [8], "l5.tokens": [3, 4]},
        "dtype": "float16",
    }


def test_fingerprint_mismatch_names_the_fields(tmp_path):
    cache.CacheWriter(tmp_path, spec=SPEC, features=FEATURES)
    other = {**SPEC, "input_size": 336, "layers": [3, 6]}
    with pytest.raises(ValueError, match="fingerprint mismatch") as err:
        cache.CacheWriter(tmp_path, spec=other, features=FEATURES)
    assert "input_size: 224 -> 336" in str(err.value) and "layers.1" not in str(err.value)
    assert "layers: [3, 5] -> [3, 6]" in str(err.value) and "weights_sha256" not in str(err.value)
    cache.CacheWriter(tmp_path, spec=dict(reversed(SPEC.items())), features=FEATURES)  # same spec: reopens


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"fmt": "parquet"}, "format"), ({"features": {"l3.cls": (9,)}}, "features"), ({"dtype": "float32"}, "dtype")],
)
def test_reopen_with_other_settings_is_refused(tmp_path, kwargs, message):
    cache.CacheWriter(tmp_path, spec=SPEC, features=FEATURES)
    with pytest.raises(ValueError, match=message):
        cache.CacheWriter(tmp_path, **{"spec": SPEC, "features": FEATURES, **kwargs})


def test_bad_batches_are_refused_with_the_problem(tmp_path):
    w = cache.CacheWriter(tmp_path, spec=SPEC, features=FEATURES)
    meta, feats = rows(4)
    with pytest.raises(ValueError, match=r"'l3.cls' has shape \(4, 7\), expected \(4, 8\)"):
        w.append(meta, {**feats, "l3.cls": np.zeros((4, 7))})
    with pytest.raises(ValueError, match="do not match"):
        w.append(meta, {"l3.cls": feats["l3.cls"]})
    nan = feats["l3.cls"].copy()
    nan[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN/inf in 1 row"):
        w.write_shard(0, meta, {**feats, "l3.cls": nan})
    with pytest.raises(ValueError, match="beyond the float16 range"):
        w.append(meta, {**feats, "l3.cls": np.full((4, 8), 1e6, np.float32)})
    with pytest.raises(ValueError, match=r"missing column\(s\) \['source'\]"):
        w.append(meta.drop(columns=["source"]), feats)
    with pytest.raises(ValueError, match=r"unknown column\(s\) \['colour'\]"):
        w.append(meta.assign(colour="red"), feats)
    with pytest.raises(ValueError, match="label"):
        w.append(meta.assign(label=2), feats)
    w.close()
    assert not list((tmp_path / "shards").iterdir())  # nothing was written


def test_invalid_settings(tmp_path):
    with pytest.raises(ValueError, match="unknown cache format"):
        cache.CacheWriter(tmp_path, spec=SPEC, features=FEATURES, fmt="zarr")
    with pytest.raises(ValueError, match="no '/'"):
        cache.CacheWriter(tmp_path, spec=SPEC, features={"a/b": (2,)})
