"""The small grammars users type (`aigi.common.grammar`): each form and each refusal, table-driven."""

from __future__ import annotations

import pytest

from aigi.common.grammar import (
    BandRule,
    ThresholdRule,
    apply_overrides,
    parse_aliased,
    parse_assignments,
    parse_band,
    parse_budget,
    parse_side,
    parse_size,
    parse_split_ratio,
    parse_stream,
    parse_threshold,
    set_dotted,
)


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("0.3", ThresholdRule("fixed", 0.3)),
        (0.5, ThresholdRule("fixed", 0.5)),
        ("VAL", ThresholdRule("val_acc")),
        ("val_acc", ThresholdRule("val_acc")),
        ("fpr:0.01", ThresholdRule("target_fpr", 0.01)),
    ],
)
def test_thresholds(text, rule) -> None:
    assert parse_threshold(text) == rule
    assert parse_threshold(str(rule)) == rule  # the printed form reads back


@pytest.mark.parametrize("bad", ["1.5", "high", "nan", "fpr:1", "fpr:x", "fpr:", "-0.1", "inf"])
def test_bad_thresholds_name_the_option_and_the_forms(bad) -> None:
    with pytest.raises(ValueError, match="--threshold"):
        parse_threshold(bad)


def test_threshold_rules_give_the_calibration_keywords() -> None:
    assert parse_threshold("fpr:0.05").fit_kwargs() == {"threshold_policy": "target_fpr", "target_fpr": 0.05}
    assert parse_threshold("0.7").fit_kwargs() == {"threshold_policy": "fixed", "threshold": 0.7}
    assert parse_threshold("val").fit_kwargs() == {"threshold_policy": "val_acc"}


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        (None, BandRule()),
        ("none", BandRule()),
        ("error:0.01", BandRule("error", 0.01)),
        ("coverage:0.9", BandRule("coverage", 0.9)),
    ],
)
def test_bands(text, rule) -> None:
    assert parse_band(text) == rule


@pytest.mark.parametrize("bad", ["error", "error:2", "none:0.1", "width:0.1", "coverage:0"])
def test_bad_bands(bad) -> None:
    with pytest.raises(ValueError, match="--band"):
        parse_band(bad)


def test_sizes_and_budgets() -> None:
    assert parse_size("1.5GB", option="x") == 1_500_000_000
    assert parse_size("800 MiB", option="x") == 800 * 2**20
    assert parse_size(123456, option="x") == 123456
    assert parse_budget(None, default=7) == parse_budget("auto", default=7) == 7
    for bad in ("0GB", "-1", "lots", "1.5XB", True, float("nan"), "1e999GB"):
        with pytest.raises(ValueError, match="1.5GB"):
            parse_budget(bad, default=7)


def test_stream_modes() -> None:
    assert [parse_stream(v) for v in ("auto", "TRUE", "false", True, False)] == ["auto", True, False, True, False]
    with pytest.raises(ValueError, match="data.stream"):
        parse_stream("sometimes")


def test_split_ratios() -> None:
    assert parse_split_ratio("train=0.8,test=0.2") == {"train": 0.8, "test": 0.2}
    for bad, why in (("train=0.8", "sum to 1"), ("dev=1", "NAME=FRACTION"), ("train=x,test=1", "not a number")):
        with pytest.raises(ValueError, match=why):
            parse_split_ratio(bad)


def test_assignments_and_aliased_lists() -> None:
    assert parse_assignments("human=1, art = 0.5", what="weight") == {"human": "1", "art": "0.5"}
    with pytest.raises(ValueError, match="bad weight 'human'"):
        parse_assignments("human", what="weight")
    assert parse_aliased(["w.pth"], ["clip"]) == {"clip": "w.pth"}
    assert parse_aliased(["a=x", "b=y"], ["a", "b"]) == {"a": "x", "b": "y"}
    with pytest.raises(ValueError, match="ALIAS=VALUE"):
        parse_aliased(["w.pth"], ["a", "b"])


def test_pixel_sides() -> None:
    assert parse_side(None) is None and parse_side("none") is None and parse_side("256") == 256
    for bad in ("4", "x", "-8"):
        with pytest.raises(ValueError, match="--resize"):
            parse_side(bad)


def test_set_paths() -> None:
    data = {"fit": {"lr": 1}}
    set_dotted(data, "fit.lr", 2)
    set_dotted(data, "data.where.view", ["orig"])
    assert data == {"fit": {"lr": 2}, "data": {"where": {"view": ["orig"]}}}
    with pytest.raises(ValueError, match="holds a value"):
        set_dotted(data, "fit.lr.x", 1)
    with pytest.raises(ValueError, match="dotted key"):
        set_dotted(data, "fit..lr", 1)
    out = apply_overrides(data, ["fit.lr=3"], parse=int)
    assert out["fit"]["lr"] == 3 and data["fit"]["lr"] == 2  # a copy
    with pytest.raises(ValueError, match="KEY=VALUE"):
        apply_overrides(data, ["fit.lr"], parse=int)
