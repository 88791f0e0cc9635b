"""Evaluation and ablation plots and tables say what they show: labelled axes, no repeated panel, bars from zero,
model names kept whole."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from aigi.pipeline import plots, report  # noqa: E402


@pytest.fixture
def figures(monkeypatch):
    """The figures the plotting functions close (instead of closing them)."""
    kept = []
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    return kept


def _panels(fig) -> list:
    return [ax for ax in fig.axes if ax.axison]


def test_score_hist_with_one_group_has_one_panel_with_a_y_label(tmp_path, figures):
    labels, scores = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.6, 0.9])
    plots.hist_plot(tmp_path / "h.png", labels=labels, scores=scores, index={"vae:x": np.arange(4)}, threshold=0.5)
    panels = _panels(figures[-1])
    assert [ax.get_title() for ax in panels] == ["vae:x"]
    assert all(ax.get_ylabel() for ax in panels)


def test_score_hist_with_two_groups_shows_all_rows_first(tmp_path, figures):
    labels, scores = np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.2, 0.7])
    index = {"a": np.array([0, 1]), "b": np.array([2, 3])}
    plots.hist_plot(tmp_path / "h.png", labels=labels, scores=scores, index=index, threshold=0.5)
    panels = _panels(figures[-1])
    assert [ax.get_title() for ax in panels] == ["all rows", "a", "b"] and all(ax.get_ylabel() for ax in panels)


def _summary() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "setting": ["linear", "gating"],
            "variant": ["linear", "gating"],
            "seeds": [2, 2],
            "auc.mean": [0.92, 0.88],
            "auc.std": [0.01, 0.02],
            "acc.mean": [0.81, 0.74],
            "acc.std": [0.02, 0.03],
            "sr:small_sr-x4/fake_acc.mean": [0.7, 0.6],
            "sr:small_sr-x4/fake_acc.std": [0.05, 0.04],
        }
    )


def test_ablation_bars_start_at_zero(tmp_path, figures):
    plots.ablation_plot(_summary(), tmp_path / "s.png")
    (ax,) = _panels(figures[-1])
    assert ax.get_ylim()[0] == 0


def test_ablation_summary_headers_keep_model_names_whole():
    text = report.ablation_markdown(_summary(), sort_by="auc", n_runs=4)
    header = next(line for line in text.splitlines() if line.startswith("| setting"))
    assert "| sr:small_sr-x4/fake acc |" in header and "| auc |" in header
