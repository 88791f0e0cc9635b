"""`aigi ablate`: grid expansion and run ids, results equal to lone runs, resume after a kill, dask = joblib."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from aigi import cache
from aigi.cli import main
from aigi.pipeline.ablate import AblateOptions, RunSteps, expand, load_ablation, read_result, run_ablation
from aigi.pipeline.config import parse_config, to_dict
from aigi.pipeline.evaluate import EvalOptions, evaluate_run
from aigi.pipeline.report import ablation_markdown
from aigi.pipeline.train import TrainOptions, train_run

ROOT = Path(__file__).resolve().parents[2]
METRICS = ["acc", "real_acc", "fake_acc", "ap", "auc"]
# what `aigi ablate` runs for each run: the train and eval stages
STEPS = RunSteps(train=train_run, evaluate=evaluate_run, train_options=TrainOptions(), eval_options=EvalOptions())


def _id(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def make_cache(path: Path, *, pairs: int = 60, dim: int = 8) -> Path:
    """Reals with a paired `vae:x` fake (shifted on dims 0-1) and a paired `sr:y` fake (shifted on dims 2-3)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(pairs):
        real = _id(f"real{i}")
        rows += [
            (real, f"real/{i}", 0, "real", real),
            (_id(f"v{i}"), f"vae/{i}", 1, "vae:x", real),
            (_id(f"s{i}"), f"sr/{i}", 1, "sr:y", real),
        ]
    meta = pd.DataFrame(rows, columns=["image_id", "path", "label", "source", "pair_id"]).assign(view="orig")
    meta = cache.assign_splits(meta, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=0)
    x = rng.standard_normal((len(meta), dim)).astype(np.float32)
    x[meta["source"].eq("vae:x").to_numpy(), :2] += 2.0
    x[meta["source"].eq("sr:y").to_numpy(), 2:4] += 2.0
    with cache.CacheWriter(path, spec={"synthetic": "ablate-test"}, features={"f": (dim,)}, dtype="float32") as w:
        w.append(meta, {"f": x})
    return path


