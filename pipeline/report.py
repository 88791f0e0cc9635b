"""Every table and report file: the one markdown table renderer; an evaluation's report.md (papers-style table),
metrics.csv, metrics.json, scores.parquet and plots; a robustness report (robustness.md / .csv / .json, flips.parquet,
robustness.png); an ablation's results.parquet, summary.md and summary.png. Figures are drawn by `plots`."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aigi.common.files import atomic_path, atomic_write
from aigi.pipeline.metrics import COVERAGE_METRICS, METRIC_LABELS, METRICS

LABELS = {"n": "n", **METRIC_LABELS}
COLUMNS = tuple((key, LABELS[key]) for key in ("n", *METRICS))


def report_columns(metrics: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The report's columns: every metric, plus coverage when the head abstains."""
    extra = tuple((k, LABELS[k]) for k in COVERAGE_METRICS if k in metrics["mean"])
    return COLUMNS + extra


SUMMARY_METRICS = ("acc", "ap", "auc", "real_acc", "tpr_at_1pct_fpr")  # an ablation summary's mean columns
GROUP_SUMMARY_METRICS = ("fake_acc", "ap")  # and its per-group columns
VIEW_SUMMARY_METRICS = ("acc", "auc", "tpr_at_1pct_fpr")  # and its per-view columns (@VIEW/METRIC)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, align: str = "") -> list[str]:
    """The lines of a markdown table: the header, the alignment row, one line per row (cells as `str` gives them).

    Args:
        header: the column titles.
        rows: the cells of each row.
        align: one letter per column, `l` (left) or `r` (right); missing letters are `l`.
    """
    marks = ["---:" if a == "r" else "---" for a in align.ljust(len(header), "l")[: len(header)]]
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "|".join(marks) + "|"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


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
    """One row per group plus a `mean` row (over groups) and a `pooled` row (every row once): group, n, n_real,
    n_fake, metrics (fractions), CI bounds, note."""
    rows = []
    extra = [("pooled", metrics["pooled"])] if "pooled" in metrics else []
    for name, row in [*metrics["groups"].items(), ("mean", metrics["mean"]), *extra]:
        out: dict[str, Any] = {"group": name}
        out.update({k: row.get(k) for k in ("n", "n_real", "n_fake", *METRICS)})
        out.update({k: row[k] for k in COVERAGE_METRICS if k in row})
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
        f"- groups by `{by}`; values in % (ECE, Brier and EER too); AP, AUC, TPR@FPR, EER and oracle ACC rank rows by "
        "their logit and are undefined (–) for a group with one class, TPR at FPR a also with fewer than 1/a reals; "
        "oracle ACC uses the best threshold for the rows themselves (an upper bound)",
        "- **Mean** averages each metric over the groups (the papers' tables); **Pooled** measures every row scored "
        "once, together (what `aigi eval --views` reports per view)",
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
    columns = report_columns(metrics)
    header = ["Group" if by == "group" else by.capitalize(), *[label for _, label in columns]]
    rows = [[str(name), *[_cell(row, k) for k, _ in columns]] for name, row in metrics["groups"].items()]
    mean = metrics["mean"]
    rows.append(["**Mean**", *[f"**{_cell(mean, k)}**" for k, _ in columns]])
    if "pooled" in metrics:
        rows.append(["Pooled", *[_cell(metrics["pooled"], k) for k, _ in columns]])
    lines += ["", *markdown_table(header, rows, align="l" + "r" * len(columns))]
    tail = [("Mean", mean), ("Pooled", metrics.get("pooled") or {})]
    notes = [(n, r["note"]) for n, r in [*metrics["groups"].items(), *tail] if r.get("note")]
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
        metrics: `pipeline.metrics.group_metrics`'s result.
        scores: one row per scored row: image_id, view, label, group columns, score.
        title: the report's heading.
        context: bullet lines describing the run (head, cache, split).
        index: group name -> positional row indices into `scores` (`metrics.assemble_groups`); by default the
            rows are grouped by `metrics["by"]` as they are.
        plots: also draw roc.png, acc_by_group.png and score_hist.png (skipped, with a note in report.md, when
            matplotlib is not installed).

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
    from aigi.pipeline.plots import SKIPPED, can_draw, draw_all

    if plots and not can_draw():
        context = [*context, SKIPPED]
    elif plots:
        if index is None:
            keys = scores[clean["by"]].astype(str).to_numpy()
            index = {g: np.flatnonzero(keys == g) for g in clean["groups"]}
        pngs = draw_all(out, metrics=clean, scores=scores, index=index)
        files.update((p.name, p) for p in pngs)
    files["report.md"] = out / "report.md"
    text = markdown(clean, title=title, context=context, plots=[p.name for p in pngs])
    files["report.md"].write_text(text, encoding="utf-8")
    from aigi.pipeline.html import eval_html

    files["report.html"] = out / "report.html"
    page = eval_html(clean, columns=report_columns(clean), title=title, context=context, text=text, pngs=pngs)
    atomic_write(files["report.html"], page)
    return files


