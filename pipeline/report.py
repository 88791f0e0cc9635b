"""Write an evaluation's files: report.md (papers-style tables), metrics.csv, metrics.json, scores.parquet, plots."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

COLUMNS = (("n", "n"), ("acc", "ACC"), ("real_acc", "Real ACC"), ("fake_acc", "Fake ACC"), ("ap", "AP"), ("auc", "AUC"))


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, numpy scalars -> Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def metrics_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """One row per group plus a last `mean` row: group, n, n_real, n_fake, metrics (fractions), CI bounds, note."""
    rows = []
    for name, row in [*metrics["groups"].items(), ("mean", metrics["mean"])]:
        out: dict[str, Any] = {"group": name}
        out.update({k: row.get(k) for k in ("n", "n_real", "n_fake", "acc", "real_acc", "fake_acc", "ap", "auc")})
        for key, bounds in (row.get("ci") or {}).items():
            if isinstance(bounds, list):
                out[f"{key}_lo"], out[f"{key}_hi"] = bounds
        out["note"] = row.get("note", "")
        rows.append(out)
    table = pd.DataFrame(rows)
    return table.astype({c: "Int64" for c in ("n", "n_real", "n_fake")})


def _cell(row: Mapping[str, Any], key: str) -> str:
    value = row.get(key)
    if key == "n":
        return str(value)
    if value is None:
        return "–"
    text = f"{100 * value:.2f}"
    bounds = (row.get("ci") or {}).get(key)
    return f"{text} [{100 * bounds[0]:.2f}, {100 * bounds[1]:.2f}]" if bounds else text


def markdown(metrics: Mapping[str, Any], *, title: str, context: Sequence[str] = (), plots: Sequence[str] = ()) -> str:
    """The report: a header, the settings, one table (percentages, 2 decimals; mean row last), notes, plots."""
    by = metrics.get("by", "group")
    lines = [f"# {title}", "", *[f"- {c}" for c in context]]
    lines += [
        f"- threshold {metrics['threshold']:.4g}: a row is called fake when its score (P(fake)) >= the threshold",
        f"- groups by `{by}`; values in %; AP/AUC are undefined (–) for a group with one class",
    ]
    pairing = metrics.get("reals") or {}
    if pairing.get("real_groups"):
        lines.append(
            f"- fake-only groups are measured against reals ({pairing['policy']}) from "
            f"{', '.join(f'`{g}`' for g in pairing['real_groups'])} ({pairing['n_real_pool']} reals); "
            "those real-only groups are not listed"
        )
    if metrics["mean"].get("ci"):
        lines.append(f"- [lo, hi]: 95% bootstrap interval ({metrics['mean']['ci']['n_boot']} resamplings)")
    header = ["Group" if by == "group" else by.capitalize(), *[label for _, label in COLUMNS]]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * len(COLUMNS)]
    for name, row in metrics["groups"].items():
        lines.append("| " + " | ".join([str(name), *[_cell(row, k) for k, _ in COLUMNS]]) + " |")
    mean = metrics["mean"]
    lines.append("| **Mean** | " + " | ".join(f"**{_cell(mean, k)}**" for k, _ in COLUMNS) + " |")
    notes = [(n, r["note"]) for n, r in [*metrics["groups"].items(), ("Mean", mean)] if r.get("note")]
    if notes:
        lines += ["", "Notes:", *[f"- {name}: {text}" for name, text in notes]]
    if plots:
        lines += ["", *[f"![{Path(p).stem}]({Path(p).name})" for p in plots]]
    return "\n".join(lines) + "\n"


def write_report(
    out_dir: str | Path,
    *,
    metrics: Mapping[str, Any],
    scores: pd.DataFrame,
    title: str,
    context: Sequence[str] = (),
    index: Mapping[str, np.ndarray] | None = None,
    plots: bool = True,
) -> dict[str, Path]:
    """Write report.md, metrics.csv, metrics.json, scores.parquet and (with `plots`) the PNGs into `out_dir`.

    Args:
        out_dir: the report directory (created).
        metrics: `pipeline.evaluate.summarize`'s result.
        scores: one row per scored row: image_id, view, label, group columns, score.
        title: the report's heading.
        context: bullet lines describing the run (head, cache, split).
        index: group name -> positional row indices into `scores` (`evaluate.assemble_groups`); by default the
            rows are grouped by `metrics["by"]` as they are.
        plots: also draw roc.png, acc_by_group.png and score_hist.png.

    Returns:
        name -> path of every file written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean = _clean(dict(metrics))
    files = {"metrics.json": out / "metrics.json", "metrics.csv": out / "metrics.csv"}
    files["metrics.json"].write_text(json.dumps(clean, indent=2) + "\n", encoding="utf-8")
    metrics_table(clean).to_csv(files["metrics.csv"], index=False)
    files["scores.parquet"] = out / "scores.parquet"
    scores.to_parquet(files["scores.parquet"], index=False)
    pngs: list[Path] = []
    if plots:
        from pipeline.plots import draw_all

        if index is None:
            keys = scores[clean["by"]].astype(str).to_numpy()
            index = {g: np.flatnonzero(keys == g) for g in clean["groups"]}
        pngs = draw_all(out, metrics=clean, scores=scores, index=index)
        files.update((p.name, p) for p in pngs)
    files["report.md"] = out / "report.md"
    text = markdown(clean, title=title, context=context, plots=[p.name for p in pngs])
    files["report.md"].write_text(text, encoding="utf-8")
    return files
