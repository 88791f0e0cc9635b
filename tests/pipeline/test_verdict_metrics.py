"""TPR at a target FPR, oracle ACC, ECE and Brier against values worked out by hand, and their bootstrap form."""

from __future__ import annotations

import numpy as np
import pytest

from aigi.pipeline.metrics import EXTRA_METRICS, brier, ece, extra_metrics, oracle_acc, tpr_at_fpr, weighted_extra

# Reals 0.8, 0.6, 0.4, 0.2; fakes 0.9, 0.8 (tied with a real), 0.7, 0.5. ROC points (threshold: TPR, FPR):
# 0.9: 1/4, 0 | 0.8: 2/4, 1/4 (the tie moves both at once) | 0.7: 3/4, 1/4 | 0.6: 3/4, 2/4 | 0.5: 1, 2/4 | ...
# TPR at FPR <= 1/4 is 3/4 (threshold 0.7); at FPR <= 0.2 only 1/4 (the tie cannot be split; threshold 0.9).
# Correct calls: 0.9: 1+4 | 0.8: 2+3 | 0.7: 3+3 | 0.6: 3+2 | 0.5: 4+2 | 0.4: 4+1 | 0.2: 4+0 | none: 0+4 -> 6/8.
TIE_LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1])
TIE_SCORES = np.array([0.8, 0.6, 0.4, 0.2, 0.9, 0.8, 0.7, 0.5])

# ECE, 15 bins: p = 0.05, 0.05 in bin 0 (fakes 1/2: gap 0.45, weight 2/5); 0.95, 0.95 in bin 14 (fakes 2/2: gap
# 0.05, weight 2/5); 0.5 in bin 7 (real: gap 0.5, weight 1/5) -> 0.18 + 0.02 + 0.10 = 0.30.
# Brier: (0.05^2 + 0.95^2 + 0.05^2 + 0.05^2 + 0.5^2) / 5 = 1.16 / 5.
ECE_LABELS = np.array([0, 1, 1, 1, 0])
ECE_PROBS = np.array([0.05, 0.05, 0.95, 0.95, 0.5])


def test_tpr_at_fpr_with_ties_by_hand() -> None:
    assert tpr_at_fpr(TIE_LABELS, TIE_SCORES, 0.25) == pytest.approx((0.75, 0.7))
    assert tpr_at_fpr(TIE_LABELS, TIE_SCORES, 0.2) == pytest.approx((0.25, 0.9))
    assert tpr_at_fpr(TIE_LABELS, TIE_SCORES, 0.0)[0] == pytest.approx(0.25)
    assert tpr_at_fpr(TIE_LABELS, TIE_SCORES, 1.0)[0] == 1.0
    tpr, thr = tpr_at_fpr(np.array([0, 1]), np.array([0.9, 0.1]), 0.01)  # nothing called fake
    assert (tpr, thr) == (0.0, np.inf)


def test_oracle_acc_by_hand() -> None:
    assert oracle_acc(TIE_LABELS, TIE_SCORES) == pytest.approx(6 / 8)
    assert oracle_acc(np.array([1, 1, 0]), np.array([0.1, 0.2, 0.3])) == pytest.approx(2 / 3)  # all called fake


def test_ece_and_brier_by_hand() -> None:
    assert ece(ECE_LABELS, ECE_PROBS) == pytest.approx(0.30)
    assert brier(ECE_LABELS, ECE_PROBS) == pytest.approx(1.16 / 5)
    assert ece(np.array([1]), np.array([1.0])) == 0.0  # p = 1 falls in the last bin
    assert ece(np.array([0, 1]), np.array([0.5, 0.5]), bins=1) == 0.0


def test_extra_metrics_one_class_group() -> None:
    m = extra_metrics(np.array([0, 0]), np.array([0.2, 0.4]))
    assert m["tpr_at_1pct_fpr"] is None and m["oracle_acc"] is None
    assert m["ece"] == pytest.approx(0.3) and m["brier"] == pytest.approx(0.1)


def test_weighted_form_equals_the_plain_metrics_on_resamples() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = np.round(np.clip(0.5 * labels + 0.35 * rng.standard_normal(300) + 0.25, 0, 1), 2)  # many ties
    counts = rng.multinomial(300, np.full(300, 1 / 300), size=5).astype(float)
    counts = np.vstack([np.ones(300), counts])
    got = weighted_extra(labels, scores, counts)
    for r, c in enumerate(counts.astype(int)):
        idx = np.repeat(np.arange(300), c)
        want = extra_metrics(labels[idx], scores[idx])
        for key in EXTRA_METRICS:
            if want[key] is None:  # undefined: None in the plain form, NaN in the weighted one
                assert np.isnan(got[key][r]), key
                continue
            assert got[key][r] == pytest.approx(want[key], abs=1e-12), key
    one = weighted_extra(np.zeros(4, dtype=int), np.array([0.1, 0.2, 0.3, 0.4]), np.ones((2, 4)))
    assert np.isnan(one["tpr_at_1pct_fpr"]).all() and np.isfinite(one["ece"]).all()
