"""`aigi.common.typed`: one strict mapping -> frozen dataclass converter for run configs and head configs."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from aigi import heads
from aigi.common import typed
from aigi.heads import make_config


@dataclass(frozen=True)
class Inner:
    rate: float
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outer:
    inner: Inner
    count: int = 1
    tags: dict[str, tuple[int, ...]] = field(default_factory=dict)
    limit: int | str | None = None


def test_values_are_converted_by_their_type_hints() -> None:
    got = typed.build(Outer, {"inner": {"rate": "1e-3", "names": "a"}, "count": 4.0, "tags": {"x": [1, 2]}})
    assert got == Outer(Inner(rate=1e-3, names=("a",)), count=4, tags={"x": (1, 2)})
    assert isinstance(got.count, int) and isinstance(got.inner.rate, float)
    assert typed.coerce(np.int64(7), int, key="k") == 7 and type(typed.coerce(np.int64(7), int, key="k")) is int
    assert type(typed.coerce(np.float32(0.5), float, key="k")) is float
    assert typed.coerce("1.5GB", int | str | None, key="k") == "1.5GB"
    assert typed.coerce(None, int | None, key="k") is None
    assert typed.coerce("0", str, key="k") == "0"  # a quoted number stays a string where a string is expected


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"inner": {"rate": 1}, "cuont": 2}, r"src: unknown key 'cuont'; did you mean 'count'\?"),
        ({"inner": {"rat": 1}}, r"src: unknown key 'inner.rat'; did you mean 'inner.rate'\?"),
        ({"inner": {"rate": "fast"}}, r"src: inner.rate must be float, got 'fast' \(str\)"),
        ({"inner": {"rate": 1}, "count": 1.5}, "count must be int"),
        ({"inner": {"rate": 1}, "count": True}, "count must be int"),
        ({"inner": {}}, "src: inner is incomplete: missing rate"),
        ({"inner": [1]}, "inner must be a mapping"),
    ],
)
def test_mistakes_are_one_error_naming_the_key(data: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        typed.build(Outer, data, source="src")


def test_unknown_keys_error_lists_every_unknown_key() -> None:
    with pytest.raises(typed.UnknownKeys) as caught:
        typed.typed_fields(Outer, {"a": 1, "count": 2, "b": 3}, where="x.", source="s")
    assert caught.value.keys == ["a", "b"] and caught.value.known == ["inner", "count", "tags", "limit"]
    assert "known keys under 'x.': inner, count, tags, limit" in str(caught.value)


def test_head_configs_go_through_the_same_converter() -> None:
    cls = heads.head_class("mlp").cfg_cls
    cfg = make_config(cls, {"inputs": ["x"], "in_dim": np.int64(5), "hidden": 8.0, "dropout": 0})
    assert cfg.inputs == ("x",) and type(cfg.in_dim) is int and cfg.hidden == 8 and type(cfg.dropout) is float
    with pytest.raises(ValueError, match=r"unknown key\(s\) for config: 'hiden' \(did you mean \['hidden'\]\?\)"):
        make_config(cls, {"inputs": ["x"], "in_dim": 5, "hiden": 8})
    with pytest.raises(ValueError, match="config: hidden must be int"):
        make_config(cls, {"inputs": ["x"], "in_dim": 5, "hidden": "wide"})
