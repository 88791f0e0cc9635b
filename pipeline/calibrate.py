"""The calibrate stage: fit a head's calibration, threshold and abstain band on its validation rows; store them."""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aigi.pipeline.config import CalibrationSpec

LOG = logging.getLogger(__name__)
VAL_METRICS = ("ece", "brier", "log_loss", "acc", "fpr", "tpr", "coverage")  # measured before and after


@dataclass(frozen=True)
class CalibrateOptions:
    """What `aigi calibrate` fits, where the run's rows and head come from, and where the calibrated head goes.

    Attributes:
        spec: the method, the threshold rule and the abstain band to fit (checked when the options are made).
        caches: `[ALIAS=]PATH` replacing the recorded caches.
        weights: `PATH` / `ALIAS=PATH` backbone weights for `tail_*` heads (they re-run the last blocks).
        out: the run folder to write the calibrated head to (a copy of the run's files); None with `in_place`.
        in_place: rewrite the run's own head.json instead (only when asked).
    """

    spec: CalibrationSpec = field(default_factory=CalibrationSpec)
    caches: tuple[str, ...] = ()
    weights: tuple[str, ...] = ()
    out: Path | None = None
    in_place: bool = False

    def __post_init__(self) -> None:
        for name in ("caches", "weights"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        self.spec.fit_kwargs()  # a bad --threshold or --band is an error before any row is read
        if self.out is not None:
            object.__setattr__(self, "out", Path(self.out))
        if (self.out is None) == (not self.in_place):
            raise ValueError(
                "give -o NEW_RUN_DIR to write the calibrated head there (the run stays as it is), or --in-place to "
                "rewrite the run's own head.json"
                if self.out is None
                else "-o and --in-place exclude each other"
            )


@dataclass(frozen=True)
class CalibrateResult:
    """What `calibrate_run` fitted and stored.

    Attributes:
        run_dir: the run whose head.json now holds the calibration (the -o folder, or the run itself in place).
        val_rows: the validation rows it was fitted on; val_policy: where they came from.
        calibration: the stored calibration (`heads.Calibration.to_dict()`).
        val: on the validation rows, fractions: `before` (the raw sigmoid at 0.5) and `after` (this calibration)
            of VAL_METRICS (ECE, Brier, log loss, ACC, FPR, TPR, coverage); plus `acc_covered`.
        warnings: what the validation rows cannot support, and a calibration that made ECE worse.
    """

    run_dir: Path
    val_rows: int
    val_policy: str
    calibration: dict[str, Any]
    val: dict[str, Any]
    warnings: tuple[str, ...] = ()


def calibrate_run(run_dir: str | Path, options: CalibrateOptions) -> CalibrateResult:
    """Fit `options.spec` on the run's validation rows (the rows `aigi train` held out: split == val, or its seeded
    val_fraction of the training pairs), measure it on those rows before and after, and store it in a copy of the
    run (`options.out`) or in the run itself (`options.in_place`)."""
    from aigi import heads
    from aigi.pipeline.scoring import open_run, validation_logits

    run = open_run(run_dir, caches=options.caches, weights=options.weights)
    z, y, how = validation_logits(run)
    if z is None:
        raise ValueError(
            f"{run.run_dir} has no validation rows to calibrate on ({how}); retrain with --set data.val_fraction=0.1 "
            "or give the cache rows with split == val"
        )
    target = _target(options, run.run_dir)
    notes = support_warnings(options.spec, n_real=int((y == 0).sum()), n_fake=int((y == 1).sum()))
    cal = heads.fit_calibration(z, y, **options.spec.fit_kwargs())
    before, after = val_metrics(heads.Calibration(), z, y), val_metrics(cal, z, y)
    if after["ece"] > before["ece"]:
        notes.append(
            f"validation ECE rose from {100 * before['ece']:.2f}% to {100 * after['ece']:.2f}% ({cal.method} "
            f"minimises the log loss, {100 * before['log_loss']:.2f} -> {100 * after['log_loss']:.2f}%, not ECE; on "
            f"{y.size} rows ECE is noisy): consider --method none"
        )
    for note in notes:
        LOG.warning(f"warning: {note}")
    if target != run.run_dir:
        _copy_run(run.run_dir, target)
    heads.save_calibration(target, cal)
    val = {"before": before, "after": after, "acc_covered": after.pop("acc_covered")}
    val["before"].pop("acc_covered")
    return CalibrateResult(target, int(y.size), how, cal.to_dict(), val, tuple(notes))


def _target(options: CalibrateOptions, run_dir: Path) -> Path:
    """Where the calibrated head goes; an -o folder holding another head is refused before any work."""
    if options.in_place or options.out is None:
        return run_dir
    out = options.out
    if out.resolve() == run_dir.resolve():
        return run_dir
    if (out / "head.json").exists():
        raise FileExistsError(f"-o {out} already holds a head; give a new folder (or --in-place to rewrite {run_dir})")
    return out


def _copy_run(src: Path, dst: Path) -> None:
    """Copy the run's own files (head pair, config.yaml, ...; not its report folders) into `dst`."""
    dst.mkdir(parents=True, exist_ok=True)
    for path in src.iterdir():
        if path.is_file() and not path.name.startswith("."):
            shutil.copy2(path, dst / path.name)


def support_warnings(spec: CalibrationSpec, *, n_real: int, n_fake: int) -> list[str]:
    """One line per target the validation rows cannot support: split-conformal with n rows and target A needs
    (n + 1) A >= 1, i.e. n >= 1/A - 1 rows of that class (else the cut sits past every validation row)."""
    kwargs = spec.fit_kwargs()
    out = []
    if kwargs.get("threshold_policy") == "target_fpr":
        out += _support("--threshold fpr", kwargs["target_fpr"], n_real, "reals", "the threshold sits above every one")
    if kwargs.get("band_policy") == "error":
        a = kwargs["band_target"]
        out += _support("--band error", a, n_real, "reals", "the band's top sits above every one")
        out += _support("--band error", a, n_fake, "fakes", "the band's bottom is 0: no fake is ever called real")
    return out


def _support(option: str, a: float, n: int, what: str, effect: str) -> list[str]:
    if (n + 1) * a >= 1 - 1e-12:
        return []
    need = math.ceil(1 / a - 1 - 1e-9)
    return [
        f"{option}:{a:g} needs at least {need} validation {what}, there are {n}: they support targets down to "
        f"{1 / (n + 1):.3g} only, so {effect}; give more validation rows"
    ]


def val_metrics(cal: Any, z: np.ndarray, y: np.ndarray) -> dict[str, float | None]:
    """VAL_METRICS (fractions) and ACC on covered rows of validation logits `z` under calibration `cal`."""
    from aigi.pipeline.metrics import brier, ece

    p = cal.probability(z)
    verdict = cal.verdict(p)
    covered = verdict >= 0
    eps = 1e-15
    return {
        "ece": ece(y, p),
        "brier": brier(y, p),
        "log_loss": float(-np.mean(y * np.log(np.clip(p, eps, 1)) + (1 - y) * np.log(np.clip(1 - p, eps, 1)))),
        "acc": float(((p >= cal.threshold) == (y == 1)).mean()),
        "fpr": float((verdict[y == 0] == 1).mean()) if (y == 0).any() else None,
        "tpr": float((verdict[y == 1] == 1).mean()) if (y == 1).any() else None,
        "coverage": float(covered.mean()),
        "acc_covered": float((verdict[covered] == y[covered]).mean()) if covered.any() else None,
    }
