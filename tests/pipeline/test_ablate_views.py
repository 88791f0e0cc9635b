"""`aigi ablate` with views: training on several views (augmentation) and evaluating on held-out views."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from aigi.cli import main
from aigi.pipeline.ablate import AblateOptions, expand, run_ablation
from tests.pipeline.test_ablate import STEPS
from tests.pipeline.test_robustness import VIEWS, make_view_cache


def _ablation(store: Path, **extra) -> dict:
    return {
        "head": {"name": "linear", "inputs": ["f"]},
        "fit": {"optimizer": "adam", "lr": 0.05, "epochs": 5, "batch_size": 16, "device": "cpu"},
        "data": {"caches": {"syn": str(store)}, "where": {"view": "orig"}},
        "grid": {"data.where.view": [["orig"], ["orig", "jpeg:75"]]},
        "seeds": [0],
        **extra,
    }


def test_views_as_augmentation_and_held_out_views(tmp_path: Path) -> None:
    store = make_view_cache(tmp_path / "cache")
    plan = expand(_ablation(store, eval_views=list(VIEWS)))
    assert plan.eval_views == list(VIEWS) and len(plan.runs) == 2
    out = tmp_path / "abl"
    run_ablation(plan, out, STEPS, AblateOptions(jobs=1, progress=False))
    table = pd.read_parquet(out / "results.parquet")
    for _, row in table.iterrows():
        result = json.loads((out / "runs" / row["run_id"] / "result.json").read_text())
        for view in VIEWS:
            # each held-out number equals a lone `aigi eval --where view=V` of the same run
            rep = tmp_path / f"{row['run_id']}-{view}"
            assert main(["eval", str(out / "runs" / row["run_id"]), "--where", f"view={view}", "-o", str(rep)]) == 0
            lone = json.loads((rep / "metrics.json").read_text())["mean"]
            assert row[f"@{view}/acc"] == pytest.approx(lone["acc"])
            want = lone["tpr_at_1pct_fpr"]  # None in JSON where the reals are too few; NaN in the parquet table
            assert row[f"@{view}/tpr_at_1pct_fpr"] == pytest.approx(float("nan") if want is None else want, nan_ok=True)
        assert result["train_views"] in (["orig"], ["orig", "jpeg:75"])
    augmented = table[table["setting"].str.contains("jpeg")].iloc[0]
    plain = table[~table["setting"].str.contains("jpeg")].iloc[0]
    assert augmented["train_rows"] == 2 * plain["train_rows"]
    summary = (out / "summary.md").read_text()
    assert "@jpeg:75/acc" in summary and "@resize:0.5/tpr at 1pct fpr" in summary
    # asking for views changes the run ids (finished runs without view metrics are not reused)
    assert {r.run_id for r in plan.runs}.isdisjoint({r.run_id for r in expand(_ablation(store)).runs})


def test_bad_eval_views_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="eval_views"):
        expand(_ablation(tmp_path / "none", eval_views=["jpeg:0"]))
    with pytest.raises(ValueError, match="eval_views"):
        expand(_ablation(tmp_path / "none", eval_views="orig"))
