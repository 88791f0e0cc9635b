"""The one AP / AUC implementation against sklearn, on random data with many tied scores and under weightings."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from aigi.common.metrics import average_precision, ranking_metrics, roc_auc


@pytest.mark.parametrize("seed", range(5))
def test_ap_and_auc_equal_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 400))
    labels = rng.integers(0, 2, n)
    scores = rng.integers(0, 7, n) / 6.0  # 7 distinct values: most scores are tied
    assert average_precision(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_weightings_equal_sklearn_on_repeated_rows() -> None:
    rng = np.random.default_rng(7)
    labels, scores = rng.integers(0, 2, 60), rng.integers(0, 5, 60) / 4.0
    counts = rng.integers(0, 4, (6, 60))
    ap, auc = ranking_metrics(labels, scores, counts)
    for r in range(6):
        rows = np.repeat(np.arange(60), counts[r])
        assert ap[r] == pytest.approx(average_precision_score(labels[rows], scores[rows]), abs=1e-12)
        assert auc[r] == pytest.approx(roc_auc_score(labels[rows], scores[rows]), abs=1e-12)


def test_one_class_is_undefined() -> None:
    assert np.isnan(average_precision(np.ones(5), np.linspace(0, 1, 5)))
    assert np.isnan(roc_auc(np.zeros(5), np.linspace(0, 1, 5)))
