"""`aigi calibrate RUN_DIR -o NEW_RUN_DIR` (or `--in-place`): fit a head's calibration, threshold and abstain band on
its validation rows (`pipeline.calibrate`)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from aigi.cli._options import (
    RUN_FILES,
    add_cache_argument,
    add_out_argument,
    add_run_dir_argument,
    add_weights_argument,
    cache_inputs,
    run_input,
)

CALIBRATE_HELP = """\
Fits, on the run's validation rows (the rows `aigi train` held out: split == val, or its seeded val_fraction
of the training pairs), and stores in head.json under `calibration`:
  --method      temperature (P(fake) = sigmoid(z / T)), platt (sigmoid(a z + b)) or none
  --threshold   a number (e.g. 0.5), val_acc (best balanced accuracy on validation) or fpr:A (split-conformal
                on the real validation rows: a new real is called fake with probability <= A; needs at least
                1/A - 1 validation reals, else a one-line warning says what they support)
  --band        none, coverage:C (abstain on the 1-C share of validation rows nearest the threshold) or
                error:A (class-conditional split-conformal: reals called fake and fakes called real each
                with probability <= A; rows where both answers are plausible are `unsure`). A threshold and a band
                fitted together both keep what head.json says they are: the band is widened to hold the threshold.
The calibrated head is written to -o NEW_RUN_DIR (a copy of the run's files; the run stays as it is), or with
--in-place into RUN_DIR/head.json. The validation metrics before (raw sigmoid, threshold 0.5) and after are
printed, in percent; a calibration that makes the validation ECE worse is said in a warning.
`aigi eval` and `aigi predict` then report calibrated probabilities, the stored threshold and, with a band,
real / fake / unsure verdicts. A run trained with no validation rows cannot be calibrated: train it with
--set data.val_fraction=0.1 (or give the cache split == val rows).
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `aigi calibrate RUN_DIR (-o NEW_RUN_DIR | --in-place) [--method M] [--threshold T] [--band B]`."""
    p = subparsers.add_parser(
        "calibrate",
        help="fit a head's calibration, threshold and abstain band on its validation rows",
        description=CALIBRATE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_dir_argument(p)
    p.add_argument("--method", choices=("temperature", "platt", "none"), default="temperature")
    p.add_argument("--threshold", default="0.5", help="a number, val_acc or fpr:A (default 0.5)")
    p.add_argument("--band", default="none", help="none, coverage:C or error:A (default none)")
    add_out_argument(p, metavar="NEW_RUN_DIR", text="write the calibrated head here (a copy of the run's files)",
                     required=False)  # fmt: skip
    p.add_argument("--in-place", action="store_true", help="rewrite RUN_DIR/head.json instead of writing to -o")
    add_cache_argument(p)
    add_weights_argument(p)
    p.set_defaults(func=run)
    return p


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def run(args: argparse.Namespace) -> int:
    """Entry point of `aigi calibrate`."""
    from aigi.common.outputs import check_output, committed, target_lock
    from aigi.pipeline.calibrate import CalibrateOptions, calibrate_run
    from aigi.pipeline.config import CalibrationSpec

    spec = CalibrationSpec(method=args.method, threshold=args.threshold, band=args.band)
    options = CalibrateOptions(spec=spec, caches=tuple(args.cache), weights=tuple(args.weights),
                               out=None if args.out is None else Path(args.out), in_place=args.in_place)  # fmt: skip
    if options.in_place:
        with target_lock(args.run_dir, option="RUN_DIR"):  # one writer of the run at a time (train, calibrate)
            s = calibrate_run(args.run_dir, options)
        written = Path(args.run_dir)
    else:
        inputs = run_input(args.run_dir) + cache_inputs(args.cache)
        out = check_output(args.out, kind="folder", inputs=inputs, overwrite=args.overwrite, owned=RUN_FILES)
        with committed(out) as stage:
            s = calibrate_run(args.run_dir, replace(options, out=stage))
        written = Path(args.out)
    cal, before, after = s.calibration, s.val["before"], s.val["after"]
    band = "no band" if cal["band"] is None else f"unsure band ({cal['band'][0]:.4g}, {cal['band'][1]:.4g})"
    print(
        f"calibrate: {cal['method']} on {s.val_rows} val rows; threshold {cal['threshold']:.6g} "
        f"({cal['threshold_policy']}), {band} -> {written}/head.json"
    )
    print(
        "validation (%), before (sigmoid, 0.5) -> after: "
        + ", ".join(
            f"{k.upper().replace('_', ' ')} {_pct(before[k])} -> {_pct(after[k])}"
            for k in ("ece", "brier", "log_loss", "acc", "fpr", "tpr", "coverage")
        )  # fmt: skip
    )
    return 0
