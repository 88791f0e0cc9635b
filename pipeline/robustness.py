"""Robustness of a head across cached views: per-view metrics, verdict flips against `orig`, metric-vs-strength plot."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aigi.cli._options import add_weights_argument  # TEMPORARY until the command line moves to aigi/cli

ROBUSTNESS_HELP = """\
Scores the same images under every requested view (rows of the cache keyed by (image_id, view), written by
`aigi extract --views orig,jpeg:75,resize:0.5 ...`) with the head's stored calibration and threshold (see
`aigi calibrate`), and writes to REPORT_DIR:
  robustness.md / .csv / .json  per view: rows, ACC, real ACC, fake ACC, AUC, TPR at 1% FPR, ECE, coverage and
                                ACC on covered rows (heads with an abstain band), and against `orig`: the share of
                                images whose verdict flips, of reals that become fake, and the mean |change| of P(fake)
  flips.parquet                 one row per image: its verdict under every view
  robustness.png                ACC, AUC and TPR at 1% FPR against perturbation strength, one panel per kind
                                (JPEG/WebP quality, blur sigma, resize and crop factors; `orig` is the unperturbed end)
"""


def view_strength(view: str) -> tuple[str, float | None]:
    """("jpeg", 75.0) for `jpeg:75`; ("orig", None) for `orig`."""
    kind, _, arg = view.partition(":")
    return kind, (float(arg) if arg else None)


def view_metrics(labels: np.ndarray, probs: np.ndarray, verdicts: np.ndarray, *, threshold: float) -> dict[str, Any]:
    """Every metric of `pipeline.metrics` for one view's rows, plus coverage and ACC on the covered rows."""
    from aigi.pipeline.metrics import binary_metrics, coverage_metrics

    return {**binary_metrics(labels, probs, threshold=threshold), **coverage_metrics(labels, verdicts)}


def flip_stats(flips: pd.DataFrame, probs: pd.DataFrame, view: str, *, reference: str = "orig") -> dict[str, Any]:
    """Verdict changes of `view` against `reference` over the images scored under both."""
    both = flips[[reference, view]].dropna().index
    if len(both) == 0:
        return {"paired": 0, "flip_rate": None, "real_to_fake": None, "mean_abs_dp": None}
    ref, new = flips.loc[both, reference], flips.loc[both, view]
    reals = flips.loc[both, "label"] == 0
    real_ok = reals & (ref == 0)
    return {
        "paired": int(len(both)),
        "flip_rate": float((ref != new).mean()),
        "real_to_fake": float((new[real_ok] == 1).mean()) if real_ok.any() else None,
        "mean_abs_dp": float((probs.loc[both, view] - probs.loc[both, reference]).abs().mean()),
    }


