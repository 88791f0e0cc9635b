"""Scoring with a trained head, the one path: fingerprint check -> logit -> calibration -> P(fake) -> verdict.

`score_features` is the only function that turns features into scores: the head's raw logit (float64, what every
ranking metric reads), the calibrated P(fake) under the head's stored calibration, and the verdict with the stored
threshold and band (a row whose logit is NaN/inf gets the verdict `invalid`: reported, never called real). Every path
calls it: `aigi predict` on images and on cached rows (in memory or streamed, `tail_*` heads included), the Python API
(`aigi.predict_images`), `aigi eval`, `aigi calibrate`, `aigi eval --views` (`aigi robustness`) and `aigi ablate`
through eval. The features reach it only after their fingerprint matched the head's (`open_run` for a run's caches,
`check_cache` for one cache, `pipeline.predict` for live extraction).

A run is opened once (`open_run`: its head, the config it was trained with and `--cache` / `--where` replacements
applied, its caches checked against the recorded fingerprints); thresholds are picked on its validation rows
(`pick_threshold`).
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

DEMO_MARK = "[aigi demo head]"  # opens the run config's description of the heads `aigi demo` trains
SCORE_COLUMNS = ("image_id", "view", "label", "source", "domain", "pair_id", "split", "path")


@dataclass(frozen=True)
class Scored:
    """Rows scored by `score_features`.

    Attributes:
        logit: the head's raw logit per row, float64 (ranking metrics read it: no ties where P(fake) saturates).
        p_fake: the calibrated P(fake) (NaN where the logit is NaN/inf).
        verdict: int8 per row: 1 fake, 0 real, -1 unsure (inside the abstain band), -2 invalid (NaN/inf features).
        calibration: the head's stored calibration (`heads.Calibration`).
    """

    logit: np.ndarray
    p_fake: np.ndarray
    verdict: np.ndarray
    calibration: Any

    @property
    def invalid(self) -> np.ndarray:
        """Rows whose logit is NaN/inf (their features are): not scored."""
        return ~np.isfinite(self.logit)

    def verdict_names(self) -> np.ndarray:
        """`fake` / `real` / `unsure` per row, "" for an invalid row (its `error` says why)."""
        from aigi.heads.calibration import INVALID, VERDICTS

        return np.array(["" if v == INVALID else VERDICTS[int(v)] for v in self.verdict], dtype=object)


NAN_FEATURES = "NaN/inf in the features: not scored (re-extract this image; `aigi cache verify` finds such rows)"


def score_features(head: Any, info: Mapping[str, Any], features: Any) -> Scored:
    """The one scoring path: logit -> stored calibration -> P(fake) -> verdict with the stored threshold and band.

    Args:
        head: the head (`nn.Module`; a `tail_*` head with its frozen tail).
        info: its head.json content (the calibration is read from it, checked).
        features: name -> [N, ...] arrays, or any `Rows` (`common.rows`: in memory or streamed).
    """
    from aigi import heads

    cal = heads.calibration_of(dict(info))
    z = heads.logits(head, features)
    with np.errstate(invalid="ignore", over="ignore"):
        p = cal.probability(z)
    p[~np.isfinite(z)] = np.nan
    return Scored(logit=z, p_fake=p, verdict=cal.verdict(p), calibration=cal)


def is_demo_head(info: Mapping[str, Any]) -> bool:
    """Whether head.json says the head was trained by `aigi demo` (its run config's description opens with
    DEMO_MARK)."""
    description = str(((info.get("run_config") or {}).get("description")) or "")
    return description.startswith(DEMO_MARK)


def check_cache(info: Mapping[str, Any], store: Any, *, head_dir: str | Path) -> list[str]:
    """Refuse a cache whose fingerprint differs from the one the head was trained on (as `aigi eval` does); return
    warnings for a cache that cannot be checked."""
    from aigi.pipeline.rows import check_fingerprints

    names = {str(i).rpartition("/")[2] for i in info.get("inputs") or []}
    owners = [a for a, spec in (info.get("extractor_spec") or {}).items() if names <= set(spec.get("features", ()))]
    return check_fingerprints(info, {owners[0] if len(owners) == 1 else "cache": store}, run_dir=Path(head_dir))


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


def score_rows(run: ScoringRun, fs: Any, *, columns: Sequence[str] = SCORE_COLUMNS) -> pd.DataFrame:
    """Rows (their `columns` present in the meta) with the raw `logit`, the calibrated P(fake) (`score`) and the
    verdict (1 fake, 0 real, -1 unsure, -2 invalid), from `score_features`."""
    cols = [c for c in dict.fromkeys(columns) if c in fs.meta.columns]
    frame = fs.meta[cols].reset_index(drop=True).copy()
    frame["label"] = frame["label"].astype(np.int64)
    scored = score_features(run.head, run.info, fs)
    frame["logit"], frame["score"], frame["verdict"] = scored.logit, scored.p_fake, scored.verdict
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
    cal = heads.calibration_of(run.info)
    probs = cal.probability(z)
    if rule.policy == "target_fpr":
        return conformal_high(probs[labels == 0], rule.value), f"target FPR {rule.value:g} on val ({how})"
    return calibrate_threshold(labels, probs, logits=cal.calibrated_logits(z)), f"calibrated on val ({how})"