def write_predict_report(out_dir: str | Path, table: pd.DataFrame, *, head: str) -> dict[str, Path]:
    """`aigi predict --report DIR`: scores.csv (every row), report.md (counts and the rows) and report.html (a
    gallery of thumbnails sortable by P(fake), verdicts marked) in `out_dir`."""
    from aigi.pipeline.html import predict_html

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    notes = [f"warning: {n}" for n in table.attrs.get("notes", [])]
    context = [f"head `{head}`", "P(fake) is calibrated with the head's stored calibration; verdicts use its "
               "threshold and abstain band (`unsure` inside it)", *notes]  # fmt: skip
    files = {"scores.csv": out / "scores.csv", "report.md": out / "report.md", "report.html": out / "report.html"}
    with atomic_path(files["scores.csv"]) as tmp:
        table.to_csv(tmp, index=False)
    counts = table["verdict"].replace("", "not scored").value_counts()
    cols = [c for c in ("path", "p_fake", "verdict", "error") if c in table.columns]
    rows = [[str(v) if not isinstance(v, float) else ("–" if v != v else f"{v:.4f}") for v in r]
            for r in table[cols].itertuples(index=False)]  # fmt: skip
    lines = [f"# Predictions of {Path(head).name}", "", *[f"- {c}" for c in context],
             f"- {len(table)} image(s): " + ", ".join(f"{n} {v}" for v, n in counts.items()), "",
             *markdown_table(cols, rows), "", "The gallery: [report.html](report.html)", ""]  # fmt: skip
    atomic_write(files["report.md"], "\n".join(lines))
    atomic_write(files["report.html"], predict_html(table, title=f"Predictions of {Path(head).name}", context=context))
    return files


# ----------------------------------------------------------------------------------------------------------------
# ablation tables


def ablation_table(results: Sequence[Mapping[str, Any]], *, grid_keys: Sequence[str] = ()) -> Any:
    """One row per run: run_id, setting, variant, seed, grid values, mean metrics, GROUP/metric, timings."""
    rows = []
    for r in results:
        row: dict[str, Any] = {k: r[k] for k in ("run_id", "setting", "variant", "seed")}
        for key in grid_keys:
            value = r["values"].get(key)
            row[key] = value if isinstance(value, int | float | str | bool) else json.dumps(value)
        mean = r["metrics"]["mean"]
        row.update({m: mean.get(m) for m in METRICS})
        for group, g in r["metrics"]["groups"].items():
            row.update({f"{group}/{m}": g.get(m) for m in METRICS})
        for view, v in (r.get("views") or {}).items():
            row.update({f"@{view}/{m}": v.get(m) for m in METRICS})
        row.update({k: r.get(k) for k in ("val_ap", "train_rows", "train_seconds", "seconds")})
        rows.append(row)
    table = pd.DataFrame(rows)
    metric_cols = [c for c in table.columns if c.split("/")[-1] in METRICS or c == "val_ap"]
    table[metric_cols] = table[metric_cols].astype("float64")
    return table


