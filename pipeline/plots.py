"""Every PNG figure (matplotlib Agg): an evaluation's ROC, ACC by group, score histograms; an ablation's bars; a
robustness sweep's metric-against-strength panels.

matplotlib is the optional `plots` extra: without it `can_draw()` is False and the stages write their tables and
reports without the figures, saying so in one line (`SKIPPED`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aigi.common.extras import available, require

MAX_HIST_PANELS = 16
SKIPPED = "plots skipped: matplotlib is not installed (pip install 'aigi[plots]')"
# robustness panels: the parameter value at which each kind of view is the original image, and the axis labels
IDENTITY = {"jpeg": 100.0, "webp": 100.0, "blur": 0.0, "resize": 1.0, "crop": 1.0}
AXIS = {"jpeg": "JPEG quality", "webp": "WebP quality", "blur": "blur sigma (px)", "resize": "resize factor",
        "crop": "central crop (fraction of each side)"}  # fmt: skip
PLOTTED = (("acc", "ACC"), ("auc", "AUC"), ("tpr_at_1pct_fpr", "TPR @ 1% FPR"))
MIN_FPR = 1e-3  # the ROC's log FPR axis starts here: the low-FPR region the field reports


def axis_floor(values: Sequence[float], *, step: float = 5.0, top: float = 100.0) -> float:
    """The lower end of a percent axis that shows the differences between `values`: 0 while the smallest is below
    80% of the axis (bars from zero), else a multiple of `step` a little below it (bars at 93-100 on a 0-100 axis
    all look the same); the plots say where such an axis starts."""
    finite = [v for v in values if v == v]
    if not finite or min(finite) < 0.8 * top:
        return 0.0
    low = min(finite)
    return max(0.0, step * math.floor((low - max(0.15 * (top - low), 1.0)) / step))


def can_draw() -> bool:
    """Whether matplotlib (the `plots` extra) is installed; without it the figures are skipped."""
    return available("matplotlib")


def pyplot():
    """matplotlib.pyplot on the Agg backend; `MissingExtra` (one line: pip install 'aigi[plots]') without it."""
    matplotlib = require("matplotlib", needed_for="drawing figures")
    matplotlib.use("Agg", force=True)
    return require("matplotlib.pyplot", needed_for="drawing figures")


def draw_all(
    out_dir: Path, *, metrics: Mapping[str, Any], scores: pd.DataFrame, index: Mapping[str, np.ndarray]
) -> list[Path]:
    """Draw roc.png, acc_by_group.png and score_hist.png into `out_dir`; return their paths."""
    labels = scores["label"].to_numpy().astype(np.int64)
    values = scores["score"].to_numpy().astype(np.float64)
    ranks = scores["logit"].to_numpy().astype(np.float64) if "logit" in scores.columns else values
    return [
        roc_plot(out_dir / "roc.png", labels=labels, scores=ranks, index=index),
        acc_plot(out_dir / "acc_by_group.png", metrics=metrics),
        hist_plot(
            out_dir / "score_hist.png", labels=labels, scores=values, index=index, threshold=metrics["threshold"]
        ),
    ]


def roc_plot(path: Path, *, labels: np.ndarray, scores: np.ndarray, index: Mapping[str, np.ndarray]) -> Path:
    """One ROC curve per group with both classes (AUC in the legend; `scores`: logits, so saturated probabilities do
    not tie), on a log FPR axis from 1e-3 with the 1% and 0.1% FPR lines, and the chance curve."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 6.0))
    colors = plt.get_cmap("tab20" if len(index) > 10 else "tab10")
    drawn = 0
    for i, (name, idx) in enumerate(index.items()):
        y, s = labels[idx], scores[idx]
        if np.unique(y).size < 2:
            continue
        fpr, tpr, _ = roc_curve(y, s)
        fpr = np.maximum(fpr, MIN_FPR / 2)  # FPR 0 sits at the axis' left edge
        label = f"{name} (AUC {100 * roc_auc_score(y, s):.2f}, {int((y == 0).sum())} reals)"
        ax.step(fpr, tpr, where="post", color=colors(i % colors.N), lw=1.6, label=label)
        drawn += 1
    grid = np.logspace(np.log10(MIN_FPR), 0, 100)
    ax.plot(grid, grid, ls="--", color="grey", lw=1, label="chance")
    for x, text in ((0.01, "1% FPR"), (0.001, "0.1% FPR")):
        ax.axvline(x, color="black", ls=":", lw=1)
        ax.text(x * 1.08, 0.02, text, rotation=90, fontsize="x-small", va="bottom")
    ax.set_xscale("log")
    ax.set(xlim=(MIN_FPR, 1), ylim=(0, 1.01), xlabel="false positive rate (reals called fake), log scale",
           ylabel="true positive rate")  # fmt: skip
    ax.set_title("ROC per group" if drawn else "ROC per group (no group has both classes)")
    ax.legend(loc="upper left", fontsize="small")
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


