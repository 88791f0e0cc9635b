"""`aigi calibrate`: fitted on the run's validation rows, stored in head.json, checked against a direct fit."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from aigi import cache, heads
from aigi.cli import main
from aigi.heads.calibration import conformal_high, fit_temperature
from aigi.pipeline.config import load_config
from aigi.pipeline.metrics import ece
from aigi.pipeline.rows import open_caches, train_val_rows
from tests.pipeline.test_train_eval import make_cache, write_config


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("calibrate")
    store = make_cache(tmp / "cache", ratios={"train": 0.5, "val": 0.3, "test": 0.2})
    cfg = write_config(
        tmp / "run.yaml", head={"name": "linear", "inputs": ["f"]}, caches={"syn": str(store)}, epochs=40
    )
    assert main(["train", str(cfg), "-o", str(tmp / "run")]) == 0
    return {"run": tmp / "run", "cache": store, "cfg": cfg, "tmp": tmp}


def _val(run: Path, cfg: Path) -> tuple[np.ndarray, np.ndarray]:
    head, _ = heads.load(run)
    c = load_config(cfg)
    _, val, _ = train_val_rows(open_caches(c.data.caches), c.data, inputs=["f"])
    return heads.logits(head, val.features), val.labels


def test_calibrate_stores_what_a_direct_fit_gives(run: dict, capsys: pytest.CaptureFixture) -> None:
    argv = ["calibrate", str(run["run"]), "--in-place", "--method", "temperature", "--threshold", "fpr:0.05"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    z, y = _val(run["run"], run["cfg"])
    stored = json.loads((run["run"] / "head.json").read_text())["calibration"]
    t = fit_temperature(z, y)
    assert stored["temperature"] == pytest.approx(t, rel=1e-6)
    assert stored["threshold"] == pytest.approx(conformal_high(1 / (1 + np.exp(-z[y == 0] / t)), 0.05))
    assert stored["fitted_on"]["rows"] == len(y) == len(cache.open(run["cache"]).meta().query("split == 'val'"))
    # one unit per metric: ECE in percent, as in every table (issue 27)
    assert f"ECE {100 * ece(y, 1 / (1 + np.exp(-z))):.2f} -> {100 * ece(y, 1 / (1 + np.exp(-z / t))):.2f}" in out


def test_calibrate_with_a_band_and_bad_options(run: dict, capsys: pytest.CaptureFixture) -> None:
    assert main(["calibrate", str(run["run"]), "--in-place", "--method", "platt", "--band", "coverage:0.8"]) == 0
    capsys.readouterr()  # its output (a warning when ECE rose) is not the bad options' one-line errors below
    cal = heads.calibration_of(heads.load(run["run"])[1])
    z, _ = _val(run["run"], run["cfg"])
    assert cal.method == "platt" and cal.band is not None
    assert (cal.verdict(cal.probability(z)) != -1).mean() == pytest.approx(0.8, abs=0.03)
    for bad, msg in [(["--band", "coverage"], "coverage:X"), (["--threshold", "fpr:2"], "in \\(0, 1\\)"),
                     (["--threshold", "high"], "val_acc or fpr:A")]:  # fmt: skip
        assert main(["calibrate", str(run["run"]), "--in-place", *bad]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and re.search(msg, err), err


def test_a_run_without_validation_rows_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    store = make_cache(tmp_path / "cache", ratios={"train": 0.8, "test": 0.2})
    cfg = write_config(tmp_path / "run.yaml", head={"name": "linear", "inputs": ["f"]}, caches={"syn": str(store)})
    text = cfg.read_text().replace("where:", "val_fraction: 0.0\n  where:")
    cfg.write_text(text)
    assert main(["train", str(cfg), "-o", str(tmp_path / "run")]) == 0
    assert main(["calibrate", str(tmp_path / "run"), "--in-place"]) == 2
    assert "data.val_fraction=0.1" in capsys.readouterr().err
