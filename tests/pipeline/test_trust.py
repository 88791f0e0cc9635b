"""Numbers a user can trust, results they can share (issue 27): one scoring path, metrics on logits, one definition
and one unit per metric, honest calibration, a packed head, the CLI's conventions, the plots."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aigi import cache, heads
from aigi.cli import main
from aigi.heads.calibration import Calibration, conformal_high, fit_calibration
from aigi.pipeline.metrics import binary_metrics, eer, group_metrics
from tests.pipeline.test_train_eval import make_cache, train_linear_run

CAL = Calibration(method="temperature", temperature=1.7, threshold=0.6, band=(0.3, 0.8))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A linear head on a synthetic cache (train / val / test), calibrated with a temperature, threshold and band."""
    trained = train_linear_run(tmp_path_factory.mktemp("trust"), {"train": 0.5, "val": 0.3, "test": 0.2})
    heads.save_calibration(trained["run"], CAL)
    return trained


# ------------------------------------------------------------------------------------- item 1: one scoring path


def test_cached_rows_score_alike_on_every_path(run: dict, tmp_path: Path) -> None:
    """eval, predict --cache (in memory and streamed), robustness and the library give one logit, P(fake), verdict."""
    from aigi.pipeline.robustness import RobustnessOptions, score_views

    assert main(["eval", str(run["run"]), "--split", "all", "-o", str(tmp_path / "ev")]) == 0
    ev = pd.read_parquet(tmp_path / "ev" / "scores.parquet").set_index("image_id")
    head, info = heads.load(run["run"])
    fs = cache.open(run["cache"]).load(["f"])
    z = heads.logits(head, fs.features)
    want = pd.DataFrame({"logit": z, "p": CAL.probability(z), "v": CAL.verdict(CAL.probability(z))},
                        index=fs.meta["image_id"])  # fmt: skip
    names = {1: "fake", 0: "real", -1: "unsure"}
    for stream in ("true", "false"):
        out = tmp_path / f"p{stream}.parquet"
        argv = ["predict", str(run["run"]), "--cache", str(run["cache"]), "--stream", stream, "-o", str(out)]
        assert main(argv) == 0
        got = pd.read_parquet(out).set_index("image_id").loc[want.index]
        np.testing.assert_array_equal(got["logit"], want["logit"])
        np.testing.assert_array_equal(got["p_fake"], want["p"])
        assert got["verdict"].tolist() == [names[v] for v in want["v"]]
    ev = ev.loc[want.index]
    np.testing.assert_array_equal(ev["logit"], want["logit"])
    np.testing.assert_array_equal(ev["score"], want["p"])
    np.testing.assert_array_equal(ev["verdict"], want["v"])
    frame, _, _ = score_views(run["run"], RobustnessOptions(views=("orig",), split="all"))
    frame = frame.set_index("image_id").loc[want.index]
    np.testing.assert_array_equal(frame["prob"], want["p"])
    np.testing.assert_array_equal(frame["verdict"], want["v"])
    assert {"unsure", "fake", "real"} <= set(names[v] for v in want["v"])


