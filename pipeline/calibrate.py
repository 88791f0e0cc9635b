"""`aigi calibrate RUN`: fit the head's calibration, threshold and abstain band on its validation rows; store them."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aigi.cli._options import add_weights_argument  # TEMPORARY until the command line moves to aigi/cli
from aigi.pipeline.config import CalibrationSpec

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


def validation_logits(
    run_dir: Path, *, caches: list[str] | None = None, weights: Sequence[str] = ()
) -> tuple[Any, dict, np.ndarray, np.ndarray, str]:
    """(head, head.json content, raw logits, labels, where the rows came from) of the run's validation rows;
    `weights` (`PATH` / `ALIAS=PATH`): the backbone weights a `tail_*` head re-runs its last blocks with."""
    from aigi import heads
    from aigi.pipeline.config import override_caches, parse_config, to_dict
    from aigi.pipeline.rows import check_fingerprints, open_caches, run_config, val_rows
    from aigi.pipeline.tail import load_head

    head, info = load_head(run_dir, weights)
    raw = to_dict(run_config(run_dir, info))
    cfg = parse_config(override_caches(raw, caches) if caches else raw, source=f"{run_dir}/head.json")
    opened = open_caches(cfg.data.caches)
    check_fingerprints(info, opened, run_dir=run_dir)
    val, how = val_rows(opened, cfg.data, inputs=list(info["inputs"]))
    if val is None or len(val) == 0:
        raise ValueError(
            f"{run_dir} has no validation rows to calibrate on ({how}); retrain with --set data.val_fraction=0.1 "
            "or give the cache rows with split == val"
        )
    return head, info, heads.logits(head, val.features), val.labels.astype(np.int64), how


def calibrate_run(
    run_dir: str | Path, spec: CalibrationSpec, *, caches: list[str] | None = None, weights: Sequence[str] = ()
) -> dict[str, Any]:
    """Fit `spec` on the run's validation rows, store it in head.json and return a summary with val ECE/Brier."""
    from aigi import heads
    from aigi.pipeline.metrics import brier, ece

    run_dir = Path(run_dir)
    _, _, z, y, how = validation_logits(run_dir, caches=caches, weights=weights)
    cal = heads.fit_calibration(z, y, **spec.fit_kwargs())
    heads.save_calibration(run_dir, cal)
    before, after = heads.Calibration().probability(z), cal.probability(z)
    verdict = cal.verdict(after)
    covered = verdict != -1
    return {
        "run_dir": str(run_dir),
        "val_rows": int(y.size),
        "val_policy": how,
        "calibration": cal.to_dict(),
        "val": {
            "ece_before": ece(y, before),
            "ece_after": ece(y, after),
            "brier_before": brier(y, before),
            "brier_after": brier(y, after),
            "coverage": float(covered.mean()),
            "acc_covered": float((verdict[covered] == y[covered]).mean()) if covered.any() else None,
            "fpr": float((verdict[y == 0] == 1).mean()) if (y == 0).any() else None,
        },
    }


def calibrated(head: Any, info: dict[str, Any], features: Any) -> tuple[np.ndarray, np.ndarray, Any]:
    """(calibrated P(fake), verdicts 0 / 1 / -1, the calibration) of rows under the head's stored calibration."""
    from aigi import heads

    cal = heads.calibration_of(info)
    probs = cal.probability(heads.logits(head, features))
    return probs, cal.verdict(probs), cal


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `aigi calibrate RUN_DIR [--method M] [--threshold T] [--band B]`."""
    p = subparsers.add_parser(
        "calibrate",
        help="fit a head's calibration, threshold and abstain band on its validation rows",
        description=CALIBRATE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", type=Path, help="directory written by `aigi train` (head.json + head.safetensors)")
    p.add_argument("--method", choices=("temperature", "platt", "none"), default="temperature")
    p.add_argument("--threshold", default="0.5", help="a number, val_acc or fpr:A (default 0.5)")
    p.add_argument("--band", default="none", help="none, coverage:C or error:A (default none)")
    p.add_argument(
        "--cache", action="append", default=[], metavar="[ALIAS=]PATH", help="cache replacing the recorded one"
    )
    add_weights_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of `aigi calibrate`."""
    spec = CalibrationSpec(method=args.method, threshold=args.threshold, band=args.band)
    s = calibrate_run(args.run_dir, spec, caches=args.cache or None, weights=args.weights)
    cal, v = s["calibration"], s["val"]
    band = "no band" if cal["band"] is None else f"unsure band ({cal['band'][0]:.4g}, {cal['band'][1]:.4g})"
    print(
        f"calibrate: {cal['method']} on {s['val_rows']} val rows: ECE {v['ece_before']:.4f} -> {v['ece_after']:.4f}, "
        f"Brier {v['brier_before']:.4f} -> {v['brier_after']:.4f}; threshold {cal['threshold']:.6g} "
        f"({cal['threshold_policy']}), {band}, val coverage {100 * v['coverage']:.1f}% -> {args.run_dir}/head.json"
    )
    return 0
