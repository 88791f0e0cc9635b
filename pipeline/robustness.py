"""The robustness stage (`aigi eval --views`, alias `aigi robustness`): score the same images under several cached
views, measure each view and the verdict flips against `orig` (`metrics.view_table`), write the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class RobustnessOptions:
    """Which views of which rows `aigi eval --views` scores.

    Attributes:
        views: the cached views (`orig`, `jpeg:75`, `resize:0.5`, ...); written as `extractors.views` spells them.
        split: the split value to score, or "all" (None: the config's test split).
        caches: `[ALIAS=]PATH` replacing the recorded caches.
        weights: `PATH` / `ALIAS=PATH` backbone weights for `tail_*` heads (they re-run the last blocks).
    """

    views: tuple[str, ...]
    split: str | None = None
    caches: tuple[str, ...] = ()
    weights: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        from aigi.extractors.views import canonical_view

        object.__setattr__(self, "views", tuple(canonical_view(v) for v in self.views))
        for name in ("caches", "weights"):
            object.__setattr__(self, name, tuple(getattr(self, name)))


@dataclass(frozen=True)
class RobustnessResult:
    """What `robustness_run` measured and wrote.

    Attributes:
        table: one row of metrics per view (robustness.csv).
        flips: one row of verdicts per image under every view (flips.parquet).
        context: the report's header lines.
        out_dir: the report directory.
        files: name -> path of every file written.
    """

    table: pd.DataFrame
    flips: pd.DataFrame
    context: list[str]
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)


def score_views(run_dir: str | Path, options: RobustnessOptions) -> tuple[pd.DataFrame, Any, list[str]]:
    """Rows of the split under every view, scored: (image_id, view, label, prob, verdict frame; the head's
    calibration; the report's header lines)."""
    from aigi.pipeline.rows import select
    from aigi.pipeline.scoring import open_run, score_features

    run = open_run(run_dir, caches=options.caches, weights=options.weights)
    views, data = list(options.views), run.config.data
    split = data.test if options.split is None else options.split
    where = {k: v for k, v in data.where.items() if k != "view"}
    where = {**where, "view": views} if split == "all" else {**where, "view": views, data.split_column: split}
    fs = select(run.caches, data, inputs=run.inputs, where=where)  # in memory or streamed
    have = set(fs.column("view").astype(str)) if len(fs) else set()
    missing = [v for v in views if v not in have]
    if missing:
        present = sorted({str(v) for c in run.caches.values() for v in c.meta().get("view", [])})
        raise ValueError(
            f"no rows of view(s) {missing} in split {split!r} of the cache (views present: {present}); extract them "
            f"with `aigi extract ... --views {','.join(views)}` into the same cache"
        )
    frame = fs.meta[["image_id", "view", "label"]].reset_index(drop=True).copy()
    frame["label"] = frame["label"].astype(np.int64)
    scored = score_features(run.head, run.info, fs)
    frame["logit"], frame["prob"], frame["verdict"] = scored.logit, scored.p_fake, scored.verdict
    cal = scored.calibration
    context = [f"head `{run.info['name']}` from `{run.run_dir}`",
               f"rows: split {split}, views {', '.join(views)}, {len(fs)} rows {fs.held}",
               f"calibration: {cal.method}, threshold {cal.threshold:.6g} ({cal.threshold_policy})"
               + ("" if cal.band is None else f", unsure band ({cal.band[0]:.4g}, {cal.band[1]:.4g})"),
               *[f"warning: {n}" for n in run.notes]]  # fmt: skip
    return frame, cal, context


def robustness_run(run_dir: str | Path, out_dir: str | Path, options: RobustnessOptions) -> RobustnessResult:
    """Score `options.views` of one split with a head's stored calibration and threshold, and write
    robustness.md / .csv / .json, flips.parquet and robustness.png (with the `plots` extra) to `out_dir`."""
    from aigi.pipeline.metrics import view_table
    from aigi.pipeline.report import write_robustness_report

    frame, cal, context = score_views(run_dir, options)
    table, flips = view_table(frame, views=options.views, threshold=cal.threshold)
    files = write_robustness_report(out_dir, table=table, flips=flips, context=context)
    return RobustnessResult(table=table, flips=flips, context=context, out_dir=Path(out_dir), files=files)
