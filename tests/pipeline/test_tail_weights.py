"""`--weights` for tail heads in `aigi ablate`, `aigi calibrate` and `aigi robustness` (and `aigi eval --views`):
the same flag as `aigi train`, the tail rebuilt from it; no, a missing or another weights file is one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from aigi import cache, heads
from aigi.cli import main
from aigi.pipeline.tail import load_head
from tests.pipeline.test_extract import BACKBONE, make_manifest, weights  # noqa: F401

TOKENS = "l10.tokens"
VIEWS = "orig,jpeg:75"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, weights: Path) -> Path:  # noqa: F811
    """Tokens of 16 images under two views; images 0-7 train, 8-11 val, 12-15 test."""
    root = tmp_path_factory.mktemp("tw")
    manifest = make_manifest(root, 16)
    table = cache.read_manifest(manifest)
    table["split"] = np.repeat(["train", "val", "test"], [8, 4, 4])
    cache.write_manifest(table, manifest)
    argv = ["extract", "--manifest", str(manifest), "--backbone", BACKBONE, "--weights", str(weights)]
    argv += ["--features", TOKENS, "--views", VIEWS, "--cache", str(root / "cache"), "--batch-size", "8"]
    assert main(argv) == 0
    return root / "cache"


def config(store: Path, path: Path, **extra) -> Path:
    cfg = {
        "head": {"name": "tail_lora", "inputs": [TOKENS], "rank": 2, "targets": ["q", "v"]},
        "fit": {"lr": 3e-3, "epochs": 2, "batch_size": 8, "seed": 0, "device": "cpu"},
        "data": {"caches": {"tiny": str(store)}, "where": {"view": ["orig"]}},
        **extra,
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def run(store: Path, weights: Path, tmp_path_factory) -> Path:  # noqa: F811
    root = tmp_path_factory.mktemp("twrun")
    argv = ["train", str(config(store, root / "run.yaml")), "--weights", str(weights), "-o", str(root / "run")]
    assert main(argv) == 0
    return root / "run"


@pytest.fixture(scope="module")
def bad_weights(weights: Path, tmp_path_factory) -> dict[str, Path]:  # noqa: F811
    root = tmp_path_factory.mktemp("bad")
    sd = torch.load(weights, weights_only=True)
    sd["blocks.11.attn.qkv.weight"] = sd["blocks.11.attn.qkv.weight"] * 1.01
    torch.save(sd, root / "other.pth")
    return {"other": root / "other.pth", "absent": root / "absent.pth"}


def one_line_exit_2(capsys, argv: list[str], *words: str) -> None:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)


def rows(store: Path, split: str, view: str = "orig") -> cache.FeatureSet:
    return cache.open(store).load([TOKENS], where={"split": split, "view": view})


def check_weights_errors(capsys, argv: list[str], weights: Path, bad: dict[str, Path]) -> None:  # noqa: F811
    one_line_exit_2(capsys, argv, "pass --weights")
    one_line_exit_2(capsys, [*argv, "--weights", str(bad["other"])], str(bad["other"]), "same --weights")
    one_line_exit_2(capsys, [*argv, "--weights", str(bad["absent"])], str(bad["absent"]), "not found")


def test_calibrate_rebuilds_the_tail_from_weights(run, store, weights, bad_weights, tmp_path, capsys) -> None:  # noqa: F811
    import shutil

    shutil.copytree(run, tmp_path / "run")
    argv = ["calibrate", str(tmp_path / "run"), "--in-place", "--method", "temperature"]
    check_weights_errors(capsys, argv, weights, bad_weights)
    assert not heads.read_info(tmp_path / "run").get("calibration")  # nothing stored by the failed attempts
    assert main([*argv, "--weights", str(weights)]) == 0
    stored = heads.read_info(tmp_path / "run")["calibration"]
    head, _ = load_head(run, [str(weights)])
    val = rows(store, "val")  # the run's validation rows: split == val
    want = heads.fit_calibration(heads.logits(head, val.features), val.labels, method="temperature").to_dict()
    assert stored["method"] == "temperature" and len(val) == 4
    assert stored["temperature"] == pytest.approx(want["temperature"], rel=1e-4)


def test_robustness_and_eval_views_rebuild_the_tail(run, store, weights, bad_weights, tmp_path, capsys) -> None:  # noqa: F811
    head, _ = load_head(run, [str(weights)])
    want = {}
    for view in VIEWS.split(","):
        test = rows(store, "test", view)
        want[view] = float(np.mean((heads.predict(head, test.features) > 0.5) == test.labels))
    for command in ("robustness", "eval"):
        out = tmp_path / command
        argv = [command, str(run), "--views", VIEWS, "-o", str(out)]
        check_weights_errors(capsys, argv, weights, bad_weights)
        assert main([*argv, "--weights", str(weights)]) == 0
        table = pd.read_csv(out / "robustness.csv").set_index("view")
        assert sorted(table.index) == sorted(want)
        for view, acc in want.items():
            assert table.loc[view, "acc"] == pytest.approx(acc, abs=1e-9), (command, view)


def test_robustness_streams_token_rows_over_the_budget(run, store, weights, tmp_path) -> None:  # noqa: F811
    """The same head, its run config asking for a 10 kB budget: the views' token rows are streamed, same table."""
    small = tmp_path / "small"
    argv = ["train", str(config(store, tmp_path / "r.yaml")), "--weights", str(weights), "-o", str(small)]
    assert main([*argv, "--set", "data.memory_budget=10kB"]) == 0
    tables = {}
    for name, run_dir in (("memory", run), ("stream", small)):
        out = tmp_path / name
        assert main(["robustness", str(run_dir), "--views", VIEWS, "--weights", str(weights), "-o", str(out)]) == 0
        context = json.loads((out / "robustness.json").read_text())["context"]
        held = next(line for line in context if line.startswith("rows: "))
        assert held.startswith("rows: split test, views orig, jpeg:75, 8 rows "), held
        assert ("streamed from disk" in held) == (name == "stream"), held
        tables[name] = pd.read_csv(out / "robustness.csv").set_index("view")
    for key in ("acc", "auc"):  # trained on the same rows, in memory or streamed: the same head and scores
        np.testing.assert_allclose(tables["stream"][key], tables["memory"][key], rtol=0, atol=1e-6)


