"""The one implementation of average precision (and ROC AUC) over tied-score blocks, for one or many weightings.

numpy only, so the heads' early stopping (`heads.train`) and the evaluation metrics (`pipeline.metrics`) share it.
The points are those of sklearn's precision-recall and ROC curves: scores sorted once, cumulative true/false
positives read at the end of each block of tied scores; AP = sum of recall steps x precision, AUC = trapezoids.
"""

from __future__ import annotations

import numpy as np


def ranking_metrics(
    labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """AP and ROC AUC of (labels, scores) under each row-weighting (e.g. bootstrap counts).

    Args:
        labels: 0 (real) / 1 (fake) per row, [N].
        scores: P(fake) or any score where higher means fake, [N].
        weights: [R, N] non-negative row weights (a count c is the row repeated c times); None = one weighting of
            ones.

    Returns:
        (ap [R], auc [R]); NaN where a weighting has rows of one class only.
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    w = np.ones((1, labels.size)) if weights is None else np.asarray(weights, dtype=np.float64)
    order = np.argsort(-scores, kind="mergesort")
    s, y, w = scores[order], labels[order], w[:, order]
    n_fake, n_real = w[:, y].sum(1), w[:, ~y].sum(1)
    ends = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1] if s.size else np.zeros(0, dtype=np.int64)
    tps, fps = np.cumsum(w * y, axis=1)[:, ends], np.cumsum(w * ~y, axis=1)[:, ends]
    zero = np.zeros((len(w), 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        recall, fpr = np.hstack([zero, tps / n_fake[:, None]]), np.hstack([zero, fps / n_real[:, None]])
    called = tps + fps
    precision = np.divide(tps, called, out=np.zeros_like(tps), where=called > 0)
    ap = (np.diff(recall, axis=1) * precision).sum(1)
    auc = (np.diff(fpr, axis=1) * (recall[:, 1:] + recall[:, :-1]) / 2).sum(1)
    undefined = (n_fake <= 0) | (n_real <= 0)
    return np.where(undefined, np.nan, ap), np.where(undefined, np.nan, auc)


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """AP of fakes (label 1) ranked by score: sum over score thresholds of recall step x precision; NaN for one class.

    Equals `sklearn.metrics.average_precision_score(labels, scores)` (ties counted as one threshold).
    """
    return float(ranking_metrics(labels, scores)[0][0])


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of fakes (label 1) ranked by score; NaN for one class. Equals `sklearn.metrics.roc_auc_score`."""
    return float(ranking_metrics(labels, scores)[1][0])