def _group_names(table: Any) -> list[str]:
    return list(dict.fromkeys(c.rsplit("/", 1)[0] for c in table.columns if "/" in c and not c.startswith("@")))


def _view_names(table: Any) -> list[str]:
    return list(dict.fromkeys(c.rsplit("/", 1)[0] for c in table.columns if c.startswith("@")))


def ablation_summary_columns(table: Any) -> list[str]:
    """The metric columns summary.md shows: mean ACC/AP/AUC/real ACC, then each group's fake ACC and AP."""
    cols = [m for m in SUMMARY_METRICS if m in table.columns]
    for group in _group_names(table):
        cols += [f"{group}/{m}" for m in GROUP_SUMMARY_METRICS if f"{group}/{m}" in table.columns]
    for view in _view_names(table):
        cols += [f"{view}/{m}" for m in VIEW_SUMMARY_METRICS if f"{view}/{m}" in table.columns]
    return cols


def ablation_summary(table: Any, *, sort_by: str) -> Any:
    """Mean and std (over seeds, ddof 1) of every summary metric per setting, best `sort_by` first."""
    if sort_by not in table.columns:
        known = [c for c in table.columns if c.split("/")[-1] in METRICS]
        raise ValueError(f"sort_by {sort_by!r} is not a metric of the results; choose one of {known}")
    cols = list(dict.fromkeys([*ablation_summary_columns(table), sort_by]))
    grouped = table.groupby("setting", sort=False)
    head = grouped.agg(variant=("variant", "first"), seeds=("seed", "count"))
    stats = {}
    for col in cols:
        stats[f"{col}.mean"] = grouped[col].mean()
        stats[f"{col}.std"] = grouped[col].std(ddof=1)
    out = pd.concat([head, pd.DataFrame(stats, index=head.index)], axis=1).reset_index()  # one frame, not 2k inserts
    return out.sort_values(f"{sort_by}.mean", ascending=False, kind="stable").reset_index(drop=True)


def _pct(mean: float, std: float) -> str:
    if mean != mean:  # NaN
        return "n/a"
    return f"{100 * mean:.2f}" if std != std else f"{100 * mean:.2f} ± {100 * std:.2f}"


def _metric_header(column: str) -> str:
    """`GROUP/fake_acc` -> `GROUP/fake acc`: spaces in the metric name only, never in the group (a model name)."""
    group, _, metric = column.rpartition("/")
    return f"{group}{'/' if group else ''}{metric.replace('_', ' ')}"


def ablation_markdown(summary: Any, *, sort_by: str, n_runs: int) -> str:
    """summary.md: one row per setting, metrics in percent as mean ± std over seeds."""
    cols = [c[: -len(".mean")] for c in summary.columns if c.endswith(".mean")]
    head = ["setting", "seeds", *[_metric_header(c) for c in cols]]
    lines = [
        "# Ablation summary",
        "",
        f"{len(summary)} settings, {n_runs} runs; metrics on the test split in percent, mean ± std over seeds "
        f"(sample std); sorted by {sort_by} (best first). Mean columns average over evaluation groups; "
        "GROUP/fake acc is the share of that group's fakes called fake at the run's threshold; @VIEW columns are the "
        "mean over groups on the test rows of that cached view.",
        "",
    ]
    rows = [
        [
            str(row["setting"]),
            str(int(row["seeds"])),
            *[_pct(float(row[f"{c}.mean"]), float(row[f"{c}.std"])) for c in cols],
        ]
        for _, row in summary.iterrows()
    ]
    return "\n".join([*lines, *markdown_table(head, rows, align="ll" + "r" * len(cols))]) + "\n"