def ablation(store: Path, **extra) -> dict:
    return {
        "head": {"name": "linear", "inputs": ["f"]},
        "fit": {"optimizer": "adam", "lr": 0.05, "epochs": 3, "batch_size": 32, "device": "cpu"},
        "data": {"caches": {"syn": str(store)}, "where": {"view": "orig"}},
        "variants": {"lin": {}, "mlp": {"head": {"name": "mlp", "inputs": ["f"], "hidden": 8, "dropout": 0.0}}},
        "seeds": [0, 1],
        **extra,
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cache(tmp_path_factory.mktemp("abl") / "cache")


@pytest.fixture(scope="module")
def finished(store: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("run") / "ablation"
    plan = expand(ablation(store))
    result = run_ablation(plan, out, STEPS, AblateOptions(jobs=1, progress=False))
    return {"plan": plan, "out": out, "result": result}


# ---------------------------------------------------------------------------------------------------------- grid


def test_expansion_order_names_and_stable_ids(store: Path) -> None:
    raw = ablation(store, grid={"fit.lr": [0.05, 0.01]})
    plan = expand(raw)
    assert [(r.variant, r.values["fit.lr"], r.seed) for r in plan.runs] == [
        (v, lr, s) for v in ("lin", "mlp") for lr in (0.05, 0.01) for s in (0, 1)
    ]
    first = plan.runs[0]
    assert first.setting == "lin_lr=0.05" and first.run_id.startswith("lin_lr=0.05_s0-")
    # the hash is the sha256 of the canonical JSON of the resolved config, computed here independently
    manual = {**{k: v for k, v in raw.items() if k not in ("variants", "grid", "seeds")}}
    manual["fit"] = {**manual["fit"], "lr": 0.05, "seed": 0}
    resolved = to_dict(parse_config(manual))
    text = json.dumps(resolved, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert first.run_id.endswith("-" + hashlib.sha256(text.encode()).hexdigest()[:8])
    assert first.config == resolved
    assert [r.run_id for r in expand(raw).runs] == [r.run_id for r in plan.runs]  # stable
    assert len({r.run_id for r in plan.runs}) == 8
    changed = expand({**raw, "fit": {**raw["fit"], "epochs": 4}})
    assert all(a.run_id != b.run_id for a, b in zip(plan.runs, changed.runs, strict=True))


def test_variant_replaces_a_whole_section_and_dotted_keys_set_one_value(store: Path) -> None:
    raw = ablation(store)
    raw["head"] = {"name": "mlp", "inputs": ["f"], "hidden": 7}
    raw["variants"] = [{"name": "lin", "head": {"name": "linear", "inputs": ["f"]}}, {"name": "h3", "head.hidden": 3}]
    runs = expand(raw, seeds=[5]).runs
    assert runs[0].config["head"] == {"name": "linear", "inputs": ["f"]}
    assert runs[1].config["head"]["hidden"] == 3 and runs[1].config["head"]["name"] == "mlp"
    assert [r.config["fit"]["seed"] for r in runs] == [5, 5]


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"grid": {"fit.seed": [1, 2]}}, "seeds"),
        ({"grid": {"fit.lr": 0.1}}, "non-empty list"),
        ({"variants": [{"name": "a"}, {"name": "a"}]}, "unique"),
        ({"seeds": [0, 0]}, "duplicates"),
        ({"variants": {"x": {"fit.lrr": 0.1}}}, "lr"),
        ({"variants": {"a": {}, "b": {"fit.epochs": 3}}}, "identical configs"),
    ],
)
def test_bad_ablation_configs_name_the_problem(store: Path, patch: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        expand(ablation(store, **patch))


# ---------------------------------------------------------------------------------------------------------- runs


def test_results_equal_each_run_trained_alone(finished: dict, tmp_path: Path) -> None:
    table = pd.read_parquet(finished["out"] / "results.parquet")
    assert len(table) == 4 and finished["result"].ran == 4
    for spec in finished["plan"].runs[::3]:  # one run of each setting
        solo = tmp_path / spec.run_id
        train_run(parse_config(spec.config), solo)
        metrics = evaluate_run(solo, solo / "eval", EvalOptions(plots=False)).metrics
        row = table.set_index("run_id").loc[spec.run_id]
        assert row["seed"] == spec.seed and row["variant"] == spec.variant
        for m in METRICS:
            assert row[m] == pytest.approx(metrics["mean"][m], abs=1e-12)
        for group, values in metrics["groups"].items():
            for m in METRICS:
                assert row[f"{group}/{m}"] == pytest.approx(values[m], abs=1e-12), (group, m)
    assert {"vae:x/fake_acc", "sr:y/ap"} <= set(table.columns)


def test_summary_is_mean_and_std_over_seeds(finished: dict) -> None:
    table = pd.read_parquet(finished["out"] / "results.parquet")
    summary = finished["result"].summary
    assert len(summary) == 2 and list(summary["seeds"]) == [2, 2]
    assert summary["auc.mean"].is_monotonic_decreasing
    for _, row in summary.iterrows():
        auc = table.loc[table["setting"] == row["setting"], "auc"].to_numpy()
        assert row["auc.mean"] == pytest.approx(auc.mean())
        assert row["auc.std"] == pytest.approx(np.std(auc, ddof=1))
    text = (finished["out"] / "summary.md").read_text()
    assert text == ablation_markdown(summary, sort_by="auc", n_runs=4)
    best = summary.iloc[0]
    cell = f"{100 * best['auc.mean']:.2f} ± {100 * best['auc.std']:.2f}"
    assert f"| {best['setting']} | 2 |" in text and cell in text
    with Image.open(finished["out"] / "summary.png") as img:
        assert img.format == "PNG" and img.size[0] > 300


def test_rerun_executes_only_the_missing_run(finished: dict) -> None:
    out, plan = finished["out"], finished["plan"]
    before = {r.run_id: read_result(out / "runs" / r.run_id) for r in plan.runs}
    victim = plan.runs[1].run_id
    (out / "runs" / victim / "result.json").unlink()
    again = run_ablation(plan, out, STEPS, AblateOptions(jobs=1, progress=False))
    assert (again.ran, again.skipped) == (1, 3)
    after = {r.run_id: read_result(out / "runs" / r.run_id) for r in plan.runs}
    for run_id, result in before.items():
        if run_id == victim:
            assert after[run_id]["finished_at"] > result["finished_at"]
            assert after[run_id]["metrics"] == result["metrics"]  # seeded: the redone run gives the same numbers
        else:
            assert after[run_id] == result


def test_cli_dry_run_lists_states(finished: dict, store: Path, tmp_path: Path, capsys) -> None:
    path = tmp_path / "abl.yaml"
    path.write_text(yaml.safe_dump(ablation(store)), encoding="utf-8")
    assert [r.run_id for r in load_ablation(path).runs] == [r.run_id for r in finished["plan"].runs]
    assert main(["ablate", str(path), "-o", str(finished["out"]), "--dry-run"]) == 0
    lines = capsys.readouterr().out.split()
    assert lines.count("done") == 4 and lines.count("todo") == 0


def test_one_run_parses_its_config_once(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import aigi.pipeline.config as config_mod

    calls = []
    real = config_mod.parse_config
    monkeypatch.setattr(config_mod, "parse_config", lambda *a, **k: calls.append(1) or real(*a, **k))
    plan = expand(ablation(store, variants=None, seeds=[0]))
    out = run_ablation(plan, tmp_path / "once", STEPS, AblateOptions(jobs=1, progress=False))
    assert out.ran == 1 and len(calls) == 1


def test_dry_run_catches_a_head_parameter_typo(store: Path, tmp_path: Path, capsys) -> None:
    bad = ablation(store, variants={"mlp": {"head": {"name": "mlp", "inputs": ["f"], "hiden": 8}}})
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(bad), encoding="utf-8")
    assert main(["ablate", str(path), "-o", str(tmp_path / "out"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "head.hiden" in err and "did you mean 'head.hidden'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_sigkill_mid_ablation_then_restart_redoes_no_finished_run(store: Path, tmp_path: Path) -> None:
    path = tmp_path / "abl.yaml"
    path.write_text(yaml.safe_dump(ablation(store, seeds=[0, 1, 2, 3])), encoding="utf-8")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "aigi", "ablate", str(path), "-o", str(out), "--jobs", "1"]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not list(out.glob("runs/*/result.json")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {p.parent.name: p.read_bytes() for p in out.glob("runs/*/result.json")}
    assert 1 <= len(done) < 8, "the kill should land after the first finished run and before the last"
    plan = load_ablation(path)
    again = run_ablation(plan, out, STEPS, AblateOptions(jobs=1, progress=False))
    assert again.ran == 8 - len(done) and again.skipped == len(done)
    for run_id, data in done.items():
        assert (out / "runs" / run_id / "result.json").read_bytes() == data
    assert len(pd.read_parquet(out / "results.parquet")) == 8


@pytest.mark.slow
def test_dask_two_workers_equal_jobs_one(finished: dict, tmp_path: Path) -> None:
    res = run_ablation(finished["plan"], tmp_path / "dask", STEPS, AblateOptions(workers=2, progress=False))
    assert res.ran == 4
    pids = {read_result(tmp_path / "dask" / "runs" / r.run_id)["pid"] for r in finished["plan"].runs}
    assert os.getpid() not in pids
    ref = pd.read_parquet(finished["out"] / "results.parquet").set_index("run_id")
    got = pd.read_parquet(tmp_path / "dask" / "results.parquet").set_index("run_id").loc[ref.index]
    cols = [c for c in ref.columns if c.split("/")[-1] in METRICS]
    pd.testing.assert_frame_equal(got[cols], ref[cols], rtol=0, atol=1e-12)
