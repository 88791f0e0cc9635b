"""`aigi ablate CONFIG -o DIR`: a grid of run configs x seeds, each trained and evaluated once (resumably, in
parallel), summarised (`pipeline.ablate`, which runs `pipeline.train` and `pipeline.evaluate` for each run)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from aigi.cli._options import (
    add_cache_argument,
    add_out_argument,
    add_set_argument,
    add_weights_argument,
    cache_inputs,
    folder_output,
)

ABLATE_HELP = """\
An ablation config is a run config (the schema of `aigi train` presets: head, fit, data, eval) plus:
  variants:  named sets of overrides, a mapping NAME: {KEY: VALUE, ...} or a list of {name: NAME, KEY: VALUE, ...};
             each changes several keys at once (e.g. `head: {name: gating, ...}` swaps the whole head section)
  grid:      {DOTTED.KEY: [VALUE, ...]}, crossed with every variant (e.g. fit.lr: [1.0e-3, 1.0e-4])
  seeds:     [0, 1, 2]: each setting runs once per seed (the seed goes to fit.seed)
  sort_by:   the metric summary.md is sorted by (default auc; e.g. ap, acc, or GROUP/fake_acc)
  eval_views: [orig, jpeg:75, resize:0.5]: each run is also evaluated on the test rows of each of these cached
             views (columns @VIEW/METRIC); train on several views as augmentation with a grid or variant over
             data.where.view (e.g. [[orig], [orig, jpeg:75]]) and read the views it did not see as held out
A KEY is dotted (fit.lr, head.rank, data.where.view); its VALUE replaces whatever the key held before.
Overrides apply in the order base config -> variant -> grid point -> seed.

Each run = one resolved config, run id = readable name + 8 hex of the sha256 of that config. It trains the head
(as `aigi train`) and evaluates it on the test split (as `aigi eval`) in DIR/runs/RUN_ID/ and writes
DIR/runs/RUN_ID/result.json last, atomically. Runs whose result.json exists are skipped, so a killed ablation
restarted with the same config redoes no finished run. At the end: DIR/results.parquet (one row per run),
DIR/summary.md (mean +- std over seeds, one row per setting, best first) and DIR/summary.png (with the `plots`
extra).

Banks: runs that read the same rows train together as head banks (docs/HEAD_BANK.md): the rows are read once,
every plain linear head of one fit setting steps as one batched matmul, the heads of a seed that share frozen
experts (gating, concat, mean) train them once (DIR/shared_stages), and any other run is a bank of its own. A run
that fails (a NaN loss, stage rows of one class) is listed with its reason at the end of summary.md (and in its
RUN_DIR/error.json); the others finish, and a re-run tries it again.

Parallelism: --jobs N runs the banks on N worker processes with cores // N torch threads each, each taking the
next bank when it finishes one (forked after the rows are read, sharing them; loky processes where fork is not
available); --workers N runs them on a dask LocalCluster of N processes; --scheduler tcp://HOST:PORT on an existing
dask cluster (its workers need the project installed and the caches and DIR on shared storage).
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `aigi ablate CONFIG -o DIR [--jobs N] [--workers N | --scheduler ADDR] [--seeds ...]`."""
    p = subparsers.add_parser(
        "ablate",
        help="grid of run configs x seeds: train + evaluate each (resumable, parallel), summarise",
        description=ABLATE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", type=Path, help="ablation YAML (run config + variants/grid/seeds) or preset name")
    add_out_argument(p, metavar="DIR", text="ablation directory (re-running resumes in it)", overwrite=False)
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="local processes (joblib loky; default 1)")
    dist = p.add_mutually_exclusive_group()
    dist.add_argument("--workers", type=int, default=0, metavar="N", help="run on a dask LocalCluster of N processes")
    dist.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="run on an existing dask scheduler")
    p.add_argument("--seeds", type=int, nargs="+", metavar="SEED", help="replace the config's seeds")
    p.add_argument("--sort-by", metavar="METRIC", help="summary metric to sort by (default: config's, else auc)")
    add_cache_argument(p, text="replace the base config's cache(s)")
    add_set_argument(p, text="override a base config key")
    add_weights_argument(p)
    p.add_argument("--dry-run", action="store_true", help="list the runs and whether each is done, run nothing")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Entry point of `aigi ablate`."""
    from aigi.pipeline.ablate import (
        AblateOptions,
        RunSteps,
        check_can_run,
        check_inputs_exist,
        load_ablation,
        read_result,
        run_ablation,
    )
    from aigi.pipeline.evaluate import EvalOptions, evaluate_run
    from aigi.pipeline.train import TrainOptions, train_bank, train_run

    options = AblateOptions(jobs=args.jobs, workers=args.workers, scheduler=args.scheduler)
    plan = load_ablation(
        args.config, overrides=args.overrides, caches=args.cache, seeds=args.seeds, sort_by=args.sort_by
    )
    check_inputs_exist(plan)
    data = plan.runs[0].parsed.data if plan.runs else None
    folder_output(args.out, cache_inputs(data.caches.values() if data else []))
    args.out = Path(args.out)
    if args.dry_run:
        for r in plan.runs:
            state = "done" if read_result(args.out / "runs" / r.run_id) is not None else "todo"
            print(f"{state}  {r.run_id}")
        return 0
    weights = tuple(args.weights)
    check_can_run(plan, options, weights=weights)
    steps = RunSteps(train=train_run, evaluate=evaluate_run, train_options=TrainOptions(weights=weights),
                     eval_options=EvalOptions(weights=weights, plots=False), train_bank=train_bank)  # fmt: skip
    start = time.perf_counter()
    out = run_ablation(plan, args.out, steps, options)
    best = out.summary.iloc[0]
    for failed in out.failed:
        print(f"ablate: run {failed['run_id']} failed: {failed['error']}", file=sys.stderr)
    print(
        f"ablate: {len(plan.runs)} runs ({out.ran} ran, {out.skipped} already done, {len(out.failed)} failed) in "
        f"{time.perf_counter() - start:.1f} s; best by {plan.sort_by}: {best['setting']} "
        f"({100 * best[f'{plan.sort_by}.mean']:.2f}) -> {out.files['summary']}"
    )
    if "plot" not in out.files:
        from aigi.pipeline.plots import SKIPPED

        print(SKIPPED, file=sys.stderr)
    return 0