def test_predict_cache_refuses_a_cache_of_other_features(run: dict, tmp_path: Path, capsys) -> None:
    other = make_cache(tmp_path / "other", ratios={"test": 1.0}, spec_tag="B")
    assert main(["predict", str(run["run"]), "--cache", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fingerprint" in err and "aigi predict: error:" in err


def test_a_threshold_and_a_band_fitted_together_keep_what_they_say() -> None:
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(400, int), np.ones(400, int)]
    z = np.where(y == 1, 3.0, -3.0) + 1.0 * rng.standard_normal(800)  # the classes barely overlap
    cal = fit_calibration(z, y, method="none", threshold_policy="target_fpr", target_fpr=0.01,
                          band_policy="error", band_target=0.1)  # fmt: skip
    p = cal.probability(z)
    assert cal.threshold == conformal_high(p[y == 0], 0.01)  # not replaced by the validation-accuracy cut
    assert cal.target_fpr == 0.01
    fresh = -3.0 + rng.standard_normal(20000)  # new reals: at most ~1% called fake, as head.json says
    assert (cal.verdict(cal.probability(fresh)) == 1).mean() < 0.02
    fakes = 3.0 + rng.standard_normal(20000)
    assert (cal.verdict(cal.probability(fakes)) == 0).mean() <= 0.1 + 0.01  # and the band keeps its error rate


# ------------------------------------------------------------------------------- item 2: ranking metrics on logits


def test_ranking_metrics_read_logits_where_probabilities_saturate() -> None:
    from sklearn.metrics import roc_auc_score, roc_curve

    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(200, int), np.ones(200, int)]
    z = np.r_[rng.normal(-5, 3, 200), rng.normal(50, 5, 200)]
    z[:3] = (41.0, 42.0, 45.0)  # three reals scored like the fakes: in float64 P(fake) == 1.0 for them and the fakes
    p = 1 / (1 + np.exp(-z))
    assert (p[y == 1] == 1.0).sum() > 150 and (p[:3] == 1.0).all()
    m = group_metrics(pd.DataFrame({"label": y, "score": p, "logit": z, "source": "s"}), by="source")["groups"]["s"]
    fpr, tpr, _ = roc_curve(y, z)
    assert m["tpr_at_1pct_fpr"] == pytest.approx(tpr[fpr <= 0.01].max()) and m["tpr_at_1pct_fpr"] > 0.5
    assert m["auc"] == pytest.approx(roc_auc_score(y, z))
    on_probs = binary_metrics(y, p, threshold=0.5)  # what the probabilities alone give: the fakes tie with a real
    assert on_probs["tpr_at_1pct_fpr"] < 0.3


def test_eer_equals_the_literature_s_reference() -> None:
    from scipy.interpolate import interp1d
    from scipy.optimize import brentq
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 500)
    s = y + rng.standard_normal(500)
    fpr, tpr, _ = roc_curve(y, s)
    ref = brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0)
    assert eer(y, s) == pytest.approx(ref, abs=1e-9)
    assert eer(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.5)


# ------------------------------------------------------------------------- item 3: one name, one definition, one unit


def test_mean_and_pooled_are_two_names_and_every_table_is_in_percent(run: dict, tmp_path: Path, capsys) -> None:
    from aigi.pipeline.metrics import mean_row

    rep = tmp_path / "rep"
    assert main(["eval", str(run["run"]), "-o", str(rep)]) == 0
    out = capsys.readouterr().out
    m = json.loads((rep / "metrics.json").read_text())
    scores = pd.read_parquet(rep / "scores.parquet")
    pooled = binary_metrics(scores["label"], scores["score"], threshold=m["threshold"], logits=scores["logit"])
    assert m["pooled"]["acc"] == pytest.approx(pooled["acc"]) and m["pooled"]["auc"] == pytest.approx(pooled["auc"])
    assert m["mean"]["acc"] == pytest.approx(mean_row(m["groups"], n_rows=0)["acc"])
    assert f"pooled ACC {100 * pooled['acc']:.2f}" in out and f"mean ACC {100 * m['mean']['acc']:.2f}" in out
    text = (rep / "report.md").read_text()
    assert "| Pooled |" in text and "P(fake) = sigmoid(logit / 1.7)" in text
    gan_row = next(line for line in text.splitlines() if line.startswith("| gan |"))
    assert f"| {100 * m['groups']['gan']['ece']:.2f} |" in gan_row  # ECE in percent
    assert main(["eval", str(run["run"]), "--views", "orig", "-o", str(tmp_path / "rob")]) == 0
    rob = (tmp_path / "rob" / "robustness.md").read_text()
    row = json.loads((tmp_path / "rob" / "robustness.json").read_text())["views"][0]
    assert f"{100 * row['ece']:.2f}" in rob and "pooled ACC" in rob  # ECE in percent, as in report.md


