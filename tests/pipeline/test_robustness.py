"""`aigi robustness`: per-view metrics, verdict flips against orig and the strength plot, recomputed by hand."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from aigi import cache, heads
from aigi.cli import main
from tests.pipeline.test_train_eval import _id, write_config

VIEWS = ("orig", "jpeg:75", "resize:0.5")


def make_view_cache(path: Path, n: int = 80, seed: int = 0) -> Path:
    """n/2 reals and n/2 fakes (fakes shifted +1.5 on dim 0); `jpeg:75` pushes every row +1 on dim 0 (reals look
    faker), `resize:0.5` adds noise."""
    rng = np.random.default_rng(seed)
    ids = [_id(f"img{i}") for i in range(n)]
    labels = np.arange(n) % 2
    base = rng.standard_normal((n, 4)).astype(np.float32)
    base[:, 0] += 1.5 * labels
    meta = pd.DataFrame({"image_id": ids, "path": [f"{i}.png" for i in range(n)], "label": labels,
                         "source": np.where(labels == 1, "vae", "real"), "pair_id": ""})  # fmt: skip
    meta = cache.assign_splits(meta, {"train": 0.5, "val": 0.25, "test": 0.25}, seed=seed)
    jpeg = base.copy()
    jpeg[:, 0] += 1.0
    noisy = base + 0.7 * rng.standard_normal(base.shape).astype(np.float32)
    with cache.CacheWriter(path, spec={"extractor": "synthetic"}, features={"f": (4,)}) as writer:
        for view, x in zip(VIEWS, (base, jpeg, noisy)):
            writer.append(meta.assign(view=view), {"f": x})
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("robust")
    store = make_view_cache(tmp / "cache")
    cfg = write_config(tmp / "run.yaml", head={"name": "linear", "inputs": ["f"]}, caches={"syn": str(store)})
    assert main(["train", str(cfg), "-o", str(tmp / "run")]) == 0
    return {"run": tmp / "run", "cache": store, "tmp": tmp}


def test_per_view_metrics_and_flips_by_hand(run: dict, capsys: pytest.CaptureFixture) -> None:
    out = run["tmp"] / "report"
    heads.save_calibration(run["run"], heads.Calibration(method="temperature", temperature=1.7, threshold=0.6))
    assert main(["robustness", str(run["run"]), "--views", ",".join(VIEWS), "-o", str(out)]) == 0
    assert "robustness: 3 view(s)" in capsys.readouterr().out
    table = pd.read_csv(out / "robustness.csv").set_index("view")
    head, _ = heads.load(run["run"])
    fs = cache.open(run["cache"]).load(["f"], where={"split": "test"})
    p = 1 / (1 + np.exp(-heads.logits(head, fs.features) / 1.7))
    views, ids, y = fs.column("view").astype(str), fs.column("image_id").astype(str), fs.labels
    verdict = {}
    for view in VIEWS:
        sel = views == view
        verdict[view] = dict(zip(ids[sel], p[sel] >= 0.6))
        assert table.loc[view, "n"] == sel.sum() == 20
        assert table.loc[view, "acc"] == pytest.approx(((p[sel] >= 0.6) == y[sel]).mean())
        assert table.loc[view, "auc"] == pytest.approx(roc_auc_score(y[sel], p[sel]))
        assert table.loc[view, "coverage"] == 1.0
    for view in VIEWS[1:]:
        flips = np.mean([verdict[view][i] != verdict["orig"][i] for i in verdict["orig"]])
        assert table.loc[view, "flip_rate"] == pytest.approx(flips)
    assert table.loc["jpeg:75", "real_acc"] < table.loc["orig", "real_acc"]  # the shift makes reals look fake
    assert table.loc["jpeg:75", "real_to_fake"] > 0
    flips = pd.read_parquet(out / "flips.parquet")
    assert len(flips) == 20 and set(VIEWS) <= set(flips.columns)
    assert (out / "robustness.png").stat().st_size > 10_000
    assert json.loads((out / "robustness.json").read_text())["views"][0]["view"] == "orig"
    assert "| jpeg:75 |" in (out / "robustness.md").read_text()


def test_a_view_missing_from_the_cache_is_one_line(run: dict, capsys: pytest.CaptureFixture) -> None:
    assert main(["robustness", str(run["run"]), "--views", "orig,blur:2", "-o", str(run["tmp"] / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "blur:2.0" in err and "--views orig,blur:2.0" in err


def test_eval_views_writes_the_same_report(run: dict) -> None:
    out = run["tmp"] / "via_eval"
    assert main(["eval", str(run["run"]), "--views", ",".join(VIEWS), "-o", str(out)]) == 0
    again = run["tmp"] / "via_robustness"
    assert main(["robustness", str(run["run"]), "--views", ",".join(VIEWS), "-o", str(again)]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "robustness.csv"), pd.read_csv(again / "robustness.csv"))


def test_both_spellings_are_one_command_with_the_same_files(run: dict, capsys: pytest.CaptureFixture) -> None:
    from aigi import cli

    outs = {}
    for name, argv in {"eval": ["eval", "--views"], "robustness": ["robustness", "--views"]}.items():
        outs[name] = run["tmp"] / f"same_{name}"
        assert main([argv[0], str(run["run"]), argv[1], ",".join(VIEWS), "-o", str(outs[name])]) == 0
    printed = capsys.readouterr().out.replace(str(outs["eval"]), "OUT").replace(str(outs["robustness"]), "OUT")
    lines = printed.splitlines()
    assert lines[: len(lines) // 2] == lines[len(lines) // 2 :]  # the same lines for both spellings
    names = sorted(p.name for p in outs["eval"].iterdir())
    assert names == sorted(p.name for p in outs["robustness"].iterdir())
    assert {"robustness.md", "robustness.csv", "robustness.json", "flips.parquet"} <= set(names)
    budget = re.compile(r"memory budget [0-9.]+ [kMGT]?B")  # half the RAM free at the time: it moves
    for name in ("robustness.md", "robustness.csv", "robustness.json"):
        texts = [budget.sub("memory budget X", (outs[k] / name).read_text()) for k in ("eval", "robustness")]
        assert texts[0] == texts[1], name
    pd.testing.assert_frame_equal(
        pd.read_parquet(outs["eval"] / "flips.parquet"), pd.read_parquet(outs["robustness"] / "flips.parquet")
    )
    parser = cli.build_parser("robustness")  # `aigi --help` lists it as the alias; `aigi robustness --help` says so
    assert "alias of `aigi eval RUN_DIR --views" in " ".join(parser.format_help().split())
    sub = next(a for a in parser._actions if a.dest == "command").choices["robustness"]
    assert "The same command as `aigi eval RUN_DIR --views" in sub.format_help()
    evals = next(a for a in cli.build_parser("eval")._actions if a.dest == "command").choices["eval"]
    assert "`aigi robustness` is an alias" in " ".join(evals.format_help().split())
