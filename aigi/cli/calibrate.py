"""`aigi calibrate RUN_DIR`: fit a head's calibration, threshold and abstain band on its validation rows
(`pipeline.calibrate`)."""

from __future__ import annotations

import argparse

from aigi.cli._options import add_cache_argument, add_run_dir_argument, add_weights_argument

CALIBRATE_HELP = """\
Fits, on the run's validation rows (the rows `aigi train` held out: split == val, or its seeded val_fraction
of the training pairs), and stores in RUN/head.json under `calibration`:
  --method      temperature (P(fake) = sigmoid(z / T)), platt (sigmoid(a z + b)) or none
  --threshold   a number (e.g. 0.5), val_acc (best balanced accuracy on validation) or fpr:A (split-conformal
                on the real validation rows: a new real is called fake with probability <= A)
  --band        none, coverage:C (abstain on the 1-C share of validation rows nearest the threshold) or
                error:A (class-conditional split-conformal: reals called fake and fakes called real each
                with probability <= A; rows where both answers are plausible are `unsure`)
`aigi eval` and `aigi predict` then report calibrated probabilities, the stored threshold and, with a band,
real / fake / unsure verdicts. A run trained with no validation rows cannot be calibrated: train it with
--set data.val_fraction=0.1 (or give the cache split == val rows).
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `aigi calibrate RUN_DIR [--method M] [--threshold T] [--band B]`."""
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
    add_cache_argument(p)
    add_weights_argument(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Entry point of `aigi calibrate`."""
    from aigi.common.outputs import target_lock
    from aigi.pipeline.calibrate import CalibrateOptions, calibrate_run
    from aigi.pipeline.config import CalibrationSpec

    spec = CalibrationSpec(method=args.method, threshold=args.threshold, band=args.band)
    with target_lock(args.run_dir, option="RUN_DIR"):  # one writer of the run at a time (train, calibrate)
        s = calibrate_run(args.run_dir, CalibrateOptions(spec=spec, caches=tuple(args.cache),
                                                         weights=tuple(args.weights)))  # fmt: skip
    cal, v = s.calibration, s.val
    band = "no band" if cal["band"] is None else f"unsure band ({cal['band'][0]:.4g}, {cal['band'][1]:.4g})"
    print(
        f"calibrate: {cal['method']} on {s.val_rows} val rows: ECE {v['ece_before']:.4f} -> {v['ece_after']:.4f}, "
        f"Brier {v['brier_before']:.4f} -> {v['brier_after']:.4f}; threshold {cal['threshold']:.6g} "
        f"({cal['threshold_policy']}), {band}, val coverage {100 * v['coverage']:.1f}% -> {args.run_dir}/head.json"
    )
    return 0