# ------------------------------------------------------------------------------- item 4: calibrate says what it can


def test_calibrate_warns_reports_before_after_and_writes_to_o(run: dict, tmp_path: Path, capsys) -> None:
    before = (run["run"] / "head.json").read_text()
    out = tmp_path / "cal"
    assert main(["calibrate", str(run["run"]), "--threshold", "fpr:0.01", "-o", str(out)]) == 0
    printed = capsys.readouterr()
    n_real = heads.calibration_of(heads.read_info(out)).fitted_on["real"]
    assert n_real < 99 and f"needs at least 99 validation reals, there are {n_real}" in printed.err
    assert "validation (%), before (sigmoid, 0.5) -> after: ECE" in printed.out
    assert (run["run"] / "head.json").read_text() == before  # the run is left as it was
    assert heads.calibration_of(heads.read_info(out)).threshold_policy == "target_fpr"
    assert main(["calibrate", str(run["run"])]) == 2
    assert "--in-place" in capsys.readouterr().err


def test_hand_edited_calibrations_are_refused_when_loaded(run: dict, tmp_path: Path, capsys) -> None:
    import shutil

    for bad, word in ((dict(temperature=0), "temperature"), (dict(temperature=-1), "temperature"),
                      (dict(threshold=5), "threshold"), (dict(threshold=math.nan), "threshold")):  # fmt: skip
        shutil.rmtree(tmp_path / "r", ignore_errors=True)
        shutil.copytree(run["run"], tmp_path / "r")
        info = json.loads((tmp_path / "r" / "head.json").read_text())
        info["calibration"] = {**CAL.to_dict(), **bad}
        (tmp_path / "r" / "head.json").write_text(json.dumps(info))
        assert main(["predict", str(tmp_path / "r"), "--cache", str(run["cache"])]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and word in err and "head.json" in err, err


def test_nan_features_are_reported_never_called_real(run: dict) -> None:
    from aigi.pipeline.predict import head_scores, set_expert_weights

    head, info = heads.load(run["run"])
    x = cache.open(run["cache"]).load(["f"]).features["f"][:6].copy()
    x[3] = np.nan  # a row an imported cache can hold (the writer refuses them)
    out = head_scores(head, {"f": x}, info)  # what `aigi predict --cache` and on images report per row
    assert out["verdict"][3] == "" and "NaN/inf" in out["error"][3] and np.isnan(out["p_fake"][3])
    assert all(v in ("real", "fake", "unsure") for v in np.delete(out["verdict"], 3))
    assert CAL.verdict(np.array([np.nan]))[0] == -2 and Calibration().verdict(np.array([np.nan]))[0] == -2

    class Router:
        def set_manual_weights(self, weights: dict) -> None:
            raise AssertionError("reached with a NaN weight")

    with pytest.raises(ValueError, match="finite number"):
        set_expert_weights(Router(), {"name": "router"}, "human=nan,animal=1")


# ------------------------------------------------------------------------------------------- item 7: conventions


def test_conventions_json_quiet_usage_and_a_narrow_stdout(run: dict, tmp_path: Path, capsys) -> None:
    import aigi

    assert main(["predict", str(run["run"]), "--cache", str(run["cache"]), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == len(cache.open(run["cache"])) and {"logit", "p_fake", "verdict"} <= set(rows[0])
    assert main(["eval", str(run["run"]), "-o", str(tmp_path / "e"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pooled"]["n"] > 0
    assert main(["--quiet", "eval", str(run["run"]), "-o", str(tmp_path / "e"), "--overwrite"]) == 0
    assert "data:" not in capsys.readouterr().out  # the notes are silenced; the result line stays
    assert main(["predict", str(run["run"]), "--cache", str(run["cache"]), "-o", str(tmp_path / "x.csv")]) == 0
    assert max(map(len, capsys.readouterr().out.splitlines() or [""])) <= 120
    with pytest.raises(SystemExit) as exc:
        main(["eval", str(run["run"]), "-o", str(tmp_path / "e"), "--bogus"])
    err = capsys.readouterr().err
    assert (
        exc.value.code == 2 and "usage: aigi eval" in err and "aigi eval: error: unrecognized arguments: --bogus" in err
    )
    assert callable(aigi.predict_images) and "head, info = aigi.load_head" in aigi.load_head.__doc__


def test_predict_cache_with_a_report_folder_is_one_line_and_writes_nothing(run: dict, tmp_path: Path, capsys) -> None:
    """The gallery needs image files: `--cache` with `--report` used to score the rows and skip the report unsaid."""
    argv = ["predict", str(run["run"]), "--cache", str(run["cache"]), "--report", str(tmp_path / "rep")]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--report" in lines[0] and "-o FILE.csv" in lines[0], lines
    assert not (tmp_path / "rep").exists()


def test_a_packed_head_holds_no_absolute_path_and_scores_the_same(run: dict, tmp_path: Path) -> None:
    assert main(["eval", str(run["run"]), "-o", str(run["run"] / "eval")]) == 0
    assert main(["head", "pack", str(run["run"]), "-o", str(tmp_path / "h.aigi")]) == 0
    with zipfile.ZipFile(tmp_path / "h.aigi") as zf:
        assert {"head.json", "head.safetensors", "eval.json"} <= set(zf.namelist())
        text = zf.read("head.json").decode()
    assert str(run["tmp"]) not in text and "/tmp" not in text
    info = json.loads(text)
    assert info["calibration"] == CAL.to_dict() and "sha256" in info["backbone_weights"]["syn"]
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert main(["predict", str(run["run"]), "--cache", str(run["cache"]), "-o", str(a)]) == 0
    assert main(["predict", str(tmp_path / "h.aigi"), "--cache", str(run["cache"]), "-o", str(b)]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(a), pd.read_csv(b))


# --------------------------------------------------------------------------------------------- item 8: the plots


def test_plots_show_the_differences_and_the_low_fpr_region(tmp_path: Path, monkeypatch) -> None:
    import matplotlib.pyplot as plt

    from aigi.pipeline import plots

    kept = []
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    metrics = {"groups": {"a": {"acc": 0.9989, "real_acc": 0.998, "fake_acc": 1.0},
                          "b": {"acc": 0.9922, "real_acc": 0.99, "fake_acc": 0.9944}},
               "mean": {"acc": 0.995, "real_acc": 0.994, "fake_acc": 0.997}, "threshold": 0.5}  # fmt: skip
    plots.acc_plot(tmp_path / "a.png", metrics=metrics)
    assert kept[-1].axes[0].get_ylim()[0] >= 90  # 99.89 and 99.22 no longer look the same
    y = np.r_[np.zeros(50), np.ones(50)]
    plots.roc_plot(
        tmp_path / "r.png", labels=y, scores=np.r_[np.arange(50), np.arange(25, 75)], index={"g": np.arange(100)}
    )
    ax = kept[-1].axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlim()[0] == pytest.approx(1e-3)
    assert {0.01, 0.001} <= {round(line.get_xdata()[0], 6) for line in ax.lines if len(set(line.get_xdata())) == 1}
    table = pd.DataFrame({"view": ["orig", "jpeg:90", "jpeg:50"], "kind": ["orig", "jpeg", "jpeg"],
                          "strength": [None, 90.0, 50.0], "acc": [0.99, 0.98, 0.9], "auc": [0.99, 0.99, 0.95],
                          "tpr_at_1pct_fpr": [0.9, 0.8, 0.5]})  # fmt: skip
    plots.strength_plot(table, tmp_path / "s.png")
    ticks = [t.get_text() for t in kept[-1].axes[0].get_xticklabels()]
    assert ticks == ["original", "90", "50"]  # not "JPEG quality 100"
