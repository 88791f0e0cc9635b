"""Detection metrics per group (ACC, real/fake ACC, AP, AUC, mean row, bootstrap CIs) and the `aigi eval` stage."""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

METRICS = ("acc", "real_acc", "fake_acc", "ap", "auc")
REAL_POLICIES = ("auto", "paired", "all", "none")
BOOTSTRAP_CELLS = 4_000_000  # replicates x rows held at once by the bootstrap

EVAL_HELP = """\
Scores the rows of one split with a trained head and writes report.md, metrics.csv, metrics.json,
scores.parquet and PNG plots (roc.png, acc_by_group.png, score_hist.png) to REPORT_DIR.

Decision rule: a row is called fake when its score (P(fake)) >= the threshold; ties count as fake.
--threshold val picks, on the validation rows, the threshold that maximises balanced accuracy
((real ACC + fake ACC) / 2), halfway between the best cut and the next lower validation score.

Groups (--by, default `source`): a group holding both reals and fakes (the <generator>/0_real +
<generator>/1_fake layout) is evaluated as it is. When reals have a group of their own (source `real`)
and fakes one per generator, --reals decides what each fake-only group is measured against:
  auto    the reals sharing its pair_id (its aligned reals); when none match, all reals (default)
  paired  only the reals sharing its pair_id
  all     all reals of the real-only groups
  none    no pairing: every group on its own
Real-only groups that serve as negatives are folded into the fake groups and not listed. A group that
still has one class gets its ACC and a note; AP and AUC are undefined there (null).
The mean row averages each metric over the groups where it is defined, as the papers' tables do;
its n is the number of distinct rows scored.
--bootstrap N adds 95% percentile intervals from N seeded resamplings, drawn within each group and
class (so each resample keeps the group's real/fake counts); the mean row's interval comes from the
same resamplings.
"""


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
    from sklearn.metrics import average_precision_score, roc_auc_score

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
        out["ap"] = float(average_precision_score(labels, scores))
        out["auc"] = float(roc_auc_score(labels, scores))
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


