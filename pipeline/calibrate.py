"""The calibrate stage: fit a head's calibration, threshold and abstain band on its validation rows; store them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aigi.pipeline.config import CalibrationSpec


@dataclass(frozen=True)
class CalibrateOptions:
    """What `aigi calibrate` fits, and where the run's rows and head come from.

    Attributes:
        spec: the method, the threshold rule and the abstain band to fit (checked when the options are made).
        caches: `[ALIAS=]PATH` replacing the recorded caches.
        weights: `PATH` / `ALIAS=PATH` backbone weights for `tail_*` heads (they re-run the last blocks).
    """

    spec: CalibrationSpec = field(default_factory=CalibrationSpec)
    caches: tuple[str, ...] = ()
    weights: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("caches", "weights"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        self.spec.fit_kwargs()  # a bad --threshold or --band is an error before any row is read


@dataclass(frozen=True)
class CalibrateResult:
    """What `calibrate_run` fitted and stored.

    Attributes:
        run_dir: the run whose head.json now holds the calibration.
        val_rows: the validation rows it was fitted on; val_policy: where they came from.
        calibration: the stored calibration (`heads.Calibration.to_dict()`).
        val: on the validation rows: ECE and Brier before / after, coverage, ACC on covered rows, FPR.
    """

    run_dir: Path
    val_rows: int
    val_policy: str
    calibration: dict[str, Any]
    val: dict[str, Any]


def calibrate_run(run_dir: str | Path, options: CalibrateOptions = CalibrateOptions()) -> CalibrateResult:
    """Fit `options.spec` on the run's validation rows (the rows `aigi train` held out: split == val, or its seeded
    val_fraction of the training pairs), store it in head.json and measure it on those rows."""
    from aigi import heads
    from aigi.pipeline.metrics import brier, ece
    from aigi.pipeline.scoring import open_run, validation_logits

    run = open_run(run_dir, caches=options.caches, weights=options.weights)
    z, y, how = validation_logits(run)
    if z is None:
        raise ValueError(
            f"{run.run_dir} has no validation rows to calibrate on ({how}); retrain with --set data.val_fraction=0.1 "
            "or give the cache rows with split == val"
        )
    cal = heads.fit_calibration(z, y, **options.spec.fit_kwargs())
    heads.save_calibration(run.run_dir, cal)
    before, after = heads.Calibration().probability(z), cal.probability(z)
    verdict = cal.verdict(after)
    covered = verdict != -1
    val = {
        "ece_before": ece(y, before),
        "ece_after": ece(y, after),
        "brier_before": brier(y, before),
        "brier_after": brier(y, after),
        "coverage": float(covered.mean()),
        "acc_covered": float((verdict[covered] == y[covered]).mean()) if covered.any() else None,
        "fpr": float((verdict[y == 0] == 1).mean()) if (y == 0).any() else None,
    }
    return CalibrateResult(run.run_dir, int(y.size), how, cal.to_dict(), val)
