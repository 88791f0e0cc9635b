"""`import aigi`: the README's Python example runs as written on a small cache, and its numbers are the libraries'."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.numpy import load_file
from sklearn.metrics import average_precision_score, roc_auc_score

import aigi
from aigi import cache

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def make_cache(path: Path, *, dim: int = 16) -> None:
    rng = np.random.default_rng(0)
    n = 400
    labels = np.arange(n) % 2
    meta = pd.DataFrame(
        {
            "image_id": [f"{i:064x}" for i in range(n)],
            "path": [f"img/{i}.png" for i in range(n)],
            "label": labels,
            "source": np.where(labels == 1, "vae", "real"),
            "pair_id": "",
            "view": "orig",
        }
    )
    meta = cache.assign_splits(meta, {"train": 0.7, "test": 0.3}, seed=0)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x[labels == 1, :4] += 1.5
    with cache.CacheWriter(path, spec={"synthetic": "api"}, features={"probe": (dim,)}) as writer:
        writer.append(meta, {"probe": x})


def test_readme_example_runs_and_its_metrics_match_sklearn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_cache(tmp_path / "features" / "uar")
    monkeypatch.chdir(tmp_path)
    space: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), space)  # noqa: S102 - the project's own README
    test, scores, metrics = space["test"], space["scores"], space["metrics"]
    assert scores.shape == (len(test),) and len(test) > 50
    assert metrics["ap"] == pytest.approx(average_precision_score(test.labels, scores), abs=1e-9)
    assert metrics["auc"] == pytest.approx(roc_auc_score(test.labels, scores), abs=1e-9)
    assert metrics["acc"] == pytest.approx(np.mean((scores >= 0.5) == (test.labels == 1)))
    assert metrics["auc"] > 0.9  # the fakes are shifted along 4 dimensions: a linear head separates them
    state = load_file(str(tmp_path / "runs" / "my_head" / "head.safetensors"))  # a linear head by hand: sigmoid(xW+b)
    x = test.features["probe"].astype(np.float64)
    logits = x @ state["linear.weight"].astype(np.float64).T + state["linear.bias"]
    np.testing.assert_allclose(scores, 1 / (1 + np.exp(-logits[:, 0])), rtol=1e-5, atol=1e-6)
    head, info = aigi.load_head(tmp_path / "runs" / "my_head")
    np.testing.assert_allclose(aigi.predict(head, test.features), scores, rtol=1e-6, atol=1e-7)
    assert info["name"] == "linear" and isinstance(head, torch.nn.Module)


def test_api_lists_heads_and_presets_and_trains_a_preset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert {"linear", "mlp", "gating", "router", "prototype"} <= set(aigi.available_heads())
    assert "uar" in aigi.presets()
    make_cache(tmp_path / "features" / "uar")
    monkeypatch.chdir(tmp_path)
    summary = aigi.train("uar", tmp_path / "run", overrides=["fit.epochs=2", "data.where={}"])
    assert summary["train_rows"] == int((cache.open("features/uar").meta()["split"] == "train").sum())
    metrics = aigi.evaluate_run(tmp_path / "run", tmp_path / "eval", plots=False)
    assert (tmp_path / "eval" / "metrics.json").is_file() and metrics["mean"]["n"] > 50


def test_import_aigi_does_not_import_torch() -> None:
    code = "import sys, aigi; print('torch' in sys.modules, aigi.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    loaded, version = out.stdout.split()
    assert loaded == "False" and version != ""


def test_api_indexes_a_folder_and_extracts_its_features(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i, label in enumerate(("0_real", "1_fake", "0_real", "1_fake")):
        (tmp_path / "data" / "gen" / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
            tmp_path / "data/gen" / label / f"{i}.png"
        )
    done = aigi.index(tmp_path / "data", tmp_path / "data" / "manifest.parquet", split="test")
    assert len(done.manifest) == 4 and done.skipped == [] and set(done.manifest["split"]) == {"test"}
    assert sorted(done.manifest["label"]) == [0, 0, 1, 1]
    result = aigi.extract(
        tmp_path / "data" / "manifest.parquet", tmp_path / "c", backbone="timm:test_vit", random_weights=True,
        views=("orig", "jpeg:075"),
    )  # fmt: skip
    assert (result.rows, result.errors) == (8, 0)
    meta = cache.open(tmp_path / "c").meta()
    assert sorted(meta["view"].unique()) == ["jpeg:75", "orig"] and len(meta) == 8
    assert set(meta["image_id"]) == set(done.manifest["image_id"])
