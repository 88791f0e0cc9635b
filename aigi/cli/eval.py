"""`aigi eval RUN_DIR -o REPORT_DIR`: per-group tables and plots of a trained head (`pipeline.evaluate`); with
`--views`, its robustness across cached views (`pipeline.robustness`; `aigi robustness` is the same command)."""

from __future__ import annotations

import argparse
import sys

from aigi.cli._options import (
    REPORT_FILES,
    add_cache_argument,
    add_out_argument,
    add_run_dir_argument,
    add_split_argument,
    add_weights_argument,
    cache_inputs,
    run_input,
)
from aigi.common.outputs import Output, check_output, committed

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

With --views V1,V2,... the command measures robustness instead (`aigi robustness` is an alias of it):
"""

VIEWS_HELP = """\
Scores the same images under every requested view (rows of the cache keyed by (image_id, view), written by
`aigi extract --views orig,jpeg:75,resize:0.5 ...`) with the head's stored calibration and threshold (see
`aigi calibrate`), and writes to REPORT_DIR:
  robustness.md / .csv / .json  per view: rows, ACC, real ACC, fake ACC, AUC, TPR at 1% FPR, ECE, coverage and
                                ACC on covered rows (heads with an abstain band), and against `orig`: the share of
                                images whose verdict flips, of reals that become fake, and the mean |change| of P(fake)
  flips.parquet                 one row per image: its verdict under every view
  robustness.png                ACC, AUC and TPR at 1% FPR against perturbation strength, one panel per kind
                                (JPEG/WebP quality, blur sigma, resize and crop factors; `orig` is the unperturbed end)
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `aigi eval RUN_DIR [--views V1,V2,...] ... -o REPORT_DIR`."""
    from aigi.pipeline.metrics import REAL_POLICIES

    p = subparsers.add_parser(
        "eval",
        help="score a split with a trained head: per-group ACC / AP / AUC tables and plots (--views: robustness)",
        description=EVAL_HELP + VIEWS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_dir_argument(p)
    add_cache_argument(
        p,
        text="cache to score instead of the one recorded at training (repeat for multi-cache heads); "
        "its fingerprint must equal the recorded one",
    )
    add_split_argument(p)
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
        "orig,jpeg:75,resize:0.5) with the head's stored threshold (--by, --threshold, --reals, --bootstrap, "
        "--seed and --where apply to the per-group table only); writes robustness.md/.csv/.json/.png and "
        "flips.parquet. `aigi robustness` is an alias",
    )
    add_weights_argument(p)
    add_out_argument(p, metavar="REPORT_DIR", text="where to write the report")
    p.add_argument("--json", action="store_true", help="print the metrics (metrics.json's content) as JSON")
    p.set_defaults(func=run)
    return p


def report_output(args: argparse.Namespace) -> Output:
    """The checked report folder -o of `aigi eval` / `aigi robustness` (never the run's files or its caches)."""
    inputs = run_input(args.run_dir) + cache_inputs(args.cache)
    return check_output(args.out, kind="folder", inputs=inputs, overwrite=args.overwrite, owned=REPORT_FILES)


def run(args: argparse.Namespace) -> int:
    """Entry point of `aigi eval`: the per-group report, or with --views the robustness report."""
    if args.views:
        return run_views(args)
    from aigi.pipeline.evaluate import EvalOptions, evaluate_run
    from aigi.pipeline.plots import SKIPPED, can_draw

    options = EvalOptions(split=args.split, by=args.by, threshold=args.threshold, reals=args.reals,
                          bootstrap=args.bootstrap, seed=args.seed, where=tuple(args.where), caches=tuple(args.cache),
                          weights=tuple(args.weights))  # fmt: skip
    out = report_output(args)
    with committed(out) as stage:
        result = evaluate_run(args.run_dir, stage, options).metrics
    if args.json:
        print((out.path / "metrics.json").read_text(), end="")
        return 0
    m, pooled = result["mean"], result["pooled"]
    if not getattr(args, "quiet", False):
        print(f"data: {m['n']} rows {result['rows_held']}")
    pct = lambda v: "n/a" if v is None else f"{100 * v:.2f}"
    covered = f", coverage {pct(m['coverage'])}, ACC covered {pct(m['acc_covered'])}" if "coverage" in m else ""
    print(
        f"eval: {len(result['groups'])} group(s) by {result['by']}, {m['n']} rows, "
        f"threshold {result['threshold']:.4g}, in %: mean ACC {pct(m['acc'])}, AP {pct(m['ap'])}, "
        f"AUC {pct(m['auc'])}, TPR@1%FPR {pct(m['tpr_at_1pct_fpr'])}, EER {pct(m['eer'])}, ECE {pct(m['ece'])}"
        f"{covered} (means over groups); pooled ACC {pct(pooled['acc'])}, AUC {pct(pooled['auc'])} -> "
        f"{args.out}/report.md, report.html"
    )
    if not can_draw():
        print(SKIPPED, file=sys.stderr)
    return 0


def run_views(args: argparse.Namespace) -> int:
    """`aigi eval --views` and its alias `aigi robustness`: per-view metrics and verdict flips, one line per view."""
    import pandas as pd

    from aigi.extractors.views import parse_views
    from aigi.pipeline.plots import SKIPPED, can_draw
    from aigi.pipeline.robustness import RobustnessOptions, robustness_run

    options = RobustnessOptions(views=tuple(parse_views(args.views)), split=args.split, caches=tuple(args.cache),
                                weights=tuple(args.weights))  # fmt: skip
    with committed(report_output(args)) as stage:
        table = robustness_run(args.run_dir, stage, options).table
    for row in table.to_dict("records"):
        flips = (
            ""
            if row.get("flip_rate") is None or pd.isna(row.get("flip_rate"))
            else f", flips {100 * row['flip_rate']:.1f}%"
        )
        auc = "n/a" if row["auc"] is None or pd.isna(row["auc"]) else f"{100 * row['auc']:.2f}"
        print(f"{row['view']}: pooled ACC {100 * row['acc']:.2f}, pooled AUC {auc}{flips}")
    print(f"robustness: {len(table)} view(s) -> {args.out}/robustness.md")
    if not can_draw():
        print(SKIPPED, file=sys.stderr)
    return 0
