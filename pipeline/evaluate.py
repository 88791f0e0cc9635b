"""The `aigi eval` stage: score a split with a trained head, measure it (`pipeline.metrics`), write the report."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aigi.cli._options import add_weights_argument  # TEMPORARY until the command line moves to aigi/cli
from aigi.pipeline.metrics import REAL_POLICIES

EVAL_HELP = """\
Scores the rows of one split with a trained head and writes report.md, metrics.csv, metrics.json,
scores.parquet and PNG plots (roc.png, acc_by_group.png, score_hist.png; with the `plots` extra) to REPORT_DIR.

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


SCORE_COLUMNS = ("image_id", "view", "label", "source", "domain", "pair_id", "split", "path")


def _score(head: Any, info: Mapping[str, Any], fs: Any, *, by: str) -> pd.DataFrame:
    """Rows with their calibrated P(fake) (`score`) and verdict (0 / 1, -1 inside an abstain band)."""
    from aigi.pipeline.calibrate import calibrated

    cols = [c for c in dict.fromkeys([*SCORE_COLUMNS, by]) if c in fs.meta.columns]
    frame = fs.meta[cols].reset_index(drop=True).copy()
    frame["label"] = frame["label"].astype(np.int64)
    frame["score"], frame["verdict"], _ = calibrated(head, dict(info), fs.features)
    return frame


def _threshold(
    threshold: str | float | None, cfg: Any, info: Mapping[str, Any], *, head: Any, caches: Mapping[str, Any]
) -> tuple[float, str]:
    """The threshold asked for (--threshold), else the head's stored one, else the config's; and where it came from.

    `val` is the best balanced-accuracy cut on the run's validation rows, scored with the stored calibration.
    """
    from aigi import heads
    from aigi.common.grammar import parse_threshold
    from aigi.heads.calibration import conformal_high
    from aigi.pipeline.metrics import calibrate_threshold
    from aigi.pipeline.rows import val_rows

    cal = heads.calibration_of(dict(info))
    if threshold is None and info.get("calibration"):
        return cal.threshold, f"stored with the head ({cal.threshold_policy}, calibration {cal.method})"
    rule = parse_threshold(cfg.eval.threshold if threshold is None else threshold)
    if rule.policy == "fixed":
        return float(rule.value), "fixed"
    val, how = val_rows(caches, cfg.data, inputs=list(info["inputs"]))
    if val is None:
        raise ValueError(f"--threshold {rule}: the run has no validation rows ({how})")
    probs = cal.probability(heads.logits(head, val.features))
    if rule.policy == "target_fpr":
        return conformal_high(probs[val.labels == 0], rule.value), f"target FPR {rule.value:g} on val ({how})"
    return calibrate_threshold(val.labels, probs), f"calibrated on val ({how})"


def _split_rows(opened: Mapping[str, Any], cfg: Any, *, inputs: list[str], split: str) -> Any:
    """The rows of `split` (or every row for "all") with the run's filters; an error naming the splits present."""
    from aigi.pipeline.rows import check_where, hold_choice, load_rows

    rows_where = dict(cfg.data.where) if split == "all" else {**cfg.data.where, cfg.data.split_column: split}
    hold = hold_choice(opened, cfg.data, inputs=inputs, where=rows_where)  # in memory, float16 or streamed
    fs = load_rows(opened, inputs=inputs, where=rows_where, domains=cfg.data.domains, hold=hold)
    if len(fs) == 0:
        check_where(opened, cfg.data.where, flag="--where")
        present = sorted({str(v) for c in opened.values() for v in c.meta().get(cfg.data.split_column, [])})
        raise ValueError(
            f"no rows of {list(cfg.data.caches.values())} match {rows_where} (values of "
            f"{cfg.data.split_column!r} present: {present}); pass --split NAME or --split all"
        )
    return fs