def write_ablation_report(out: Path, *, table: Any, summary: Any, sort_by: str) -> dict[str, Path]:
    """Write an ablation's results.parquet, summary.md and summary.png atomically into `out` (no summary.png when
    matplotlib is not installed)."""
    from aigi.pipeline.plots import ablation_plot, can_draw

    files = {"results": out / "results.parquet", "summary": out / "summary.md", "plot": out / "summary.png"}
    with atomic_path(files["results"]) as tmp:
        table.to_parquet(tmp, index=False)
    atomic_write(files["summary"], ablation_markdown(summary, sort_by=sort_by, n_runs=len(table)))
    if not can_draw():
        del files["plot"]
        return files
    with atomic_path(files["plot"]) as tmp:
        ablation_plot(summary, tmp)
    return files


# ----------------------------------------------------------------------------------------------------------------
# robustness across views

ROBUSTNESS_COLUMNS = (("view", None), ("n", None), ("acc", "pooled ACC"), ("real_acc", "real ACC"),
                      ("fake_acc", "fake ACC"), ("auc", "pooled AUC"), ("tpr_at_1pct_fpr", "TPR@1%FPR"),
                      ("eer", "EER"), ("ece", "ECE"), ("coverage", "coverage"),
                      ("acc_covered", "ACC covered"), ("flip_rate", "flips vs orig"), ("real_to_fake", "reals -> fake"),
                      ("mean_abs_dp", "mean abs dP"))  # fmt: skip


def _view_cell(key: str, title: str | None, value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if title is None:
        return str(value)
    return f"{100 * value:.2f}"  # every metric in percent (mean |dP| in percentage points), as in report.md


def robustness_markdown(table: pd.DataFrame, context: Sequence[str]) -> str:
    """robustness.md: the settings, then one row per view (percentages except ECE and mean |dP|)."""
    cols = [(k, t) for k, t in ROBUSTNESS_COLUMNS if k in table.columns]
    rows = [[_view_cell(k, t, row.get(k)) for k, t in cols] for row in table.to_dict("records")]
    lines = ["# Robustness across views", "", *[f"- {c}" for c in context], ""]
    lines += markdown_table([t or k for k, t in cols], rows, align="l" + "r" * (len(cols) - 1))
    lines += ["", "Every value in percent (mean |dP| in percentage points); each view's metrics pool its rows (the "
              "**Pooled** row of `aigi eval`). ![robustness](robustness.png)", ""]  # fmt: skip
    return "\n".join(lines)


def write_robustness_report(
    out_dir: str | Path, *, table: pd.DataFrame, flips: pd.DataFrame, context: Sequence[str]
) -> dict[str, Path]:
    """Write robustness.csv, robustness.json, flips.parquet, robustness.png (with the `plots` extra) and robustness.md.

    Args:
        out_dir: the report directory (created).
        table: one row of metrics per view (`metrics.view_table`).
        flips: one row of verdicts per image.
        context: bullet lines describing the run (head, rows, calibration).

    Returns:
        name -> path of every file written.
    """
    from aigi.pipeline.plots import SKIPPED, can_draw, strength_plot

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {name: out / name for name in ("robustness.csv", "robustness.json", "flips.parquet")}
    table.to_csv(files["robustness.csv"], index=False)
    records = json.loads(table.to_json(orient="records"))
    files["robustness.json"].write_text(json.dumps({"views": records, "context": list(context)}, indent=2) + "\n")
    flips = flips.copy()
    flips.columns = [str(c) for c in flips.columns]
    flips.to_parquet(files["flips.parquet"], index=False)
    if can_draw():
        files["robustness.png"] = strength_plot(table, out / "robustness.png")
    else:
        context = [*context, SKIPPED]
    files["robustness.md"] = out / "robustness.md"
    files["robustness.md"].write_text(robustness_markdown(table, context), encoding="utf-8")
    return files
