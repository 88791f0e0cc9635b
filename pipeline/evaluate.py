"""The eval stage: score a split with a trained head, measure it per group (`pipeline.metrics`), write the report."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aigi.common.grammar import parse_threshold
from aigi.pipeline.config import RunConfig
from aigi.pipeline.metrics import REAL_POLICIES
from aigi.pipeline.scoring import SCORE_COLUMNS, ScoringRun


@dataclass(frozen=True)
class EvalOptions:
    """What `aigi eval` scores and how. None: the run's own value (`with_defaults` reads them, in one place).

    Attributes:
        split: the split value to score, or "all" for every row (None: the config's test split).
        by: the grouping column (None: the config's `eval.by`).
        threshold: a number, `val` / `val_acc` or `fpr:A` (None: the head's stored threshold, else `eval.threshold`).
        reals: how fake-only groups get reals, one of `metrics.REAL_POLICIES` (None: `eval.reals`).
        bootstrap: resamplings for 95% intervals, 0 for none (None: `eval.bootstrap`).
        seed: the bootstrap's seed.
        where: `COLUMN=VALUE` row filters replacing the config's (e.g. view=jpeg:75).
        caches: `[ALIAS=]PATH` replacing the recorded caches (needed when the head records none).
        weights: `PATH` / `ALIAS=PATH` backbone weights for `tail_*` heads (they re-run the last blocks).
        plots: also draw the PNG plots (the ablation runner turns them off: they cost seconds per run).
    """

    split: str | None = None
    by: str | None = None
    threshold: str | float | None = None
    reals: str | None = None
    bootstrap: int | None = None
    seed: int = 0
    where: tuple[str, ...] = ()
    caches: tuple[str, ...] = ()
    weights: tuple[str, ...] = ()
    plots: bool = True

    def __post_init__(self) -> None:
        for name in ("where", "caches", "weights"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.bootstrap is not None and self.bootstrap < 0:
            raise ValueError(f"--bootstrap {self.bootstrap}: the number of resamplings must be >= 0 (0: no intervals)")
        if self.reals is not None and self.reals not in REAL_POLICIES:
            raise ValueError(f"--reals {self.reals}: choose one of {', '.join(REAL_POLICIES)}")
        if self.threshold is not None:
            parse_threshold(self.threshold)

    def with_defaults(self, cfg: RunConfig, *, stored_threshold: bool) -> EvalOptions:
        """These options with every None replaced by the run's value; `threshold` stays None only when the head
        holds a stored threshold (`aigi calibrate`, or a `calibration:` section at training) and none was asked."""
        threshold = self.threshold
        if threshold is None and not stored_threshold:
            threshold = cfg.eval.threshold
        return dataclasses.replace(
            self,
            split=cfg.data.test if self.split is None else self.split,
            by=self.by or cfg.eval.by,
            threshold=threshold,
            reals=self.reals or cfg.eval.reals,
            bootstrap=cfg.eval.bootstrap if self.bootstrap is None else self.bootstrap,
        )


@dataclass(frozen=True)
class EvalResult:
    """What `evaluate_run` measured and wrote.

    Attributes:
        metrics: metrics.json's content (groups, mean row, threshold and where it came from, how rows were held).
        out_dir: the report directory.
        files: name -> path of every file written.
    """

    metrics: dict[str, Any]
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)


def evaluate_run(
    run_dir: str | Path,
    out_dir: str | Path,
    options: EvalOptions = EvalOptions(),
    *,
    config: RunConfig | None = None,
    rows: Any = None,
) -> EvalResult:
    """Score one split with a trained head and write report.md, metrics.csv / .json, scores.parquet and plots.

    Decision rule: a row is called fake when its score (P(fake)) >= the threshold. Groups (`options.by`) holding
    only fakes are measured against reals as `options.reals` says (`metrics.group_metrics`).

    Args:
        run_dir: a directory written by `aigi train` (or `aigi head import-*`).
        out_dir: the report directory.
        options: what to score and how (`EvalOptions`).
        config: the run's `RunConfig` when the caller holds it (the ablation runner); default: read from RUN_DIR.
        rows: a `pipeline.rows.RowStore` the caller keeps for several runs (the ablation runner), or None.
    """
    from aigi import heads
    from aigi.pipeline.metrics import assemble_groups, group_metrics
    from aigi.pipeline.report import write_report
    from aigi.pipeline.scoring import open_run, pick_threshold, score_rows, split_rows

    run = open_run(run_dir, caches=options.caches, where=options.where, weights=options.weights, config=config,
                   trained=True, rows=rows)  # fmt: skip
    cfg, info = run.config, run.info
    cal = heads.calibration_of(info)
    opts = options.with_defaults(cfg, stored_threshold=bool(info.get("calibration")))
    fs = split_rows(run, opts.split)
    frame = score_rows(run, fs, columns=(*SCORE_COLUMNS, opts.by))
    if opts.threshold is None:
        thr, thr_how = cal.threshold, f"stored with the head ({cal.threshold_policy}, calibration {cal.method})"
    else:
        thr, thr_how = pick_threshold(run, parse_threshold(opts.threshold))
    metrics = group_metrics(
        frame,
        by=opts.by,
        threshold=float(thr),
        reals=opts.reals,
        bootstrap=opts.bootstrap,
        seed=opts.seed,
        verdicts=frame["verdict"].to_numpy() if cal.band is not None else None,
    )
    metrics["threshold_source"] = thr_how
    metrics["rows_held"] = getattr(fs, "held", "")
    index, _, _ = assemble_groups(frame, by=opts.by, reals=opts.reals)
    files = write_report(out_dir, metrics=metrics, scores=frame, title=f"Evaluation of {run.run_dir.name}",
                         context=_context(run, opts, thr_how, cal), index=index, plots=opts.plots)  # fmt: skip
    return EvalResult(metrics=metrics, out_dir=Path(out_dir), files=files)


def _context(run: ScoringRun, opts: EvalOptions, thr_how: str, cal: Any) -> list[str]:
    """The report's header lines: head, caches, rows, threshold, how scores are made, warnings."""
    data = run.config.data
    rows = "all" if opts.split == "all" else f"{data.split_column} == {opts.split}"
    return [
        f"head `{run.info['name']}` from `{run.run_dir}` on inputs {', '.join(f'`{i}`' for i in run.inputs)}",
        *[f"cache `{a}`: `{c.path}` (fingerprint {c.fingerprint[:12]})" for a, c in run.caches.items()],
        f"rows: {rows}, filters {dict(data.where)}; threshold: {thr_how}",
        f"scores: P(fake) = {calibration_text(cal)}; ranking metrics read the logit",
        *[f"warning: {n}" for n in run.notes],
    ]


def calibration_text(cal: Any) -> str:
    """How the head's stored calibration maps logits to P(fake), for the report's header."""
    text = {
        "none": "sigmoid(logit)",
        "temperature": f"sigmoid(logit / {cal.temperature:.4g}) (temperature scaling)",
        "platt": f"sigmoid({cal.slope:.4g} x logit + {cal.bias:.4g}) (Platt scaling)",
    }[cal.method]
    if cal.band is not None:
        text += f"; unsure when {cal.band[0]:.4g} < P(fake) < {cal.band[1]:.4g} ({cal.band_policy} band)"
    return text