def _calibration_text(cal: Any) -> str:
    """How the head's stored calibration maps logits to scores, for the report's header."""
    text = {
        "none": "",
        "temperature": f" / {cal.temperature:.4g} (temperature scaling)",
        "platt": f" x {cal.slope:.4g} + {cal.bias:.4g} (Platt scaling)",
    }[cal.method]
    if cal.band is not None:
        text += f"; unsure when {cal.band[0]:.4g} < P(fake) < {cal.band[1]:.4g} ({cal.band_policy} band)"
    return text


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
    config: Any = None,
    weights: Sequence[str] = (),
) -> dict[str, Any]:
    """Score one split with a trained head and write the report (see EVAL_HELP); None means the run's default.

    Args:
        run_dir: a directory written by `aigi train` (or `aigi head import-*`).
        out_dir: the report directory.
        caches: `[ALIAS=]PATH` replacing the recorded caches (needed when the head records none).
        split: the split value to score, or "all" for every row (default: the config's test split).
        by: grouping column. threshold: a number or "val". reals: pairing policy. bootstrap, seed: resamplings.
        where: extra `COLUMN=VALUE` row filters replacing the config's (e.g. view=jpeg:75).
        plots: also draw the PNG plots (the ablation runner turns them off: they cost seconds per run).
        config: the run's `RunConfig` when the caller holds it (the ablation runner); default: read from RUN_DIR.
        weights: `PATH` / `ALIAS=PATH` backbone weights for `tail_*` heads (they re-run the last blocks).

    Returns:
        The metrics (metrics.json's content).
    """
    from aigi import heads
    from aigi.pipeline.metrics import assemble_groups, group_metrics
    from aigi.pipeline.report import write_report
    from aigi.pipeline.rows import check_fingerprints, open_caches, run_config

    run_dir = Path(run_dir)
    if bootstrap is not None and bootstrap < 0:
        raise ValueError(f"--bootstrap {bootstrap}: the number of resamplings must be >= 0 (0: no intervals)")
    head, info = _trained_head(run_dir, weights)
    cfg = _eval_config(config if config is not None else run_config(run_dir, info), run_dir, caches, where)
    opened = open_caches(cfg.data.caches)
    notes = check_fingerprints(info, opened, run_dir=run_dir)
    by = by or cfg.eval.by
    split = cfg.data.test if split is None else split
    fs = _split_rows(opened, cfg, inputs=list(info["inputs"]), split=split)
    frame = _score(head, info, fs, by=by)
    cal = heads.calibration_of(info)
    thr, thr_how = _threshold(threshold, cfg, info, head=head, caches=opened)
    metrics = group_metrics(
        frame,
        by=by,
        threshold=float(thr),
        reals=reals or cfg.eval.reals,
        bootstrap=cfg.eval.bootstrap if bootstrap is None else bootstrap,
        seed=seed,
        verdicts=frame["verdict"].to_numpy() if cal.band is not None else None,
    )
    metrics["threshold_source"] = thr_how
    metrics["rows_held"] = getattr(fs, "held", "")
    index, _, _ = assemble_groups(frame, by=by, reals=reals or cfg.eval.reals)
    rows = "all" if split == "all" else f"{cfg.data.split_column} == {split}"
    context = [
        f"head `{info['name']}` from `{run_dir}` on inputs {', '.join(f'`{i}`' for i in info['inputs'])}",
        *[f"cache `{a}`: `{c.path}` (fingerprint {c.fingerprint[:12]})" for a, c in opened.items()],
        f"rows: {rows}, filters {dict(cfg.data.where)}; threshold: {thr_how}",
        f"scores: P(fake) = sigmoid(logit){_calibration_text(cal)}",
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


def _trained_head(run_dir: Path, weights: Any) -> tuple[Any, dict[str, Any]]:
    """The head saved in `run_dir` and its head.json; an imported head with an untrained stage is refused."""
    from aigi.pipeline.tail import load_head

    head, info = load_head(run_dir, weights)
    if info.get("untrained"):
        raise ValueError(
            f"{run_dir} is an imported head whose {info['untrained']} is untrained, so its scores mean nothing; "
            f"train stage 2 first: aigi train configs/gapl.yaml --init {run_dir} -o RUN_DIR, then evaluate RUN_DIR"
        )
    return head, info


def _eval_config(cfg: Any, run_dir: Path, caches: Sequence[str] | None, where: Sequence[str]) -> Any:
    """The run's config with `--cache` / `--where` overrides applied to its plain mapping, parsed once more."""
    if not (caches or where):
        return cfg
    from aigi.pipeline.config import apply_overrides, override_caches, parse_config, to_dict

    raw = to_dict(cfg)
    raw = override_caches(raw, list(caches)) if caches else raw
    raw = apply_overrides(raw, [f"data.where.{w}" for w in where])
    return parse_config(raw, source=f"{run_dir}/head.json")


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
    p.add_argument(
        "--views",
        default=None,
        help="robustness instead of the per-group table: score the same images under these cached views (e.g. "
        "orig,jpeg:75,resize:0.5); writes robustness.md/.csv/.json/.png and flips.parquet, as `aigi robustness`",
    )
    add_weights_argument(p)
    p.add_argument("-o", "--out", type=Path, required=True, metavar="REPORT_DIR", help="where to write the report")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of `aigi eval`."""
    if args.views:
        from aigi.pipeline import robustness

        return robustness.run(args)
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
        weights=args.weights,
    )
    m = result["mean"]
    print(f"data: {m['n']} rows {result['rows_held']}")
    pct = lambda v: "n/a" if v is None else f"{100 * v:.2f}"
    covered = f", coverage {pct(m['coverage'])}, ACC covered {pct(m['acc_covered'])}" if "coverage" in m else ""
    print(
        f"eval: {len(result['groups'])} group(s) by {result['by']}, {m['n']} rows, "
        f"threshold {result['threshold']:.4g}: mean ACC {pct(m['acc'])}, AP {pct(m['ap'])}, AUC {pct(m['auc'])}, "
        f"TPR@1%FPR {pct(m['tpr_at_1pct_fpr'])}, ECE {pct(m['ece'])}{covered} -> {args.out}/report.md"
    )
    from aigi.pipeline.plots import SKIPPED, can_draw

    if not can_draw():
        print(SKIPPED, file=sys.stderr)
    return 0