def summarize(
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

    A weighting by counts is the same as the resample with each row repeated that many times: the scores are
    sorted once and every replicate reads cumulative true/false positives at the ends of tied-score blocks, the
    points sklearn's precision-recall and ROC curves are made of (AP = sum of recall steps x precision; AUC =
    trapezoids). NaN where a metric is undefined (one class).
    """
    order = np.argsort(-scores, kind="mergesort")
    s, y, w = scores[order], labels[order].astype(bool), weights[:, order]
    pred = s >= threshold
    n_real, n_fake = w[:, ~y].sum(1), w[:, y].sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {
            "acc": (w * (pred == y)).sum(1) / w.sum(1),
            "real_acc": (w[:, ~y] * ~pred[~y]).sum(1) / n_real,
            "fake_acc": (w[:, y] * pred[y]).sum(1) / n_fake,
        }
    if not (y.any() and (~y).any()):
        return {**out, "ap": np.full(len(w), np.nan), "auc": np.full(len(w), np.nan)}
    ends = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tps, fps = np.cumsum(w * y, axis=1)[:, ends], np.cumsum(w * ~y, axis=1)[:, ends]
    zero = np.zeros((len(w), 1))
    recall, fpr = np.hstack([zero, tps / n_fake[:, None]]), np.hstack([zero, fps / n_real[:, None]])
    called = tps + fps
    precision = np.divide(tps, called, out=np.zeros_like(tps), where=called > 0)
    out["ap"] = (np.diff(recall, axis=1) * precision).sum(1)
    out["auc"] = (np.diff(fpr, axis=1) * (recall[:, 1:] + recall[:, :-1]) / 2).sum(1)
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


# ----------------------------------------------------------------------------------------------------------------
# the `aigi eval` stage

SCORE_COLUMNS = ("image_id", "view", "label", "source", "domain", "pair_id", "split", "path")


def check_fingerprints(info: Mapping[str, Any], caches: Mapping[str, Any], *, run_dir: Path) -> list[str]:
    """Refuse caches whose fingerprint differs from the one the head was trained on; return warnings.

    Raises:
        ValueError: naming both fingerprints, both paths and the differing extractor spec fields.
    """
    recorded = info.get("fingerprints") or {}
    if not recorded:
        return [f"{run_dir}/head.json records no cache fingerprint: the cache cannot be checked against the head"]
    warnings = []
    for alias, c in caches.items():
        want = recorded.get(alias)
        if want is None and len(recorded) == 1 and len(caches) == 1:
            alias_rec, want = next(iter(recorded.items()))
        else:
            alias_rec = alias
        if want is None:
            warnings.append(f"cache alias {alias!r} is not recorded in {run_dir}/head.json; not checked")
            continue
        if c.fingerprint != want:
            import cache

            spec = (info.get("extractor_spec") or {}).get(alias_rec)
            diff = "; ".join(cache.spec_diff(spec, c.spec)) if spec is not None else ""
            trained = ((info.get("caches") or {}).get(alias_rec) or {}).get("path", "?")
            raise ValueError(
                f"cache {c.path} has fingerprint {c.fingerprint[:16]}… but head {run_dir} was trained on {trained} "
                f"with fingerprint {want[:16]}…; differing spec fields (trained -> given): {diff or 'unknown'}. "
                "Extract the features with the head's extractor spec, or train a head on this cache"
            )
    return warnings


def _run_config(run_dir: Path, info: Mapping[str, Any]) -> Any:
    from pipeline.config import load_config, parse_config

    if info.get("run_config"):
        return parse_config(info["run_config"], source=f"{run_dir}/head.json")
    if (run_dir / "config.yaml").is_file():
        return load_config(run_dir / "config.yaml")
    return parse_config({"head": {"name": info["name"], "inputs": info["inputs"]}}, source=f"{run_dir}/head.json")


def _score(head: Any, fs: Any, *, by: str) -> pd.DataFrame:
    import heads

    cols = [c for c in dict.fromkeys([*SCORE_COLUMNS, by]) if c in fs.meta.columns]
    frame = fs.meta[cols].reset_index(drop=True).copy()
    frame["label"] = frame["label"].astype(np.int64)
    frame["score"] = heads.predict(head, fs.features)
    return frame


def evaluate_run(
    run_dir: str | Path,
    *,
    out_dir: str | Path,
    caches: Sequence[str] | None = None,
    split: str | None = None,
    by: str | None = None,
    threshold: str | float | None = None,
    reals: str | None = None,
    bootstrap: int | None = None,
    seed: int = 0,
    where: Sequence[str] = (),
    plots: bool = True,
) -> dict[str, Any]:
    """Score one split with a trained head and write the report (see EVAL_HELP); None means the run's default.

    Args:
        run_dir: a directory written by `aigi train` (or `aigi head import-*`).
        out_dir: the report directory.
        caches: `[ALIAS=]PATH` replacing the recorded caches (needed when the head records none).
        split: the split value to score, or "all" for every row (default: the config's test split).
        by: grouping column. threshold: a number or "val". reals: pairing policy. bootstrap: resamplings.
        seed: bootstrap seed.
        where: extra `COLUMN=VALUE` row filters replacing the config's (e.g. view=jpeg:75).
        plots: also draw the PNG plots (the ablation runner turns them off: they cost seconds per run).

    Returns:
        The metrics (metrics.json's content).
    """
    import heads
    from pipeline.config import apply_overrides, override_caches, parse_config, to_dict
    from pipeline.report import write_report
    from pipeline.train import load_rows, open_caches, train_val_rows

    run_dir = Path(run_dir)
    head, info = heads.load(run_dir)
    raw = to_dict(_run_config(run_dir, info))
    raw = override_caches(raw, list(caches)) if caches else raw
    raw = apply_overrides(raw, [f"data.where.{w}" for w in where])
    cfg = parse_config(raw, source=f"{run_dir}/head.json")
    opened = open_caches(cfg.data.caches)
    notes = check_fingerprints(info, opened, run_dir=run_dir)
    by = by or cfg.eval.by
    split = cfg.data.test if split is None else split
    thr = parse_threshold(cfg.eval.threshold if threshold is None else threshold)
    rows_where = dict(cfg.data.where) if split == "all" else {**cfg.data.where, cfg.data.split_column: split}
    fs = load_rows(opened, inputs=list(info["inputs"]), where=rows_where, domains=cfg.data.domains)
    if len(fs) == 0:
        present = sorted({str(v) for c in opened.values() for v in c.meta().get(cfg.data.split_column, [])})
        raise ValueError(
            f"no rows of {list(cfg.data.caches.values())} match {rows_where} (values of "
            f"{cfg.data.split_column!r} present: {present}); pass --split NAME or --split all"
        )
    frame = _score(head, fs, by=by)
    thr_how = "fixed"
    if thr == "val":
        _, val, how = train_val_rows(opened, cfg.data, inputs=list(info["inputs"]))
        if val is None:
            raise ValueError(f"--threshold val: the run has no validation rows ({how})")
        thr, thr_how = calibrate_threshold(val.labels, heads.predict(head, val.features)), f"calibrated on val ({how})"
    metrics = summarize(
        frame,
        by=by,
        threshold=float(thr),
        reals=reals or cfg.eval.reals,
        bootstrap=cfg.eval.bootstrap if bootstrap is None else bootstrap,
        seed=seed,
    )
    metrics["threshold_source"] = thr_how
    index, _, _ = assemble_groups(frame, by=by, reals=reals or cfg.eval.reals)
    context = [
        f"head `{info['name']}` from `{run_dir}` on inputs {', '.join(f'`{i}`' for i in info['inputs'])}",
        *[f"cache `{a}`: `{c.path}` (fingerprint {c.fingerprint[:12]})" for a, c in opened.items()],
        f"rows: {'all' if split == 'all' else f'{cfg.data.split_column} == {split}'}, filters {dict(cfg.data.where)}",
        f"threshold: {thr_how}",
        *[f"warning: {n}" for n in notes],
    ]
    write_report(
        out_dir,
        metrics=metrics,
        scores=frame,
        title=f"Evaluation of {run_dir.name}",
        context=context,
        index=index,
        plots=plots,
    )
    return metrics


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `aigi eval RUN_DIR ... -o REPORT_DIR`."""
    p = subparsers.add_parser(
        "eval",
        help="score a split with a trained head: per-group ACC / AP / AUC tables and plots",
        description=EVAL_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", type=Path, help="directory written by `aigi train` (head.json + head.safetensors)")
    p.add_argument(
        "--cache",
        action="append",
        default=[],
        metavar="[ALIAS=]PATH",
        help="cache to score instead of the one recorded at training (repeat for multi-cache heads); "
        "its fingerprint must equal the recorded one",
    )
    p.add_argument("--split", default=None, help="split to score, or `all` (default: the config's test split, `test`)")
    p.add_argument("--by", default=None, help="meta column to group by (default `source`)")
    p.add_argument("--threshold", default=None, help="a number in [0, 1] or `val` (default 0.5)")
    p.add_argument("--reals", choices=REAL_POLICIES, default=None, help="how fake-only groups get reals (default auto)")
    p.add_argument("--bootstrap", type=int, default=None, metavar="N", help="95%% intervals from N resamplings")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="COLUMN=VALUE",
        help="row filter replacing the run's (e.g. view=jpeg:75 for a robustness table; repeatable)",
    )
    p.add_argument("-o", "--out", type=Path, required=True, metavar="REPORT_DIR", help="where to write the report")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of `aigi eval`."""
    result = evaluate_run(
        args.run_dir,
        out_dir=args.out,
        caches=args.cache or None,
        split=args.split,
        by=args.by,
        threshold=args.threshold,
        reals=args.reals,
        bootstrap=args.bootstrap,
        seed=args.seed,
        where=args.where,
    )
    m = result["mean"]
    pct = lambda v: "n/a" if v is None else f"{100 * v:.2f}"
    print(
        f"eval: {len(result['groups'])} group(s) by {result['by']}, {m['n']} rows, "
        f"threshold {result['threshold']:.4g}: "
        f"mean ACC {pct(m['acc'])}, AP {pct(m['ap'])}, AUC {pct(m['auc'])} -> {args.out}/report.md"
    )
    return 0
