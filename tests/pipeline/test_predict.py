"""`aigi predict`: the same scores as the head on cached features, clear messages for bad files, fingerprint guard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from aigi import cache, heads
from aigi.cli import main
from tests.pipeline.test_extract import _hostile_files, extract_args, make_manifest, weights  # noqa: F401


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, weights: Path) -> tuple[Path, Path]:  # noqa: F811
    root = tmp_path_factory.mktemp("predict")
    manifest = make_manifest(root, 12)
    assert main(extract_args(manifest, root / "cache", weights)) == 0
    config = {
        "head": {"name": "linear", "inputs": ["pooler"]},
        "fit": {"optimizer": "adam", "lr": 1e-2, "epochs": 3, "batch_size": 4, "seed": 0},
        "data": {"caches": {"tiny": str(root / "cache")}, "val_fraction": 0.0},
    }
    (root / "run.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(root / "run.yaml"), "-o", str(root / "run")]) == 0
    return root, root / "run"


def test_scores_equal_the_head_on_cached_features(trained, weights: Path, tmp_path: Path, capsys) -> None:  # noqa: F811
    root, run = trained
    out = tmp_path / "scores.csv"
    assert main(["predict", str(run), str(root / "img"), "--weights", str(weights), "-o", str(out)]) == 0
    table = pd.read_csv(out, keep_default_na=False)
    assert len(table) == 12 and (table["error"] == "").all()
    head, _ = heads.load(run)
    fs = cache.open(root / "cache").load(["pooler"])
    want = dict(zip(fs.meta["path"], heads.predict(head, fs.features)))
    got = {str(Path(p).relative_to(root)): s for p, s in zip(table["path"], table["p_fake"])}
    assert got.keys() == want.keys()
    # predict uses float32 features, the cache float16: scores agree to float16 rounding
    np.testing.assert_allclose([got[k] for k in want], list(want.values()), atol=2e-3)
    printed = capsys.readouterr()
    assert "12 image(s) scored, 0 skipped" in printed.err


def test_hostile_files_get_a_message_each_and_exit_zero(trained, weights: Path, tmp_path: Path, capsys) -> None:  # noqa: F811
    root, run = trained
    files = _hostile_files(tmp_path / "bad")
    assert main(["predict", str(run), str(tmp_path / "bad"), "--weights", str(weights)]) == 0
    err = capsys.readouterr().err
    for name in ("truncated.png", "empty.jpg", "text.jpg", "bomb.png"):
        assert f"skipped {files[[k for k, v in files.items() if v.name == name][0]]}" in err
    assert "7 image(s) scored, 4 skipped" in err


def test_other_weights_are_refused(trained, weights: Path, tmp_path: Path, capsys) -> None:  # noqa: F811
    import torch

    root, run = trained
    sd = torch.load(weights, weights_only=True)
    sd["cls_token"] = sd["cls_token"] + 0.5
    torch.save(sd, tmp_path / "other.pth")
    assert main(["predict", str(run), str(root / "img"), "--weights", str(tmp_path / "other.pth")]) == 2
    assert "weights_sha256" in capsys.readouterr().err


def test_stored_calibration_gives_probabilities_and_verdicts(trained, weights: Path, tmp_path: Path, capsys) -> None:  # noqa: F811
    import shutil

    root, run = trained
    shutil.copytree(run, tmp_path / "run")
    head, _ = heads.load(run)
    fs = cache.open(root / "cache").load(["pooler"])
    z = heads.logits(head, fs.features)
    ps = np.sort(1 / (1 + np.exp(-z / 2.0)))
    band = ((ps[3] + ps[4]) / 2, (ps[7] + ps[8]) / 2)  # the 5th..8th of 12 scores are unsure
    heads.save_calibration(tmp_path / "run", heads.Calibration(method="temperature", temperature=2.0, band=band))
    out = tmp_path / "scores.csv"
    assert main(["predict", str(tmp_path / "run"), str(root / "img"), "--weights", str(weights), "-o", str(out)]) == 0
    table = pd.read_csv(out, keep_default_na=False)
    p = dict(zip(fs.meta["path"], 1 / (1 + np.exp(-z / 2.0))))
    got = {str(Path(q).relative_to(root)): (s, v) for q, s, v in zip(table["path"], table["p_fake"], table["verdict"])}
    for key, prob in p.items():
        assert got[key][0] == pytest.approx(prob, abs=2e-3)
        want = "fake" if prob >= band[1] else "real" if prob <= band[0] else "unsure"
        if min(abs(prob - band[0]), abs(prob - band[1])) > 2e-3:  # float16 cache vs float32 on the fly
            assert got[key][1] == want, (key, prob, band)
    n = {v: sum(1 for s, w in got.values() if w == v) for v in ("fake", "real", "unsure")}
    assert n["unsure"] >= 1 and n["real"] >= 1 and n["fake"] >= 1
    assert f"({n['fake']} fake, {n['real']} real, {n['unsure']} unsure)" in capsys.readouterr().err


def test_float32_cache_and_predict_give_the_same_scores_exactly(weights: Path, tmp_path: Path) -> None:  # noqa: F811
    """With --store-dtype float32 the cached features are the forward's; predict recomputes them alike, so a head
    scores an image identically from the cache and from the file."""
    manifest = make_manifest(tmp_path, 8)
    args = extract_args(manifest, tmp_path / "cache", weights, "--store-dtype", "float32", "--batch-size", "1")
    assert main(args) == 0
    config = {
        "head": {"name": "linear", "inputs": ["pooler"]},
        "fit": {"optimizer": "adam", "lr": 1e-2, "epochs": 2, "batch_size": 4, "seed": 0},
        "data": {"caches": {"tiny": str(tmp_path / "cache")}, "val_fraction": 0.0},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(tmp_path / "run.yaml"), "-o", str(tmp_path / "run")]) == 0
    out = tmp_path / "scores.csv"
    cmd = ["predict", str(tmp_path / "run"), str(tmp_path / "img"), "--weights", str(weights), "--batch-size", "1"]
    assert main([*cmd, "-o", str(out)]) == 0
    head, info = heads.load(tmp_path / "run")
    assert info["extractor_spec"]["tiny"]["storage_dtype"] == "float32"
    fs = cache.open(tmp_path / "cache").load(["pooler"])
    want = dict(zip(fs.meta["path"], heads.predict(head, fs.features)))
    table = pd.read_csv(out, keep_default_na=False)
    got = {str(Path(p).relative_to(tmp_path)): s for p, s in zip(table["path"], table["p_fake"])}
    assert got.keys() == want.keys()
    np.testing.assert_allclose([got[k] for k in want], list(want.values()), rtol=1e-15, atol=0)  # CSV round trip
