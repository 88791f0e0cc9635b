"""Scoring with a trained head: rows -> logits -> calibrated P(fake) -> verdict.

A run is opened once (`open_run`: its head, the config it was trained with and `--cache` / `--where` replacements
applied, its caches checked against the recorded fingerprints); its rows are scored under the head's stored
calibration (`calibrated`, `score_rows`); thresholds are picked on its validation rows (`pick_threshold`). `aigi eval`,
`aigi calibrate` and `aigi eval --views` (`aigi robustness`) use these side by side, and `aigi ablate` through eval.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aigi.common.grammar import ThresholdRule
from aigi.pipeline.config import RunConfig

SCORE_COLUMNS = ("image_id", "view", "label", "source", "domain", "pair_id", "split", "path")


@dataclass(frozen=True)
class ScoringRun:
    """A trained run opened for scoring.

    Attributes:
        run_dir: the run directory.
        head: the head (`nn.Module`), with its frozen tail for `tail_*` heads.
        info: its head.json content.
        config: the run config it was trained with, with the caller's replacements.
        caches: alias -> opened `cache.Cache`, fingerprints checked.
        notes: warnings of the fingerprint check (caches that could not be checked).
        rows: caches and row selections the caller keeps for several runs (`pipeline.rows.RowStore`), or None.
    """

    run_dir: Path
    head: Any
    info: dict[str, Any]
    config: RunConfig
    caches: dict[str, Any]
    notes: tuple[str, ...] = ()
    rows: Any = None

    @property
    def inputs(self) -> list[str]:
        """The feature names the head reads."""
        return list(self.info["inputs"])


def open_run(
    run_dir: str | Path,
    *,
    caches: Sequence[str] = (),
    where: Sequence[str] = (),
    weights: Sequence[str] = (),
    config: RunConfig | None = None,
    trained: bool = False,
    rows: Any = None,
) -> ScoringRun:
    """Load a run's head, its config (with replacements) and its caches (fingerprints checked).

    Args:
        run_dir: a directory written by `aigi train` (or `aigi head import-*`).
        caches: `[ALIAS=]PATH` replacing the recorded caches.
        where: `COLUMN=VALUE` row filters replacing the config's.
        weights: `PATH` / `ALIAS=PATH` backbone weights for `tail_*` heads (they re-run the last blocks).
        config: the run's config when the caller holds it (the ablation runner); default: read from RUN_DIR.
        trained: refuse an imported head with an untrained stage (its scores mean nothing).
        rows: a `pipeline.rows.RowStore` the caller keeps (the ablation runner): caches and rows read once.
    """
    from aigi.pipeline.rows import open_checked, run_config
    from aigi.pipeline.tail import load_head

    run_dir = Path(run_dir)
    head, info = load_head(run_dir, weights)
    if trained and info.get("untrained"):
        raise ValueError(
            f"{run_dir} is an imported head whose {info['untrained']} is untrained, so its scores mean nothing; "
            f"train stage 2 first: aigi train configs/gapl.yaml --init {run_dir} -o RUN_DIR, then evaluate RUN_DIR"
        )
    cfg = config_with(config if config is not None else run_config(run_dir, info), run_dir, caches=caches, where=where)
    opened, notes = open_checked(info, cfg.data.caches, run_dir=run_dir, store=rows)
    return ScoringRun(run_dir, head, dict(info), cfg, opened, tuple(notes), rows)


def config_with(cfg: RunConfig, run_dir: Path, *, caches: Sequence[str] = (), where: Sequence[str] = ()) -> RunConfig:
    """The run's config with `--cache` / `--where` replacements applied to its plain mapping, parsed once more."""
    if not (caches or where):
        return cfg
    from aigi.pipeline.config import apply_overrides, override_caches, parse_config, to_dict

    raw = to_dict(cfg)
    raw = override_caches(raw, list(caches)) if caches else raw
    raw = apply_overrides(raw, [f"data.where.{w}" for w in where])
    return parse_config(raw, source=f"{run_dir}/head.json")


def calibrated(head: Any, info: Mapping[str, Any], features: Any) -> tuple[np.ndarray, np.ndarray, Any]:
    """(calibrated P(fake), verdicts 0 / 1 / -1, the calibration) of rows under the head's stored calibration."""
    from aigi import heads

    cal = heads.calibration_of(dict(info))
    probs = cal.probability(heads.logits(head, features))
    return probs, cal.verdict(probs), cal


def score_rows(run: ScoringRun, fs: Any, *, columns: Sequence[str] = SCORE_COLUMNS) -> pd.DataFrame:
    """Rows (their `columns` present in the meta) with calibrated P(fake) (`score`) and verdict (0 / 1, -1 unsure)."""
    cols = [c for c in dict.fromkeys(columns) if c in fs.meta.columns]
    frame = fs.meta[cols].reset_index(drop=True).copy()
    frame["label"] = frame["label"].astype(np.int64)
    frame["score"], frame["verdict"], _ = calibrated(run.head, run.info, fs)
    return frame


def split_rows(run: ScoringRun, split: str) -> Any:
    """The rows of `split` (or every row for "all") with the run's filters; an error naming the splits present."""
    from aigi.pipeline.rows import check_where, select

    data = run.config.data
    rows_where = dict(data.where) if split == "all" else {**data.where, data.split_column: split}
    fs = select(run.caches, data, inputs=run.inputs, where=rows_where, store=run.rows)  # in memory or streamed
    if len(fs) == 0:
        check_where(run.caches, data.where, flag="--where")
        present = sorted({str(v) for c in run.caches.values() for v in c.meta().get(data.split_column, [])})
        raise ValueError(
            f"no rows of {list(data.caches.values())} match {rows_where} (values of "
            f"{data.split_column!r} present: {present}); pass --split NAME or --split all"
        )
    return fs


def validation_logits(run: ScoringRun) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """(raw logits, labels, where the rows came from) of the run's validation rows; (None, None, why) without any."""
    from aigi import heads
    from aigi.pipeline.rows import val_rows

    val, how = val_rows(run.caches, run.config.data, inputs=run.inputs, store=run.rows)
    if val is None or len(val) == 0:
        return None, None, how
    return heads.logits(run.head, val), val.labels.astype(np.int64), how


def pick_threshold(run: ScoringRun, rule: ThresholdRule) -> tuple[float, str]:
    """The threshold `rule` gives and where it came from: fixed, or picked on the validation rows scored with the
    stored calibration (`val`: the best balanced-accuracy cut; `fpr:A`: split-conformal on the validation reals)."""
    if rule.policy == "fixed":
        return float(rule.value), "fixed"
    from aigi import heads
    from aigi.heads.calibration import conformal_high
    from aigi.pipeline.metrics import calibrate_threshold

    z, labels, how = validation_logits(run)
    if z is None:
        raise ValueError(f"--threshold {rule}: the run has no validation rows ({how})")
    probs = heads.calibration_of(run.info).probability(z)
    if rule.policy == "target_fpr":
        return conformal_high(probs[labels == 0], rule.value), f"target FPR {rule.value:g} on val ({how})"
    return calibrate_threshold(labels, probs), f"calibrated on val ({how})"
