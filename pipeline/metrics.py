"""Every metric of the project: ACC, real/fake ACC, AP, AUC, TPR at 1% / 0.1% FPR, EER, oracle ACC, ECE, Brier (and
coverage under an abstain band) per group, the mean row over groups, the pooled row, bootstrap intervals, thresholds.

AP and AUC come from `common.metrics.ranking_metrics`, the one implementation (also used for early stopping by
`heads.fit`); this module adds the thresholded accuracies, the grouping of rows (with the --reals pairing policy),
the mean row and the bootstrap. `METRICS` is the metric-name list eval, ablate and the reports share.

Definitions (label 1 is fake; the rule is P(fake) >= t => fake). One definition per name, one unit per metric: the
files (metrics.json / .csv, robustness.json / .csv) hold fractions in [0, 1]; every table a person reads (report.md,
report.html, robustness.md, the command line) shows percent, ECE, Brier and mean |dP| included.
- Ranking metrics (AP, AUC, TPR at FPR, EER, oracle ACC, thresholds picked on rows) rank rows by their logit in
  float64, never by P(fake): a confident head's probabilities saturate to exactly 1.0 and tie where its logits do not.
  ECE and Brier read the calibrated P(fake); ACC, real ACC and fake ACC the verdict at the threshold.
- TPR at FPR a: the largest TPR among the ROC points (one per distinct logit, as sklearn's `roc_curve`, plus the
  point "nothing called fake") whose FPR <= a. Tied scores form one point: a tie is never split. Undefined (None,
  with a note) when the group has fewer than 1/a reals: its FPR moves in steps of 1/n_real > a, so the number would
  be the TPR at FPR 0 under another name.
- EER: the equal error rate, where the FPR equals the FNR (1 - TPR) on the ROC curve, linearly interpolated between
  the two ROC points around the crossing (as the deepfake literature computes it).
- Mean (`mean`) is the average of each metric over the groups where it is defined (the papers' tables); pooled
  (`pooled`) is the metric of all the distinct rows scored, together. `aigi eval --views` measures each view pooled.
- Oracle ACC: the largest plain accuracy over the same points (the threshold picked on the rows themselves; an
  upper bound, not a deployable number).
- ECE: 15 equal-width bins of P(fake) on [0, 1] (bin i holds i/15 <= p < (i+1)/15, the last one also p = 1);
  sum over bins of (rows in bin / rows) * |mean P(fake) - fraction of fakes|.
- Brier: mean of (P(fake) - label)^2.
- Coverage (heads with an abstain band): the share of rows answered real or fake; ACC covered: ACC among them.
- Per view (the same images under cached perturbations, `view_table`): the metrics of each view's rows, and against
  `orig` the share of images whose verdict flips, of correctly-called reals that become fake, and the mean |change|
  of P(fake).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from aigi.common.metrics import average_precision, ranking_metrics, roc_auc

ECE_BINS = 15
FPR_TARGETS = {"tpr_at_1pct_fpr": 0.01, "tpr_at_0.1pct_fpr": 0.001}
EXTRA_METRICS = (*FPR_TARGETS, "eer", "oracle_acc", "ece", "brier")
METRICS = ("acc", "real_acc", "fake_acc", "ap", "auc", *EXTRA_METRICS)
COVERAGE_METRICS = ("coverage", "acc_covered")
METRIC_LABELS = {  # the tables' column names of METRICS and COVERAGE_METRICS
    "acc": "ACC", "real_acc": "Real ACC", "fake_acc": "Fake ACC", "ap": "AP", "auc": "AUC",
    "tpr_at_1pct_fpr": "TPR@1%FPR", "tpr_at_0.1pct_fpr": "TPR@0.1%FPR", "eer": "EER", "oracle_acc": "Oracle ACC",
    "ece": "ECE",
    "brier": "Brier", "coverage": "Coverage", "acc_covered": "ACC covered",
}  # fmt: skip
REAL_POLICIES = ("auto", "paired", "all", "none")
BOOTSTRAP_CELLS = 4_000_000  # replicates x rows held at once by the bootstrap

__all__ = [
    "METRICS", "METRIC_LABELS", "EXTRA_METRICS", "COVERAGE_METRICS", "REAL_POLICIES", "tpr_at_fpr", "oracle_acc",
    "ece", "brier", "eer", "ranking_scores", "few_reals_note",
    "average_precision", "roc_auc", "ranking_metrics", "binary_metrics", "coverage_metrics", "calibrate_threshold",
    "assemble_groups", "mean_row", "group_metrics", "resample_weights", "weighted_metrics", "weighted_extra",
    "weighted_coverage",
]  # fmt: skip


def _fraction(num: int, den: int) -> float | None:
    return None if den == 0 else num / den


def ranking_scores(probs: np.ndarray, logits: np.ndarray | None) -> np.ndarray:
    """What ranking metrics read: the logits (float64) when given, else the probabilities (the same order and ties
    as their log-odds)."""
    return np.asarray(probs if logits is None else logits, dtype=np.float64)


def min_reals(target: float) -> int:
    """The fewest reals whose FPR can step as finely as `target` (1 / target, rounded)."""
    return int(round(1.0 / target))


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


def eer(labels: np.ndarray, scores: np.ndarray) -> float:
    """The equal error rate: FPR = FNR on the ROC curve, interpolated between the two points around the crossing."""
    fpr, tpr, _ = roc_points(labels, scores)
    return float(_eer(fpr[None, :], tpr[None, :])[0])


def _eer(fpr: np.ndarray, tpr: np.ndarray) -> np.ndarray:
    """EER of each row of ROC points [R, P] (FPR rising, TPR rising; the first point is (0, 0))."""
    gap = (1.0 - tpr) - fpr  # FNR - FPR: 1 at the first point, falling to -1 at the last
    i = np.argmax(gap <= 0, axis=1)
    rows = np.arange(len(fpr))
    prev = np.maximum(i - 1, 0)
    g0, g1 = gap[rows, prev], gap[rows, i]
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(g0 - g1 > 0, g0 / (g0 - g1), 1.0)
    return fpr[rows, prev] + t * (fpr[rows, i] - fpr[rows, prev])


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


def extra_metrics(labels: np.ndarray, scores: np.ndarray, logits: np.ndarray | None = None) -> dict[str, float | None]:
    """Every metric of EXTRA_METRICS for one group: ECE and Brier of the probabilities `scores`, the ranking ones of
    `logits` (default: `scores`); those are None when a class is missing, TPR at FPR a also when the
    group has fewer than 1/a reals."""
    labels = np.asarray(labels).astype(np.int64)
    out: dict[str, float | None] = {k: None for k in EXTRA_METRICS}
    if labels.size == 0:
        return out
    out["ece"], out["brier"] = ece(labels, scores), brier(labels, scores)
    n_real = int((labels == 0).sum())
    if 0 < labels.sum() < labels.size:
        z = ranking_scores(scores, logits)
        for key, target in FPR_TARGETS.items():
            out[key] = tpr_at_fpr(labels, z, target)[0] if n_real >= min_reals(target) else None
        out["eer"] = eer(labels, z)
        out["oracle_acc"] = oracle_acc(labels, z)
    return out


def few_reals_note(n_real: int) -> str:
    """The note of a group whose reals are too few for some TPR at FPR ("" when there are enough)."""
    short = [f"{METRIC_LABELS[k]} needs >= {min_reals(t):,} reals" for k, t in FPR_TARGETS.items()
             if 0 < n_real < min_reals(t)]  # fmt: skip
    return f"{'; '.join(short)} ({n_real} here): undefined" if short else ""


def binary_metrics(
    labels: np.ndarray, scores: np.ndarray, *, threshold: float, logits: np.ndarray | None = None
) -> dict[str, Any]:
    """ACC at `threshold` (score >= threshold => fake), real ACC, fake ACC, AP, AUC and EXTRA_METRICS of one group.

    Args:
        labels: 0 (real) / 1 (fake) per row.
        scores: P(fake) per row.
        threshold: decision threshold; ties go to fake.
        logits: the rows' logits, which every ranking metric reads (default: `scores`).

    Returns:
        {"n", "n_real", "n_fake", *METRICS} as fractions; a metric that is undefined (no reals, no fakes, one class
        for the ranking metrics) is None.
    """
    labels = np.asarray(labels).astype(np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    pred = scores >= threshold
    real, fake = labels == 0, labels == 1
    out: dict[str, Any] = {
        "n": int(labels.size),
        "n_real": int(real.sum()),
        "n_fake": int(fake.sum()),
        "acc": _fraction(int((pred == fake).sum()), labels.size),
        "real_acc": _fraction(int((~pred[real]).sum()), int(real.sum())),
        "fake_acc": _fraction(int(pred[fake].sum()), int(fake.sum())),
        "ap": None,
        "auc": None,
    }
    if out["n_real"] and out["n_fake"]:
        ap, auc = ranking_metrics(labels, ranking_scores(scores, logits))
        out["ap"], out["auc"] = float(ap[0]), float(auc[0])
    out.update(extra_metrics(labels, scores, logits))
    return out


def coverage_metrics(labels: np.ndarray, verdicts: np.ndarray) -> dict[str, float | None]:
    """Share of rows answered (verdict 0 or 1, not -1 = unsure) and the accuracy of those answers."""
    labels, verdicts = np.asarray(labels).astype(np.int64), np.asarray(verdicts).astype(np.int64)
    covered = verdicts != -1
    return {
        "coverage": _fraction(int(covered.sum()), labels.size),
        "acc_covered": _fraction(int((verdicts[covered] == labels[covered]).sum()), int(covered.sum())),
    }


def calibrate_threshold(labels: np.ndarray, scores: np.ndarray, *, logits: np.ndarray | None = None) -> float:
    """The threshold on P(fake) maximising balanced accuracy on (labels, scores), e.g. the validation rows.

    Candidates are the rows themselves, ranked by `logits` (default: `scores`; rule: score >= t =>
    fake). Among equally good cuts the highest is taken, then moved halfway down to the next lower score so it is not
    sitting on a validation point.
    """
    from sklearn.metrics import roc_curve

    labels = np.asarray(labels).astype(np.int64)
    if np.unique(labels).size < 2:
        raise ValueError("--threshold val needs validation rows of both classes (real and fake)")
    scores = np.asarray(scores, dtype=np.float64)
    z = ranking_scores(scores, logits)
    fpr, tpr, thr = roc_curve(labels, z, drop_intermediate=False)
    balanced = (tpr + 1.0 - fpr) / 2.0
    best = int(np.argmax(balanced[1:])) + 1  # thr[0] is +inf (nothing called fake)
    at = z >= thr[best]
    cut = float(scores[at].min())
    lower = scores[~at]
    return cut if lower.size == 0 else (cut + float(lower.max())) / 2.0


def assemble_groups(
    frame: pd.DataFrame, *, by: str = "source", reals: str = "auto"
) -> tuple[dict[str, np.ndarray], dict[str, str], dict[str, Any]]:
    """Row indices of each evaluation group, following the --reals policy (see EVAL_HELP).

    Args:
        frame: one row per scored row, with `label`, the `by` column and (for pairing) `pair_id`.
        by: the grouping column.
        reals: "auto", "paired", "all" or "none".

    Returns:
        (groups name -> positional indices, notes name -> text, pairing summary for metrics.json).
    """
    if reals not in REAL_POLICIES:
        raise ValueError(f"--reals must be one of {REAL_POLICIES}, got {reals!r}")
    if by not in frame.columns:
        raise ValueError(f"cannot group by {by!r}: the rows have columns {sorted(frame.columns)}")
    labels = frame["label"].to_numpy().astype(np.int64)
    keys = frame[by].astype("string").fillna("").replace("", "(empty)").to_numpy(dtype=object).astype(str)
    per = {str(name): np.flatnonzero(keys == name) for name in sorted(set(keys))}
    real_only = [g for g, idx in per.items() if (labels[idx] == 0).all()]
    fake_only = [g for g, idx in per.items() if (labels[idx] == 1).all()]
    summary: dict[str, Any] = {"policy": "none", "real_groups": []}
    if reals == "none" or not real_only or not fake_only:
        return per, _one_class_notes(per, labels), summary
    pool = np.sort(np.concatenate([per[g] for g in real_only]))
    pool_pairs = frame["pair_id"].astype(str).to_numpy()[pool] if "pair_id" in frame.columns else None
    groups = {g: idx for g, idx in per.items() if g not in real_only}
    notes: dict[str, str] = {}
    policies = set()
    for g in fake_only:
        matched, how = _reals_for(frame, per[g], pool, pool_pairs, reals)
        policies.add(how)
        groups[g] = np.sort(np.concatenate([per[g], matched]))
        if how == "all" and reals == "auto":
            notes[g] = f"no real shares a pair_id with these fakes: evaluated against all {pool.size} reals"
    summary = {"policy": "/".join(sorted(policies)), "real_groups": real_only, "n_real_pool": int(pool.size)}
    for g, text in _one_class_notes(groups, labels).items():
        notes[g] = text
    return groups, notes, summary


def _reals_for(
    frame: pd.DataFrame, fake_idx: np.ndarray, pool: np.ndarray, pool_pairs: np.ndarray | None, reals: str
) -> tuple[np.ndarray, str]:
    """Indices of the reals a fake-only group is measured against, and which rule chose them."""
    if reals == "all":
        return pool, "all"
    if pool_pairs is not None:
        wanted = set(frame["pair_id"].astype(str).to_numpy()[fake_idx].tolist()) - {""}
        hit = pool[pd.Series(pool_pairs).isin(wanted).to_numpy()]  # hashed: np.isin sorts the strings (10x slower)
        if hit.size or reals == "paired":
            return hit, "paired"
    if reals == "paired":
        return pool[:0], "paired"
    return pool, "all"


def _one_class_notes(groups: Mapping[str, np.ndarray], labels: np.ndarray) -> dict[str, str]:
    notes = {}
    for g, idx in groups.items():
        n_fake = int(labels[idx].sum())
        n_real = idx.size - n_fake
        if n_real == 0 or n_fake == 0:
            notes[g] = f"one class only ({n_real} real, {n_fake} fake): ACC reported, AP/AUC undefined"
    return notes


def mean_row(
    groups: Mapping[str, Mapping[str, Any]], *, n_rows: int, keys: tuple[str, ...] = METRICS
) -> dict[str, Any]:
    """Average each metric over the groups where it is defined; `n` is the number of distinct rows scored."""
    row: dict[str, Any] = {"n": int(n_rows)}
    partial = []
    for key in keys:
        values = [g[key] for g in groups.values() if g.get(key) is not None]
        row[key] = float(np.mean(values)) if values else None
        if values and len(values) < len(groups):
            partial.append(f"{key} over {len(values)} of {len(groups)} groups")
    if partial:
        row["note"] = "averaged where defined: " + ", ".join(partial)
    return row


def group_metrics(
    frame: pd.DataFrame,
    *,
    by: str = "source",
    threshold: float = 0.5,
    reals: str = "auto",
    bootstrap: int = 0,
    seed: int = 0,
    verdicts: np.ndarray | None = None,
) -> dict[str, Any]:
    """Metrics of `frame` (columns `label`, `score`, `by`, optionally `logit` and `pair_id`) in metrics.json's schema.

    Ranking metrics read the `logit` column when there is one (else `score`); `verdicts` (0 real /
    1 fake / -1 unsure per row, from a head's abstain band) adds COVERAGE_METRICS.

    Returns:
        {"groups": {name: {"n", *METRICS, ...}}, "mean": the mean over groups, "pooled": every distinct row once,
        "threshold": T, "by": by, "reals": pairing summary}; with `bootstrap` > 0 each group and the mean gain "ci".
    """
    if len(frame) == 0:
        raise ValueError("no rows to evaluate")
    index, notes, pairing = assemble_groups(frame, by=by, reals=reals)
    labels = frame["label"].to_numpy().astype(np.int64)
    scores = frame["score"].to_numpy().astype(np.float64)
    logits = frame["logit"].to_numpy().astype(np.float64) if "logit" in frame.columns else scores
    if not (np.isfinite(scores).all() and np.isfinite(logits).all()):
        bad = int((~np.isfinite(scores) | ~np.isfinite(logits)).sum())
        raise ValueError(f"{bad} scores are NaN/inf (NaN/inf features): check the cache with `aigi cache verify`")

    def measure(idx: np.ndarray) -> dict[str, Any]:
        row = binary_metrics(labels[idx], scores[idx], threshold=threshold, logits=logits[idx])
        return row if verdicts is None else {**row, **coverage_metrics(labels[idx], verdicts[idx])}

    groups = {g: measure(idx) for g, idx in index.items()}
    keys = METRICS if verdicts is None else (*METRICS, *COVERAGE_METRICS)
    for g in index:
        text = "; ".join(t for t in (notes.get(g, ""), few_reals_note(groups[g]["n_real"])) if t)
        if text:
            groups[g]["note"] = text
    used = np.unique(np.concatenate(list(index.values())))
    pooled = measure(used)
    if few_reals_note(pooled["n_real"]):
        pooled["note"] = few_reals_note(pooled["n_real"])
    result = {"groups": groups, "mean": mean_row(groups, n_rows=used.size, keys=keys), "pooled": pooled}
    result.update(threshold=float(threshold), by=by, reals=pairing, rule="score >= threshold => fake")
    if bootstrap > 0:
        draw = _replicates(labels, scores, logits, verdicts, threshold=threshold)
        _add_intervals(result, labels, index, draw, keys=keys, n=bootstrap, seed=seed)
    return result


def _replicates(
    labels: np.ndarray, scores: np.ndarray, logits: np.ndarray, verdicts: np.ndarray | None, *, threshold: float
) -> Any:
    """A function (row indices, weights) -> {metric: [replicates]} for the bootstrap."""

    def draw(idx: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
        out = weighted_metrics(labels[idx], scores[idx], w, threshold=threshold, logits=logits[idx])
        if verdicts is not None:
            out.update(weighted_coverage(labels[idx], verdicts[idx], w))
        return out

    return draw


def _add_intervals(
    result: dict[str, Any],
    labels: np.ndarray,
    index: Mapping[str, np.ndarray],
    draw: Any,
    *,
    keys: tuple[str, ...],
    n: int,
    seed: int,
) -> None:
    """Add "ci": {metric: [lo, hi]} (95% percentile bootstrap, resampling within group and class) to every row."""
    rng = np.random.default_rng(seed)
    draws = {}
    for g, idx in index.items():
        step = max(1, BOOTSTRAP_CELLS // max(idx.size, 1))  # replicates per chunk, bounding memory
        parts = [draw(idx, resample_weights(labels[idx], min(step, n - i), rng)) for i in range(0, n, step)]
        draws[g] = {k: np.concatenate([p[k] for p in parts]) for k in keys}
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a metric undefined in every group: NaN, said as None
        draws["mean"] = {k: np.nanmean(np.stack([d[k] for d in draws.values()]), axis=0) for k in keys}
    for g, per in draws.items():
        target = result["mean"] if g == "mean" else result["groups"][g]
        target["ci"] = {
            k: (None if np.isnan(v).all() else np.percentile(v, [2.5, 97.5]).tolist()) for k, v in per.items()
        }
        target["ci"]["n_boot"] = int(n)


def resample_weights(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """[n, rows] bootstrap counts: each replicate draws as many reals (fakes) as there are, with replacement."""
    weights = np.zeros((n, labels.size))
    for c in (0, 1):
        pos = np.flatnonzero(labels == c)
        if pos.size:
            weights[:, pos] = rng.multinomial(pos.size, np.full(pos.size, 1.0 / pos.size), size=n)
    return weights


def weighted_metrics(
    labels: np.ndarray, scores: np.ndarray, weights: np.ndarray, *, threshold: float, logits: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """The metrics of `binary_metrics` for many row-weightings at once (bootstrap counts), [n] per metric.

    A weighting by counts is the same as the resample with each row repeated that many times; AP and AUC come from
    `ranking_metrics`, the accuracies from the weighted counts. NaN where a metric is undefined (one class).
    """
    y, w = labels.astype(bool), np.asarray(weights, dtype=np.float64)
    pred = scores >= threshold
    n_real, n_fake = w[:, ~y].sum(1), w[:, y].sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {
            "acc": (w * (pred == y)).sum(1) / w.sum(1),
            "real_acc": (w[:, ~y] * ~pred[~y]).sum(1) / n_real,
            "fake_acc": (w[:, y] * pred[y]).sum(1) / n_fake,
        }
    out.update(weighted_extra(labels, scores, w, logits=logits))
    if not (y.any() and (~y).any()):
        return {**out, "ap": np.full(len(w), np.nan), "auc": np.full(len(w), np.nan)}
    out["ap"], out["auc"] = ranking_metrics(y, ranking_scores(scores, logits), w)
    return out


def weighted_coverage(labels: np.ndarray, verdicts: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """`coverage_metrics` for many row-weightings at once, [n] per metric."""
    covered = np.asarray(verdicts) != -1
    right = covered & (np.asarray(verdicts) == np.asarray(labels))
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "coverage": (weights * covered).sum(1) / weights.sum(1),
            "acc_covered": (weights * right).sum(1) / (weights * covered).sum(1),
        }


def weighted_extra(
    labels: np.ndarray, scores: np.ndarray, weights: np.ndarray, *, logits: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """EXTRA_METRICS for many row weightings (bootstrap counts) at once: [replicates] each, NaN where undefined.

    A weighting by counts equals the resample with each row repeated that many times (as the bootstrap draws, the
    reals' count is the group's); the ROC points are read at the ends of tied-logit blocks, as `roc_curve` makes them.
    """
    order = np.argsort(-ranking_scores(scores, logits), kind="mergesort")
    p, y, w = np.asarray(scores, dtype=np.float64)[order], np.asarray(labels)[order].astype(bool), weights[:, order]
    s = ranking_scores(scores, logits)[order]
    total, n_fake, n_real = w.sum(1), w[:, y].sum(1), w[:, ~y].sum(1)
    err = p - y
    onehot = np.zeros((p.size, ECE_BINS))
    onehot[np.arange(p.size), ece_bins(p)] = 1.0
    out = {"ece": np.abs((w * err) @ onehot).sum(1) / total, "brier": (w * err**2).sum(1) / total}
    if y.all() or not y.any():
        return {**out, **{k: np.full(len(w), np.nan) for k in (*FPR_TARGETS, "eer", "oracle_acc")}}
    ends = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    zero = np.zeros((len(w), 1))
    tps = np.hstack([zero, np.cumsum(w * y, axis=1)[:, ends]])
    fps = np.hstack([zero, np.cumsum(w * ~y, axis=1)[:, ends]])
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr, fpr = tps / n_fake[:, None], fps / n_real[:, None]
        for key, target in FPR_TARGETS.items():
            few = int((~y).sum()) < min_reals(target)
            out[key] = np.full(len(w), np.nan) if few else np.where(fpr <= target + 1e-12, tpr, 0.0).max(1)
        out["eer"] = _eer(fpr, tpr)
        out["oracle_acc"] = (tps + n_real[:, None] - fps).max(1) / total
    bad = (n_fake == 0) | (n_real == 0)
    for key in (*FPR_TARGETS, "eer", "oracle_acc"):
        out[key][bad] = np.nan
    return out


# ----------------------------------------------------------------------------------------------------------------
# per view: the same images under cached perturbations


def view_strength(view: str) -> tuple[str, float | None]:
    """("jpeg", 75.0) for `jpeg:75`; ("orig", None) for `orig`."""
    kind, _, arg = view.partition(":")
    return kind, (float(arg) if arg else None)


def view_metrics(
    labels: np.ndarray, probs: np.ndarray, verdicts: np.ndarray, *, threshold: float, logits: np.ndarray | None = None
) -> dict[str, Any]:
    """Every metric of this module for one view's rows pooled, plus coverage and ACC on the covered rows."""
    return {**binary_metrics(labels, probs, threshold=threshold, logits=logits), **coverage_metrics(labels, verdicts)}


def flip_stats(flips: pd.DataFrame, probs: pd.DataFrame, view: str, *, reference: str = "orig") -> dict[str, Any]:
    """Verdict changes of `view` against `reference` over the images scored under both."""
    both = flips[[reference, view]].dropna().index
    if len(both) == 0:
        return {"paired": 0, "flip_rate": None, "real_to_fake": None, "mean_abs_dp": None}
    ref, new = flips.loc[both, reference], flips.loc[both, view]
    reals = flips.loc[both, "label"] == 0
    real_ok = reals & (ref == 0)
    return {
        "paired": int(len(both)),
        "flip_rate": float((ref != new).mean()),
        "real_to_fake": float((new[real_ok] == 1).mean()) if real_ok.any() else None,
        "mean_abs_dp": float((probs.loc[both, view] - probs.loc[both, reference]).abs().mean()),
    }


def view_table(frame: pd.DataFrame, *, views: Sequence[str], threshold: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row of metrics per view, one row of verdicts per image) of scored rows.

    Args:
        frame: one row per (image, view): image_id, view, label, prob (P(fake)), verdict (0 / 1, -1 unsure), and
            optionally logit (what the ranking metrics read).
        views: the views, in the table's order.
        threshold: the threshold the verdicts were made with.
    """
    flips = frame.pivot_table(index="image_id", columns="view", values="verdict", aggfunc="first")
    probs = frame.pivot_table(index="image_id", columns="view", values="prob", aggfunc="first")
    flips["label"] = frame.groupby("image_id")["label"].first()
    rows = []
    for view in views:
        part = frame[frame["view"] == view]
        m = view_metrics(part["label"].to_numpy().astype(np.int64), part["prob"].to_numpy(),
                         part["verdict"].to_numpy(), threshold=threshold,
                         logits=part["logit"].to_numpy() if "logit" in part.columns else None)  # fmt: skip
        kind, value = view_strength(view)
        row = {"view": view, "kind": kind, "strength": value, **m}
        if view != "orig" and "orig" in views:
            row.update(flip_stats(flips, probs, view))
        rows.append(row)
    return pd.DataFrame(rows), flips.reset_index()