def test_ablate_trains_and_evaluates_tail_heads_with_weights(store, weights, bad_weights, tmp_path, capsys) -> None:  # noqa: F811
    path = config(store, tmp_path / "ablate.yaml", grid={"head.rank": [2, 4]}, seeds=[0])
    argv = ["ablate", str(path), "-o", str(tmp_path / "abl")]
    check_weights_errors(capsys, argv, weights, bad_weights)
    assert not (tmp_path / "abl" / "runs").exists() or not any((tmp_path / "abl" / "runs").iterdir())
    assert main([*argv, "--weights", str(weights)]) == 0
    runs = sorted(p for p in (tmp_path / "abl" / "runs").iterdir() if p.is_dir())
    assert len(runs) == 2
    test = rows(store, "test")
    for run_dir in runs:
        result = json.loads((run_dir / "result.json").read_text())
        head, info = load_head(run_dir, [str(weights)])
        assert info["name"] == "tail_lora" and head.cfg.rank == result["values"]["head.rank"]
        scores = pd.read_parquet(run_dir / "eval" / "scores.parquet").set_index("image_id")["score"]
        want = heads.predict(head, test.features)
        np.testing.assert_allclose(scores.loc[test.meta["image_id"]].to_numpy(), want, rtol=0, atol=1e-6)


def test_the_python_api_trains_a_tail_head_with_weights(run, store, weights, tmp_path) -> None:  # noqa: F811
    from safetensors.torch import load_file

    import aigi

    cfg = config(store, tmp_path / "run.yaml")
    with pytest.raises(ValueError, match="pass --weights"):
        aigi.train(cfg, tmp_path / "none")
    aigi.train(cfg, tmp_path / "api", weights=[str(weights)])
    got, want = load_file(str(tmp_path / "api" / "head.safetensors")), load_file(str(run / "head.safetensors"))
    assert sorted(got) == sorted(want)
    for key in want:  # the same config and rows as the CLI run: the same head
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6)
