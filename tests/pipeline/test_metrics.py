"""Evaluation metrics against values worked out by hand on tiny inputs, and the report files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from aigi.pipeline.metrics import (
    assemble_groups,
    binary_metrics,
    calibrate_threshold,
    group_metrics,
    resample_weights,
    weighted_metrics,
)
from aigi.pipeline.report import write_report

# Three reals scored 0.1, 0.4, 0.7 and three fakes scored 0.9, 0.5, 0.2.
# At 0.5 (score >= 0.5 => fake): reals 0.1, 0.4 right, 0.7 wrong -> 2/3; fakes 0.9 and 0.5 (a tie) right, 0.2 wrong
# -> 2/3; ACC 4/6. Ranked: 0.9 F, 0.7 R, 0.5 F, 0.4 R, 0.2 F, 0.1 R: precision at each fake's rank 1/1, 2/3, 3/5,
# each adding recall 1/3 -> AP = (1 + 2/3 + 3/5) / 3 = 34/45. Fake > real in 3 + 2 + 1 of 9 pairs -> AUC 6/9.
LABELS = np.array([0, 0, 0, 1, 1, 1])
SCORES = np.array([0.1, 0.4, 0.7, 0.9, 0.5, 0.2])


def test_group_metrics_by_hand() -> None:
    m = binary_metrics(LABELS, SCORES, threshold=0.5)
    assert (m["n"], m["n_real"], m["n_fake"]) == (6, 3, 3)
    assert m["acc"] == pytest.approx(4 / 6)
    assert m["real_acc"] == pytest.approx(2 / 3)
    assert m["fake_acc"] == pytest.approx(2 / 3)
    assert m["ap"] == pytest.approx(34 / 45)
    assert m["auc"] == pytest.approx(6 / 9)


def test_ties_at_the_threshold_count_as_fake() -> None:
    m = binary_metrics(np.array([0, 1]), np.array([0.5, 0.5]), threshold=0.5)
    assert m["real_acc"] == 0.0 and m["fake_acc"] == 1.0 and m["acc"] == 0.5
    # just below the threshold is real
    m = binary_metrics(np.array([0, 1]), np.array([np.nextafter(0.5, 0), 0.5]), threshold=0.5)
    assert m["real_acc"] == 1.0 and m["fake_acc"] == 1.0


def test_threshold_moves_the_cut() -> None:
    # at 0.75 only 0.9 is called fake: reals 3/3 right, fakes 1/3 -> ACC 4/6; AP and AUC do not depend on it
    m = binary_metrics(LABELS, SCORES, threshold=0.75)
    assert (m["real_acc"], m["fake_acc"], m["acc"]) == pytest.approx((1.0, 1 / 3, 4 / 6))
    assert m["ap"] == pytest.approx(34 / 45)


def test_one_class_group_gets_acc_and_a_note() -> None:
    frame = pd.DataFrame({"label": [1, 1, 1, 1], "score": [0.9, 0.6, 0.3, 0.5], "source": ["gan"] * 4})
    out = group_metrics(frame, by="source")
    g = out["groups"]["gan"]
    assert g["acc"] == pytest.approx(3 / 4) and g["fake_acc"] == pytest.approx(3 / 4)
    assert g["real_acc"] is None and g["ap"] is None and g["auc"] is None
    assert "one class" in g["note"]


def _frame(rows: list[tuple[str, int, float, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["source", "label", "score", "pair_id"])


def test_mean_row_over_groups() -> None:
    # group A: the six rows above (ACC 4/6, AP 34/45); group B: two fakes at 0.8 and 0.3 (ACC 1/2, one class)
    rows = [("A", int(y), float(s), "") for y, s in zip(LABELS, SCORES, strict=False)] + [
        ("B", 1, 0.8, ""),
        ("B", 1, 0.3, ""),
    ]
    out = group_metrics(_frame(rows), by="source", reals="none")
    mean = out["mean"]
    assert mean["n"] == 8
    assert mean["acc"] == pytest.approx((4 / 6 + 1 / 2) / 2)
    assert mean["real_acc"] == pytest.approx(2 / 3)  # defined for A only
    assert mean["fake_acc"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert mean["ap"] == pytest.approx(34 / 45) and mean["auc"] == pytest.approx(2 / 3)
    assert "1 of 2" in mean["note"]
    assert out["threshold"] == 0.5


def test_fake_groups_are_paired_with_reals() -> None:
    rows = [
        ("real", 0, 0.2, "p1"),
        ("real", 0, 0.6, "p2"),
        ("real", 0, 0.1, "p3"),
        ("vae", 1, 0.7, "p1"),
        ("vae", 1, 0.4, "p2"),
        ("gan", 1, 0.9, ""),
    ]
    frame = _frame(rows)
    out = group_metrics(frame, by="source", reals="auto")
    assert set(out["groups"]) == {"vae", "gan"}  # the real-only group became the negatives
    vae = out["groups"]["vae"]  # reals p1 (0.2) and p2 (0.6) only
    assert (vae["n"], vae["n_real"], vae["n_fake"]) == (4, 2, 2)
    assert vae["real_acc"] == 0.5 and vae["fake_acc"] == 0.5 and vae["acc"] == 0.5
    assert vae["auc"] == pytest.approx(3 / 4)  # 0.7 beats both reals (0.2, 0.6), 0.4 beats 0.2 only
    gan = out["groups"]["gan"]  # no pair_id: all three reals
    assert (gan["n_real"], gan["n_fake"]) == (3, 1) and gan["real_acc"] == pytest.approx(2 / 3)
    assert gan["auc"] == 1.0 and "all 3 reals" in gan["note"]
    assert out["mean"]["n"] == 6
    assert out["reals"]["real_groups"] == ["real"]

    paired = group_metrics(frame, by="source", reals="paired")["groups"]
    assert paired["gan"]["ap"] is None and paired["vae"]["n_real"] == 2
    everyone = group_metrics(frame, by="source", reals="all")["groups"]
    assert everyone["vae"]["n_real"] == 3
    none = group_metrics(frame, by="source", reals="none")["groups"]
    assert set(none) == {"real", "vae", "gan"} and none["real"]["real_acc"] == pytest.approx(2 / 3)


def test_mixed_groups_are_kept_as_they_are() -> None:
    rows = [("g1", 0, 0.2, "a"), ("g1", 1, 0.8, "a"), ("g2", 0, 0.7, "b"), ("g2", 1, 0.6, "b")]
    groups, notes, pairing = assemble_groups(_frame(rows), by="source")
    assert {k: v.tolist() for k, v in groups.items()} == {"g1": [0, 1], "g2": [2, 3]}
    assert notes == {} and pairing["policy"] == "none"
    out = group_metrics(_frame(rows), by="source")
    assert out["groups"]["g2"]["auc"] == 0.0 and out["groups"]["g1"]["ap"] == 1.0


def test_calibrated_threshold_maximises_balanced_accuracy() -> None:
    # best cut: 0.35 (everything right); halfway to the next lower score 0.3 -> 0.325
    assert calibrate_threshold(np.array([0, 0, 1, 1]), np.array([0.1, 0.3, 0.35, 0.8])) == pytest.approx(0.325)
    # imbalanced: 1 real at 0.6, 3 fakes at 0.5, 0.7, 0.9; cutting at 0.7 gives balanced (1 + 2/3)/2, the best
    assert calibrate_threshold(np.array([0, 1, 1, 1]), np.array([0.6, 0.5, 0.7, 0.9])) == pytest.approx(0.65)
    with pytest.raises(ValueError, match="both classes"):
        calibrate_threshold(np.array([1, 1]), np.array([0.2, 0.4]))


def test_bootstrap_intervals_are_seeded_and_bracket_the_estimate() -> None:
    rng = np.random.default_rng(1)
    n = 200
    labels = np.repeat([0, 1], n)
    scores = np.clip(np.concatenate([rng.normal(0.35, 0.15, n), rng.normal(0.65, 0.15, n)]), 0, 1)
    frame = pd.DataFrame({"label": labels, "score": scores, "source": "g"})
    a = group_metrics(frame, by="source", bootstrap=200, seed=3)
    b = group_metrics(frame, by="source", bootstrap=200, seed=3)
    assert a["groups"]["g"]["ci"] == b["groups"]["g"]["ci"]
    for key in ("acc", "real_acc", "fake_acc", "ap", "auc"):
        lo, hi = a["groups"]["g"]["ci"][key]
        assert lo < a["groups"]["g"][key] < hi and hi - lo < 0.15
    # perfectly separated: every resample is perfect
    perfect = group_metrics(
        pd.DataFrame({"label": [0, 0, 1, 1], "score": [0.1, 0.2, 0.8, 0.9], "source": "p"}), bootstrap=20
    )
    assert perfect["mean"]["ci"]["acc"] == [1.0, 1.0]


def test_bootstrap_replicates_equal_sklearn_on_the_resampled_rows() -> None:
    # scores rounded to 0.1 so that many ties cross the classes; each replicate = rows repeated by their counts
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    scores = np.round(np.clip(rng.normal(0.4 + 0.2 * labels, 0.2), 0, 1), 1)
    weights = resample_weights(labels, 25, rng)
    assert (weights[:, labels == 0].sum(1) == (labels == 0).sum()).all()  # class counts kept
    fast = weighted_metrics(labels, scores, weights, threshold=0.5)
    for b in range(25):
        rows = np.repeat(np.arange(60), weights[b].astype(int))
        slow = binary_metrics(labels[rows], scores[rows], threshold=0.5)
        for key in ("acc", "real_acc", "fake_acc", "ap", "auc"):
            assert fast[key][b] == pytest.approx(slow[key], abs=1e-12), key


def test_report_files(tmp_path) -> None:
    rows = [("A", int(y), float(s), "") for y, s in zip(LABELS, SCORES, strict=False)] + [
        ("B", 1, 0.8, ""),
        ("B", 1, 0.3, ""),
    ]
    frame = _frame(rows).assign(image_id=[f"i{k}" for k in range(8)], view="orig")
    metrics = group_metrics(frame, by="source", reals="none")
    files = write_report(tmp_path, metrics=metrics, scores=frame, title="tiny")
    assert {
        "report.md",
        "metrics.csv",
        "metrics.json",
        "scores.parquet",
        "roc.png",
        "acc_by_group.png",
        "score_hist.png",
    } <= set(files)
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert set(data) >= {"groups", "mean", "threshold"}
    assert set(data["groups"]["A"]) >= {"n", "acc", "real_acc", "fake_acc", "ap", "auc"}
    assert data["groups"]["B"]["ap"] is None and data["groups"]["A"]["ap"] == pytest.approx(34 / 45)
    table = pd.read_csv(tmp_path / "metrics.csv")
    assert table["group"].tolist() == ["A", "B", "mean", "pooled"]  # mean over groups; pooled: every row once
    assert table.loc[0, "acc"] == pytest.approx(4 / 6) and np.isnan(table.loc[1, "auc"])
    text = (tmp_path / "report.md").read_text()
    assert "| A | 6 | 66.67 | 66.67 | 66.67 | 75.56 | 66.67 |" in text
    assert "| B | 2 | 50.00 | – | 50.00 | – | – |" in text
    assert "**58.33**" in text  # mean ACC (4/6 + 1/2) / 2
    assert pd.read_parquet(tmp_path / "scores.parquet")["score"].tolist() == frame["score"].tolist()
    for png in ("roc.png", "acc_by_group.png", "score_hist.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
