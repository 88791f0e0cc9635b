"""Low-FPR, oracle-threshold and calibration metrics (TPR at a target FPR, oracle ACC, ECE, Brier), plain and weighted.

Definitions (scores are P(fake); the rule is score >= t => fake; label 1 is fake):
- TPR at FPR a: the largest TPR among the ROC points (one per distinct score, as sklearn's `roc_curve`, plus the
  point "nothing called fake") whose FPR <= a. Tied scores form one point: a tie is never split.
- Oracle ACC: the largest plain accuracy over the same points (the threshold picked on the rows themselves; an
  upper bound, not a deployable number).
- ECE: 15 equal-width bins of P(fake) on [0, 1] (bin i holds i/15 <= p < (i+1)/15, the last one also p = 1);
  sum over bins of (rows in bin / rows) * |mean P(fake) - fraction of fakes|.
- Brier: mean of (P(fake) - label)^2.
"""

from __future__ import annotations

import numpy as np

ECE_BINS = 15
FPR_TARGETS = {"tpr_at_1pct_fpr": 0.01, "tpr_at_0.1pct_fpr": 0.001}
EXTRA_METRICS = (*FPR_TARGETS, "oracle_acc", "ece", "brier")


def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) with the "nothing called fake" point first (threshold +inf), one point per score."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(np.asarray(labels).astype(np.int64), np.asarray(scores, dtype=np.float64),
                              drop_intermediate=False)  # fmt: skip
    return fpr, tpr, thr


def tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, target: float) -> tuple[float, float]:
    """(TPR, threshold) of the ROC point with the largest TPR whose FPR <= target (see the module doc)."""
    fpr, tpr, thr = roc_points(labels, scores)
    ok = np.flatnonzero(fpr <= target + 1e-12)
    best = ok[np.argmax(tpr[ok])]  # first among equal TPRs: the highest threshold
    return float(tpr[best]), float(thr[best])


def oracle_acc(labels: np.ndarray, scores: np.ndarray) -> float:
    """The best plain accuracy over every threshold."""
    labels = np.asarray(labels).astype(np.int64)
    n_fake = int(labels.sum())
    fpr, tpr, _ = roc_points(labels, scores)
    return float(np.max(tpr * n_fake + (1.0 - fpr) * (labels.size - n_fake)) / labels.size)


def ece_bins(probs: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """The ECE bin of every probability (0 .. bins-1)."""
    return np.minimum((np.asarray(probs, dtype=np.float64) * bins).astype(np.int64), bins - 1)


def ece(labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error of P(fake) with `bins` equal-width bins."""
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    b = ece_bins(p, bins)
    gap = np.bincount(b, weights=p - y, minlength=bins)
    return float(np.abs(gap).sum() / p.size)


def brier(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean squared difference between P(fake) and the label."""
    return float(np.mean((np.asarray(probs, dtype=np.float64) - np.asarray(labels, dtype=np.float64)) ** 2))


def extra_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float | None]:
    """Every metric of EXTRA_METRICS for one group; the ranking ones are None when a class is missing."""
    labels = np.asarray(labels).astype(np.int64)
    out: dict[str, float | None] = {k: None for k in EXTRA_METRICS}
    if labels.size == 0:
        return out
    out["ece"], out["brier"] = ece(labels, scores), brier(labels, scores)
    if 0 < labels.sum() < labels.size:
        for key, target in FPR_TARGETS.items():
            out[key] = tpr_at_fpr(labels, scores, target)[0]
        out["oracle_acc"] = oracle_acc(labels, scores)
    return out


def weighted_extra(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """EXTRA_METRICS for many row weightings (bootstrap counts) at once: [replicates] each, NaN where undefined.

    A weighting by counts equals the resample with each row repeated that many times; the ROC points are read at
    the ends of tied-score blocks, as `roc_curve` makes them.
    """
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    s, y, w = np.asarray(scores, dtype=np.float64)[order], np.asarray(labels)[order].astype(bool), weights[:, order]
    total, n_fake, n_real = w.sum(1), w[:, y].sum(1), w[:, ~y].sum(1)
    err = s - y
    onehot = np.zeros((s.size, ECE_BINS))
    onehot[np.arange(s.size), ece_bins(s)] = 1.0
    out = {"ece": np.abs((w * err) @ onehot).sum(1) / total, "brier": (w * err**2).sum(1) / total}
    if y.all() or not y.any():
        return {**out, **{k: np.full(len(w), np.nan) for k in (*FPR_TARGETS, "oracle_acc")}}
    ends = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    zero = np.zeros((len(w), 1))
    tps = np.hstack([zero, np.cumsum(w * y, axis=1)[:, ends]])
    fps = np.hstack([zero, np.cumsum(w * ~y, axis=1)[:, ends]])
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr, fpr = tps / n_fake[:, None], fps / n_real[:, None]
        for key, target in FPR_TARGETS.items():
            out[key] = np.where(fpr <= target + 1e-12, tpr, 0.0).max(1)
        out["oracle_acc"] = (tps + n_real[:, None] - fps).max(1) / total
    bad = (n_fake == 0) | (n_real == 0)
    for key in (*FPR_TARGETS, "oracle_acc"):
        out[key][bad] = np.nan
    return out
