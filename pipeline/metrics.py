"""Every metric of the project: ACC, real/fake ACC, AP, AUC per group, the mean row, bootstrap intervals, thresholds.

AP and AUC come from `common.metrics.ranking_metrics`, the one implementation (also used for early stopping by
`heads.fit`); this module adds the thresholded accuracies, the grouping of rows (with the --reals pairing policy),
the mean row and the bootstrap. `METRICS` is the metric-name list eval, ablate and the reports share.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from common.metrics import average_precision, ranking_metrics, roc_auc

METRICS = ("acc", "real_acc", "fake_acc", "ap", "auc")
METRIC_LABELS = {"acc": "ACC", "real_acc": "Real ACC", "fake_acc": "Fake ACC", "ap": "AP", "auc": "AUC"}  # tables
REAL_POLICIES = ("auto", "paired", "all", "none")
BOOTSTRAP_CELLS = 4_000_000  # replicates x rows held at once by the bootstrap

__all__ = [
    "METRICS", "METRIC_LABELS", "REAL_POLICIES", "average_precision", "roc_auc", "ranking_metrics", "binary_metrics",
    "calibrate_threshold", "assemble_groups", "mean_row", "group_metrics", "resample_weights", "weighted_metrics",
    "parse_threshold",
]  # fmt: skip


def _fraction(num: int, den: int) -> float | None:
    return None if den == 0 else num / den


def binary_metrics(labels: np.ndarray, scores: np.ndarray, *, threshold: float) -> dict[str, Any]:
    """ACC at `threshold` (score >= threshold => fake), real ACC, fake ACC, AP and AUC of one group.

    Args:
        labels: 0 (real) / 1 (fake) per row.
        scores: P(fake) per row.
        threshold: decision threshold; ties go to fake.

    Returns:
        {"n", "n_real", "n_fake", "acc", "real_acc", "fake_acc", "ap", "auc"} as fractions; a metric that is
        undefined (no reals, no fakes, one class for AP/AUC) is None.
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
        ap, auc = ranking_metrics(labels, scores)
        out["ap"], out["auc"] = float(ap[0]), float(auc[0])
    return out


def calibrate_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The threshold maximising balanced accuracy on (labels, scores), e.g. the validation rows.

    Candidates are the scores themselves (rule: score >= t => fake). Among equally good cuts the highest is
    taken, then moved halfway down to the next lower score so it is not sitting on a validation point.
    """
    from sklearn.metrics import roc_curve

    labels = np.asarray(labels).astype(np.int64)
    if np.unique(labels).size < 2:
        raise ValueError("--threshold val needs validation rows of both classes (real and fake)")
    scores = np.asarray(scores, dtype=np.float64)
    fpr, tpr, thr = roc_curve(labels, scores, drop_intermediate=False)
    balanced = (tpr + 1.0 - fpr) / 2.0
    best = int(np.argmax(balanced[1:])) + 1  # thr[0] is +inf (nothing called fake)
    cut = float(thr[best])
    lower = scores[scores < cut]
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
        hit = pool[np.isin(pool_pairs, list(wanted))]
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


def mean_row(groups: Mapping[str, Mapping[str, Any]], *, n_rows: int) -> dict[str, Any]:
    """Average each metric over the groups where it is defined; `n` is the number of distinct rows scored."""
    row: dict[str, Any] = {"n": int(n_rows)}
    partial = []
    for key in METRICS:
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
) -> dict[str, Any]:
    """Metrics of `frame` (columns `label`, `score`, `by`, optionally `pair_id`) in metrics.json's schema.

    Returns:
        {"groups": {name: {"n", "acc", "real_acc", "fake_acc", "ap", "auc", ...}}, "mean": {...},
        "threshold": T, "by": by, "reals": pairing summary}; with `bootstrap` > 0 each row gains "ci".
    """
    if len(frame) == 0:
        raise ValueError("no rows to evaluate")
    index, notes, pairing = assemble_groups(frame, by=by, reals=reals)
    labels = frame["label"].to_numpy().astype(np.int64)
    scores = frame["score"].to_numpy().astype(np.float64)
    if not np.isfinite(scores).all():
        raise ValueError(f"{int((~np.isfinite(scores)).sum())} scores are NaN/inf: check the features and the head")
    groups = {g: binary_metrics(labels[idx], scores[idx], threshold=threshold) for g, idx in index.items()}
    for g, text in notes.items():
        groups[g]["note"] = text
    used = np.unique(np.concatenate(list(index.values())))
    result = {"groups": groups, "mean": mean_row(groups, n_rows=used.size), "threshold": float(threshold)}
    result.update(by=by, reals=pairing, rule="score >= threshold => fake")
    if bootstrap > 0:
        _add_intervals(result, labels, scores, index, threshold=threshold, n=bootstrap, seed=seed)
    return result


def _add_intervals(
    result: dict[str, Any],
    labels: np.ndarray,
    scores: np.ndarray,
    index: Mapping[str, np.ndarray],
    *,
    threshold: float,
    n: int,
    seed: int,
) -> None:
    """Add "ci": {metric: [lo, hi]} (95% percentile bootstrap, resampling within group and class) to every row."""
    rng = np.random.default_rng(seed)
    draws = {}
    for g, idx in index.items():
        step = max(1, BOOTSTRAP_CELLS // max(idx.size, 1))  # replicates per chunk, bounding memory
        parts = [
            weighted_metrics(labels[idx], scores[idx], resample_weights(labels[idx], min(step, n - i), rng),
                             threshold=threshold)
            for i in range(0, n, step)
        ]  # fmt: skip
        draws[g] = {k: np.concatenate([p[k] for p in parts]) for k in METRICS}
    with np.errstate(all="ignore"):
        draws["mean"] = {k: np.nanmean(np.stack([d[k] for d in draws.values()]), axis=0) for k in METRICS}
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
    labels: np.ndarray, scores: np.ndarray, weights: np.ndarray, *, threshold: float
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
    if not (y.any() and (~y).any()):
        return {**out, "ap": np.full(len(w), np.nan), "auc": np.full(len(w), np.nan)}
    out["ap"], out["auc"] = ranking_metrics(y, scores, w)
    return out


def parse_threshold(text: str | float) -> float | str:
    """`0.5` -> 0.5, `val` -> "val"; anything else is an error."""
    if isinstance(text, str) and text.strip().lower() == "val":
        return "val"
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"--threshold must be a number in [0, 1] or 'val', got {text!r}") from None
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise ValueError(f"--threshold must be in [0, 1] (scores are P(fake)), got {value}")
    return value
