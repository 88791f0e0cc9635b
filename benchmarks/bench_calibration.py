"""Calibration on UAR's shipped features: ECE before/after scaling, and a 1%-FPR threshold checked on the test split.

Recipe (each step is an `aigi` command):
1. `aigi import uar UAR_SAMPLE --cache WORK/uar --split-ratio train=0.8,test=0.2` (80/20 by pair: 2,000 real
   ImageNet images and their SD-1.4 VAE reconstructions as AIM-3B `probe` features, 3072-d).
2. `aigi train configs/uar.yaml --cache uar=WORK/uar --set data.val_fraction=0.1 -o WORK/run`: UAR's protocol
   (linear, BCE, Adam 1e-3, batch 32, 1 epoch) on 90% of the training pairs; the other 10% (seeded, by pair) are
   the validation rows calibration is fitted on. The test split is never used for fitting.
3. For each method (none, temperature, platt): `aigi calibrate WORK/run --method M --threshold fpr:0.01`, then
   the stored calibration is applied to the test rows: ECE (15 bins), Brier, the stored threshold, and the FPR
   (reals called fake) and TPR it gives on the test split; then temperature scaling with an abstain band
   (`--band error:0.02`): coverage and ACC on the covered test rows; last, `aigi eval` of the run as calibrated.

Prints the table; writes benchmarks/out/bench_calibration.json.
Run: `python benchmarks/bench_calibration.py [--uar DIR] [--work DIR]`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (method, band): the three scalings with the 1%-FPR threshold, then temperature scaling with a conformal band
SETTINGS = (
    ("none", "none"),
    ("temperature", "none"),
    ("platt", "none"),
    ("temperature", "error:0.01"),
    ("temperature", "coverage:0.9"),
)
TARGET_FPR = 0.01


def _aigi(argv: list[str]) -> None:
    from aigi.cli import main

    code = main(argv)
    if code != 0:
        raise SystemExit(f"aigi {' '.join(argv)} failed with exit code {code}")


def test_logits(run: Path, store: Path) -> tuple[np.ndarray, np.ndarray]:
    """Raw logits and labels of the test rows (view orig) of the imported cache."""
    from aigi import cache, heads

    head, _ = heads.load(run)
    fs = cache.open(store).load(list(head.cfg.inputs), where={"split": "test", "view": "orig"})
    return heads.logits(head, fs.features), fs.labels.astype(np.int64)


def measure(run: Path, store: Path, method: str, band: str) -> dict:
    """Calibrate with `method`, a 1%-FPR threshold and `band`; the numbers on val (fit) and test (held out)."""
    from aigi import heads
    from aigi.pipeline.calibrate import CalibrateOptions, calibrate_run
    from aigi.pipeline.config import CalibrationSpec
    from aigi.pipeline.metrics import brier, ece, tpr_at_fpr

    spec = CalibrationSpec(method=method, threshold=f"fpr:{TARGET_FPR}", band=band)
    summary = calibrate_run(run, CalibrateOptions(spec=spec, in_place=True))
    cal = heads.calibration_of(heads.load(run)[1])
    z, y = test_logits(run, store)
    p = cal.probability(z)
    verdict = cal.verdict(p)
    called, covered = verdict == 1, verdict != -1
    reals, fakes = y == 0, y == 1
    return {
        "method": method,
        "band": band,
        "band_range": cal.band,
        "temperature": cal.temperature if method == "temperature" else None,
        "platt": [cal.slope, cal.bias] if method == "platt" else None,
        "val_rows": summary.val_rows,
        "val_reals": int(summary.calibration["fitted_on"]["real"]),
        "val_ece_raw": summary.val["before"]["ece"],
        "val_ece": summary.val["after"]["ece"],
        "test_rows": int(y.size),
        "test_ece_raw": ece(y, 1 / (1 + np.exp(-z))),
        "test_ece": ece(y, p),
        "test_brier_raw": brier(y, 1 / (1 + np.exp(-z))),
        "test_brier": brier(y, p),
        "threshold": cal.threshold,
        "val_fpr": summary.val["after"]["fpr"],
        "test_fpr": float(called[reals].mean()),
        "test_false_positives": f"{int(called[reals].sum())}/{int(reals.sum())}",
        "test_tpr": float(called[fakes].mean()),
        "test_acc": float((called == y).mean()),
        "test_coverage": float(covered.mean()),
        "test_acc_covered": float((verdict[covered] == y[covered]).mean()),
        "test_fakes_called_real": float((verdict[fakes] == 0).mean()),
        "test_tpr_at_1pct_fpr_oracle": tpr_at_fpr(y, p, TARGET_FPR)[0],
    }


def main(argv: list[str] | None = None) -> int:
    shared = Path(os.environ.get("AIGI_SHARED", ROOT.parent / "shared"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uar", type=Path, default=shared / "data" / "uar_sample", help="UAR .npy sample folder")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "out" / "calibration_work")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "bench_calibration.json")
    args = parser.parse_args(argv)
    if not args.uar.is_dir():
        raise SystemExit(f"{args.uar} is absent: pass --uar FOLDER (UAR's 0_real/1_fake .npy features)")
    store, run = args.work / "uar", args.work / "run"
    _aigi(["import", "uar", str(args.uar), "--cache", str(store), "--split-ratio", "train=0.8,test=0.2"])
    if not (run / "head.json").exists():
        _aigi(["train", str(ROOT / "configs" / "uar.yaml"), "--cache", f"uar={store}",
               "--set", "data.val_fraction=0.1", "-o", str(run)])  # fmt: skip
    rows = [measure(run, store, m, b) for m, b in SETTINGS]
    _aigi(["eval", str(run), "-o", str(args.work / "eval"), "--bootstrap", "200"])
    evaluated = json.loads((args.work / "eval" / "metrics.json").read_text())["mean"]
    cols = ["method", "band", "val_ece", "test_ece_raw", "test_ece", "test_brier", "threshold", "val_fpr", "test_fpr",
            "test_false_positives", "test_tpr", "test_coverage", "test_acc_covered"]  # fmt: skip
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    print(f"T = {rows[1]['temperature']:.4f}; Platt (a, b) = {rows[2]['platt']}; val rows {rows[0]['val_rows']} "
          f"({rows[0]['val_reals']} reals), test rows {rows[0]['test_rows']}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"target_fpr": TARGET_FPR, "rows": rows, "eval_mean_with_last_calibration": evaluated}
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