def robustness_table(frame: pd.DataFrame, cal: Any, *, views: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row of metrics per view, one row of verdicts per image) from rows with image_id, view, label, prob."""
    frame = frame.assign(verdict=cal.verdict(frame["prob"].to_numpy()))
    flips = frame.pivot_table(index="image_id", columns="view", values="verdict", aggfunc="first")
    probs = frame.pivot_table(index="image_id", columns="view", values="prob", aggfunc="first")
    flips["label"] = frame.groupby("image_id")["label"].first()
    rows = []
    for view in views:
        part = frame[frame["view"] == view]
        m = view_metrics(part["label"].to_numpy().astype(np.int64), part["prob"].to_numpy(),
                         part["verdict"].to_numpy(), threshold=cal.threshold)  # fmt: skip
        kind, value = view_strength(view)
        row = {"view": view, "kind": kind, "strength": value, **m}
        if view != "orig" and "orig" in views:
            row.update(flip_stats(flips, probs, view))
        rows.append(row)
    return pd.DataFrame(rows), flips.reset_index()


def _markdown(table: pd.DataFrame, context: Sequence[str]) -> str:
    cols = [("view", None), ("n", None), ("acc", "ACC"), ("real_acc", "real ACC"), ("fake_acc", "fake ACC"),
            ("auc", "AUC"), ("tpr_at_1pct_fpr", "TPR@1%FPR"), ("ece", "ECE"), ("coverage", "coverage"),
            ("acc_covered", "ACC covered"), ("flip_rate", "flips vs orig"), ("real_to_fake", "reals -> fake"),
            ("mean_abs_dp", "mean abs dP")]  # fmt: skip
    cols = [(k, t) for k, t in cols if k in table.columns]
    head = "| " + " | ".join(t or k for k, t in cols) + " |"
    lines = ["# Robustness across views", "", *[f"- {c}" for c in context], "", head,
             "| " + " | ".join("---" for _ in cols) + " |"]  # fmt: skip
    for row in table.to_dict("records"):
        cells = []
        for k, t in cols:
            v = row.get(k)
            if v is None or (isinstance(v, float) and np.isnan(v)):
                cells.append("")
            elif t is None:
                cells.append(str(v))
            else:
                cells.append(f"{v:.4f}" if k in ("ece", "mean_abs_dp") else f"{100 * v:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Percentages except ECE and mean |dP|. ![robustness](robustness.png)", ""]
    return "\n".join(lines)


def score_views(
    run_dir: Path, *, views: Sequence[str], split: str | None, caches: Sequence[str] | None, weights: Sequence[str] = ()
) -> tuple[pd.DataFrame, Any, list[str]]:
    """Rows of `split` under every view with calibrated P(fake): (frame, calibration, context lines).
    `weights` (`PATH` / `ALIAS=PATH`): the backbone weights a `tail_*` head re-runs its last blocks with."""
    from aigi.extractors.views import canonical_view
    from aigi.pipeline.calibrate import calibrated
    from aigi.pipeline.config import override_caches, parse_config, to_dict
    from aigi.pipeline.rows import check_fingerprints, hold_choice, load_rows, open_caches, run_config
    from aigi.pipeline.tail import load_head

    views = [canonical_view(v) for v in views]
    head, info = load_head(run_dir, weights)
    raw = to_dict(run_config(run_dir, info))
    cfg = parse_config(override_caches(raw, list(caches)) if caches else raw, source=f"{run_dir}/head.json")
    opened = open_caches(cfg.data.caches)
    notes = check_fingerprints(info, opened, run_dir=run_dir)
    split = cfg.data.test if split is None else split
    where = {k: v for k, v in cfg.data.where.items() if k != "view"}
    where = (
        {**where, "view": list(views)}
        if split == "all"
        else {**where, "view": list(views), cfg.data.split_column: split}
    )
    hold = hold_choice(opened, cfg.data, inputs=list(info["inputs"]), where=where)  # in memory or streamed
    fs = load_rows(opened, inputs=list(info["inputs"]), where=where, domains=cfg.data.domains, hold=hold)
    have = set(fs.column("view").astype(str)) if len(fs) else set()
    missing = [v for v in views if v not in have]
    if missing:
        present = sorted({str(v) for c in opened.values() for v in c.meta().get("view", [])})
        raise ValueError(
            f"no rows of view(s) {missing} in split {split!r} of the cache (views present: {present}); extract them "
            f"with `aigi extract ... --views {','.join(views)}` into the same cache"
        )
    frame = fs.meta[["image_id", "view", "label"]].reset_index(drop=True).copy()
    frame["label"] = frame["label"].astype(np.int64)
    frame["prob"], _, cal = calibrated(head, info, fs.features)
    context = [f"head `{info['name']}` from `{run_dir}`",
               f"rows: split {split}, views {', '.join(views)}, {len(fs)} rows {hold.why}",
               f"calibration: {cal.method}, threshold {cal.threshold:.6g} ({cal.threshold_policy})"
               + ("" if cal.band is None else f", unsure band ({cal.band[0]:.4g}, {cal.band[1]:.4g})"),
               *[f"warning: {n}" for n in notes]]  # fmt: skip
    return frame, cal, context


def robustness_run(
    run_dir: str | Path,
    *,
    views: Sequence[str],
    out_dir: str | Path,
    split: str | None = None,
    caches: Sequence[str] | None = None,
    weights: Sequence[str] = (),
) -> pd.DataFrame:
    """Score `views` of one split with a head and write the robustness report (see ROBUSTNESS_HELP)."""
    from aigi.extractors.views import canonical_view
    from aigi.pipeline.plots import SKIPPED, can_draw, strength_plot

    views = [canonical_view(v) for v in views]
    frame, cal, context = score_views(Path(run_dir), views=views, split=split, caches=caches, weights=weights)
    table, flips = robustness_table(frame, cal, views=views)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "robustness.csv", index=False)
    records = json.loads(table.to_json(orient="records"))
    (out / "robustness.json").write_text(json.dumps({"views": records, "context": context}, indent=2) + "\n")
    flips.columns = [str(c) for c in flips.columns]
    flips.to_parquet(out / "flips.parquet", index=False)
    if can_draw():
        strength_plot(table, out / "robustness.png")
    else:
        context = [*context, SKIPPED]
    (out / "robustness.md").write_text(_markdown(table, context), encoding="utf-8")
    return table


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `aigi robustness RUN_DIR --views V1,V2,... -o REPORT_DIR`."""
    p = subparsers.add_parser(
        "robustness",
        help="score the same images under every cached view: per-view metrics, verdict flips, strength plot",
        description=ROBUSTNESS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", type=Path, help="directory written by `aigi train`")
    add_view_arguments(p)
    add_weights_argument(p)
    p.add_argument("-o", "--out", type=Path, required=True, metavar="REPORT_DIR", help="where to write the report")
    p.set_defaults(func=run)


def add_view_arguments(p: argparse.ArgumentParser) -> None:
    """--views, --split and --cache of a robustness run."""
    p.add_argument("--views", required=True, help="comma-separated cached views, e.g. orig,jpeg:75,resize:0.5")
    p.add_argument("--split", default=None, help="split to score, or `all` (default: the config's test split)")
    p.add_argument(
        "--cache", action="append", default=[], metavar="[ALIAS=]PATH", help="cache replacing the recorded one"
    )


def run(args: argparse.Namespace) -> int:
    """Entry point of `aigi robustness`."""
    from aigi.extractors.views import parse_views
    from aigi.pipeline.plots import SKIPPED, can_draw

    table = robustness_run(args.run_dir, views=parse_views(args.views), out_dir=args.out, split=args.split,
                           caches=args.cache or None, weights=args.weights)  # fmt: skip
    for row in table.to_dict("records"):
        flips = (
            ""
            if row.get("flip_rate") is None or pd.isna(row.get("flip_rate"))
            else f", flips {100 * row['flip_rate']:.1f}%"
        )
        auc = "n/a" if row["auc"] is None or pd.isna(row["auc"]) else f"{100 * row['auc']:.2f}"
        print(f"{row['view']}: ACC {100 * row['acc']:.2f}, AUC {auc}{flips}")
    print(f"robustness: {len(table)} view(s) -> {args.out}/robustness.md")
    if not can_draw():
        print(SKIPPED, file=sys.stderr)
    return 0
