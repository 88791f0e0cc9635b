"""`aigi eval` with a calibrated head: calibrated scores, the stored threshold, coverage, the low-FPR metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from aigi import cache, heads
from aigi.cli import main
from aigi.pipeline.metrics import brier, ece, oracle_acc, tpr_at_fpr
from tests.pipeline.test_train_eval import train_linear_run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return train_linear_run(tmp_path_factory.mktemp("evalcal"), {"train": 0.5, "val": 0.25, "test": 0.25})


def test_eval_uses_the_stored_calibration_and_reports_coverage(run: dict) -> None:
    cal = heads.Calibration(method="temperature", temperature=2.0, threshold=0.45, band=(0.3, 0.6))
    heads.save_calibration(run["run"], cal)
    rep = run["tmp"] / "rep"
    assert main(["eval", str(run["run"]), "--by", "split", "--bootstrap", "50", "-o", str(rep)]) == 0
    head, _ = heads.load(run["run"])
    test = cache.open(run["cache"]).load(["f"], where={"split": "test"})
    p = 1 / (1 + np.exp(-heads.logits(head, test.features) / 2.0))
    y = test.labels
    scores = pd.read_parquet(rep / "scores.parquet")
    np.testing.assert_allclose(scores["score"].to_numpy(), p, atol=1e-6)
    m = json.loads((rep / "metrics.json").read_text())
    g = m["groups"]["test"]
    assert m["threshold"] == 0.45
    assert g["acc"] == pytest.approx(np.mean((p >= 0.45) == (y == 1)))
    covered = (p >= 0.6) | (p <= 0.3)
    assert g["coverage"] == pytest.approx(covered.mean())
    assert g["acc_covered"] == pytest.approx(np.mean((p[covered] >= 0.6) == (y[covered] == 1)))
    # fewer than 100 reals: the FPR moves in steps over 1%, so TPR at 1% (and 0.1%) FPR is undefined, with a note
    # (issue 27: such a number is the TPR at FPR 0 under another name)
    assert (y == 0).sum() < 100 and g["tpr_at_1pct_fpr"] is None and g["tpr_at_0.1pct_fpr"] is None
    assert "TPR@1%FPR needs >= 100 reals" in g["note"] and tpr_at_fpr(y, p, 0.01)[1] > 0
    assert g["oracle_acc"] == pytest.approx(oracle_acc(y, p))
    assert g["ece"] == pytest.approx(ece(y, p)) and g["brier"] == pytest.approx(brier(y, p))
    for key in ("acc", "auc", "eer", "oracle_acc", "ece", "brier", "coverage"):
        lo, hi = g["ci"][key]
        assert lo <= g[key] + 1e-9 and g[key] - 1e-9 <= hi, key
    table = pd.read_csv(rep / "metrics.csv")
    assert {"tpr_at_1pct_fpr", "ece", "brier", "oracle_acc", "coverage"} <= set(table.columns)
    assert "ECE" in (rep / "report.md").read_text()
    heads.save_calibration(run["run"], None)


def test_an_explicit_threshold_overrides_the_stored_one(run: dict) -> None:
    heads.save_calibration(run["run"], heads.Calibration(threshold=0.9))
    rep = run["tmp"] / "rep2"
    assert main(["eval", str(run["run"]), "--threshold", "0.5", "-o", str(rep)]) == 0
    assert json.loads((rep / "metrics.json").read_text())["threshold"] == 0.5
    assert main(["eval", str(run["run"]), "-o", str(rep), "--overwrite"]) == 0
    assert json.loads((rep / "metrics.json").read_text())["threshold"] == 0.9
    heads.save_calibration(run["run"], None)


def test_train_calibrates_when_the_config_says_so(run: dict, tmp_path: Path) -> None:
    data = yaml.safe_load(run["cfg"].read_text())
    data["calibration"] = {"method": "platt", "threshold": "fpr:0.1", "band": "none"}
    (tmp_path / "cal.yaml").write_text(yaml.safe_dump(data))
    assert main(["train", str(tmp_path / "cal.yaml"), "-o", str(tmp_path / "run")]) == 0
    cal = heads.calibration_of(heads.load(tmp_path / "run")[1])
    assert cal.method == "platt" and cal.threshold_policy == "target_fpr" and cal.target_fpr == 0.1
    data["calibration"] = {"method": "platt", "treshold": 0.5}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
    assert main(["train", str(tmp_path / "bad.yaml"), "-o", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()
