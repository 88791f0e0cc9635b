"""Tail heads through the CLI: extract `l<i>.tokens`, train with the same --weights, predict runs the backbone to
block i and then the head's frozen tail; wrong or missing weights end with one clear line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from aigi import cache, heads
from aigi.cli import main
from aigi.pipeline.tail import frozen_tail
from tests.pipeline.test_extract import BACKBONE, make_manifest, weights  # noqa: F401

TOKENS = "l10.tokens"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, weights: Path) -> tuple[Path, Path]:  # noqa: F811
    root = tmp_path_factory.mktemp("tail")
    manifest = make_manifest(root, 12)
    argv = ["extract", "--manifest", str(manifest), "--backbone", BACKBONE, "--weights", str(weights)]
    assert main([*argv, "--features", f"{TOKENS},pooler", "--cache", str(root / "cache"), "--batch-size", "4"]) == 0
    config = {
        "head": {"name": "tail_lora", "inputs": [TOKENS], "rank": 4},
        "fit": {"lr": 1e-3, "epochs": 2, "batch_size": 4, "seed": 0},
        "data": {"caches": {"tiny": str(root / "cache")}, "val_fraction": 0.0},
    }
    (root / "run.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(root / "run.yaml"), "--weights", str(weights), "-o", str(root / "run")]) == 0
    return root, root / "run"


def test_token_cache_holds_every_token(trained) -> None:
    root, _ = trained
    c = cache.open(root / "cache")
    assert tuple(c.features[TOKENS]) == (197, 192) and c.dtype == "float16"


def test_predict_runs_the_tail_and_matches_the_cached_tokens(trained, weights: Path, tmp_path: Path) -> None:  # noqa: F811
    root, run = trained
    out = tmp_path / "scores.csv"
    assert main(["predict", str(run), str(root / "img"), "--weights", str(weights), "-o", str(out)]) == 0
    got = pd.read_csv(out)
    fs = cache.open(root / "cache").load([TOKENS])
    info = heads.read_info(run)
    frozen = frozen_tail(info["name"], info["inputs"], info["extractor_spec"], {"tiny": str(weights)})
    head, _ = heads.load(run, frozen=frozen)
    want = dict(zip(fs.meta["path"], heads.predict(head, fs.features)))
    scores = {Path(p).name: s for p, s in zip(got["path"], got["p_fake"])}
    # predict feeds float32 tokens, the cache holds float16 ones
    assert max(abs(scores[Path(p).name] - s) for p, s in want.items()) < 2e-3
    assert np.isfinite(got["p_fake"]).all()


def test_weights_are_required_and_checked(trained, weights: Path, tmp_path: Path, capsys) -> None:  # noqa: F811
    import torch

    root, run = trained
    assert main(["predict", str(run), str(root / "img")]) == 2
    assert "pass --weights" in capsys.readouterr().err
    sd = torch.load(weights, weights_only=True)
    sd["cls_token"] = sd["cls_token"] + 1
    torch.save(sd, tmp_path / "other.pth")
    assert main(["predict", str(run), str(root / "img"), "--weights", str(tmp_path / "other.pth")]) == 2
    assert "same --weights" in capsys.readouterr().err
    assert main(["train", str(root / "run.yaml"), "-o", str(tmp_path / "r2")]) == 2
    assert "pass --weights" in capsys.readouterr().err


def test_eval_rebuilds_the_tail_from_weights(trained, weights: Path, tmp_path: Path, capsys) -> None:  # noqa: F811
    root, run = trained
    out = tmp_path / "eval"
    assert main(["eval", str(run), "--split", "train", "--weights", str(weights), "-o", str(out)]) == 0
    scores = pd.read_parquet(out / "scores.parquet")
    fs = cache.open(root / "cache").load([TOKENS])
    info = heads.read_info(run)
    head, _ = heads.load(
        run, frozen=frozen_tail(info["name"], info["inputs"], info["extractor_spec"], {"tiny": str(weights)})
    )
    want = heads.predict(head, fs.features)
    got = scores.set_index("image_id").loc[fs.meta["image_id"], "score"].to_numpy()
    assert np.allclose(got, want, atol=1e-6)
    assert main(["eval", str(run), "--split", "train", "-o", str(tmp_path / "e2")]) == 2
    assert "pass --weights" in capsys.readouterr().err