def acc_plot(path: Path, *, metrics: Mapping[str, Any]) -> Path:
    """Grouped bars per group (and the mean): ACC, real ACC, fake ACC in %, at the report's threshold."""
    plt = pyplot()
    rows = [*metrics["groups"].items(), ("mean", metrics["mean"])]
    keys = (("acc", "ACC"), ("real_acc", "real ACC"), ("fake_acc", "fake ACC"))
    x = np.arange(len(rows))
    width = 0.27
    fig, ax = plt.subplots(figsize=(max(6.4, 0.9 * len(rows) + 2), 4.8))
    all_heights = []
    for j, (key, label) in enumerate(keys):
        heights = [np.nan if r.get(key) is None else 100 * r[key] for _, r in rows]
        all_heights += heights
        bars = ax.bar(x + (j - 1) * width, heights, width, label=label)
        if key == "acc":
            ax.bar_label(bars, fmt="%.2f", fontsize="x-small", padding=2)
    ax.set_xticks(
        x, [name for name, _ in rows], rotation=30 if len(rows) > 6 else 0, ha="right" if len(rows) > 6 else "center"
    )
    lo = axis_floor(all_heights)
    ax.set(ylim=(lo, 100 + 0.12 * (100 - lo)), ylabel="accuracy (%)" + (f", axis from {lo:g}" if lo else ""))
    ax.set_title(f"Accuracy by {metrics.get('by', 'group')} at threshold {metrics['threshold']:.3g}")
    if lo < 50:
        ax.axhline(50, color="grey", ls=":", lw=1)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small", frameon=False)
    return _save(fig, path)


def hist_plot(
    path: Path, *, labels: np.ndarray, scores: np.ndarray, index: Mapping[str, np.ndarray], threshold: float
) -> Path:
    """Histograms of P(fake) for reals and fakes: all rows first (when there are several groups), then one panel per
    group (up to 15)."""
    plt = pyplot()
    groups = list(index.items())
    panels = groups[:1] if len(groups) == 1 else [("all rows", np.arange(labels.size)), *groups[: MAX_HIST_PANELS - 1]]
    panels = panels or [("all rows", np.arange(labels.size))]
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
    bins = np.linspace(0.0, 1.0, 41)
    for ax, (name, idx) in zip(axes.flat, panels, strict=False):
        y, s = labels[idx], scores[idx]
        ax.hist(s[y == 0], bins=bins, alpha=0.6, color="tab:blue", label=f"real ({int((y == 0).sum())})")
        ax.hist(s[y == 1], bins=bins, alpha=0.6, color="tab:red", label=f"fake ({int((y == 1).sum())})")
        ax.axvline(threshold, color="black", ls="--", lw=1)
        ax.set_title(str(name), fontsize="small")
        ax.set_xlabel("score P(fake)", fontsize="small")
        ax.set_ylabel("images", fontsize="small")
        ax.legend(fontsize="x-small", loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2, frameon=False)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(f"Score histograms by label (dashed: threshold {threshold:.3g})")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def ablation_plot(summary: Any, path: str | Path, *, metrics: Sequence[str] = ("acc", "ap", "auc")) -> Path:
    """Grouped bar chart (one group of bars per setting, one bar per metric) with ± std error bars, as PNG."""
    plt = pyplot()
    metrics = [m for m in metrics if f"{m}.mean" in summary.columns]
    n, k = len(summary), len(metrics)
    x = np.arange(n)
    width = 0.8 / max(k, 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * n * max(k, 1) * 0.5 + 2), 4.5))
    lows = []
    for i, m in enumerate(metrics):
        mean = 100 * summary[f"{m}.mean"].to_numpy(dtype=float)
        std = np.nan_to_num(100 * summary[f"{m}.std"].to_numpy(dtype=float))
        lows += list(mean - std)
        bars = ax.bar(x + (i - (k - 1) / 2) * width, mean, width, yerr=std, capsize=3,
                      label=m.upper().replace("_", " "))  # fmt: skip
        ax.bar_label(bars, fmt="%.2f", fontsize="xx-small", padding=2, rotation=90)
    lo = axis_floor(lows)  # an axis that shows the differences (99.89 and 99.22 look different), its start said
    ax.set_ylim(lo, 100 + 0.12 * (100 - lo))
    if lo < 50:
        ax.axhline(50, color="grey", ls=":", lw=1)
    ax.set_xticks(x, summary["setting"].tolist(), rotation=30, ha="right")
    ax.set_ylabel("test metric (%), mean ± std over seeds" + (f"; axis from {lo:g}" if lo else ""))
    ax.set_title("Ablation: mean over evaluation groups")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)
    return path


def strength_plot(table: pd.DataFrame, path: Path) -> Path:
    """One panel per view kind: ACC, AUC and TPR at 1% FPR against the view's parameter, from `original` (the
    unperturbed image, its own tick: not a JPEG of quality 100) to the strongest perturbation on the right."""
    plt = pyplot()
    kinds = [k for k in dict.fromkeys(table["kind"]) if k != "orig"] or ["orig"]
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.6 * len(kinds), 3.8), squeeze=False)
    orig = table[table["kind"] == "orig"]
    for ax, kind in zip(axes[0], kinds):
        part = table[table["kind"] == kind]
        weak_first = kind in ("jpeg", "webp", "resize", "crop")  # a higher value is a weaker perturbation
        part = part.sort_values("strength", ascending=not weak_first)
        if kind != "orig" and len(orig):
            part = pd.concat([orig.assign(strength=np.nan), part])
        ticks = ["original" if k == "orig" else f"{v:g}" for k, v in zip(part["kind"], part["strength"])]
        pos = np.arange(len(part))
        for key, label in PLOTTED:
            ax.plot(pos, 100 * part[key].astype(float), marker="o", label=label)
        lo = axis_floor([100 * float(v) for key, _ in PLOTTED for v in part[key] if v is not None])
        ax.set(xlabel=AXIS.get(kind, kind), ylabel="%" + (f" (axis from {lo:g})" if lo else ""),
               ylim=(lo, 100 + 0.05 * (100 - lo)), title=kind)  # fmt: skip
        ax.set_xticks(pos, ticks)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=3, frameon=False)
    fig.suptitle("metric against perturbation strength (stronger to the right)")
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, path)
