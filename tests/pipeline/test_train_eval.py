"""`aigi train` + `aigi eval` on small caches: metadata, validation policy, fingerprints, scores recomputed by hand."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from safetensors.numpy import load_file
from sklearn.metrics import average_precision_score, roc_auc_score

from aigi import cache
from aigi.cli import main
from aigi.pipeline.config import load_config
from aigi.pipeline.metrics import calibrate_threshold
from aigi.pipeline.rows import train_val_rows, val_rows


def _id(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def make_cache(
    path: Path, *, ratios: dict[str, float], feature: str = "f", dim: int = 8, seed: int = 0, spec_tag: str = "A"
) -> Path:
    """60 reals, each with a paired `vae` fake, plus 30 unpaired `gan` fakes; fakes are shifted along dims 0-2."""
    rng = np.random.default_rng(seed)
    rows, feats = [], []
    for i in range(60):
        real = _id(f"real{i}")
        rows.append((real, f"real/{i}.png", 0, "real", real))
        rows.append((_id(f"vae{i}"), f"vae/{i}.png", 1, "vae", real))
    rows += [(_id(f"gan{i}"), f"gan/{i}.png", 1, "gan", "") for i in range(30)]
    meta = pd.DataFrame(rows, columns=["image_id", "path", "label", "source", "pair_id"]).assign(view="orig")
    meta = cache.assign_splits(meta, ratios, seed=seed)
    x = rng.standard_normal((len(meta), dim)).astype(np.float32)
    x[meta["label"].to_numpy() == 1, :3] += 1.2
    feats = {feature: x}
    spec = {"extractor": f"synthetic-{spec_tag}", "feature": feature, "dim": dim}
    with cache.CacheWriter(path, spec=spec, features={feature: (dim,)}) as writer:
        writer.append(meta, feats)
    return path


def write_config(path: Path, *, head: dict, caches: dict, **fit) -> Path:
    cfg = {
        "head": head,
        "fit": {"optimizer": "adam", "lr": 0.05, "epochs": 5, "batch_size": 16, "seed": 0, "device": "cpu", **fit},
        "data": {"caches": caches, "where": {"view": "orig"}},
    }
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def manual_scores(run: Path, x: np.ndarray) -> np.ndarray:
    """P(fake) of a linear head straight from its safetensors file: sigmoid(x @ w.T + b)."""
    state = load_file(str(run / "head.safetensors"))
    logits = x.astype(np.float64) @ state["linear.weight"].astype(np.float64).T + state["linear.bias"]
    return 1.0 / (1.0 + np.exp(-logits[:, 0]))


def train_linear_run(tmp: Path, ratios: dict[str, float]) -> dict:
    """A linear head trained by `aigi train` on a synthetic cache split by `ratios`: {tmp, cache, cfg, run}."""
    store = make_cache(tmp / "cache", ratios=ratios)
    cfg = write_config(tmp / "run.yaml", head={"name": "linear", "inputs": ["f"]}, caches={"syn": str(store)})
    assert main(["train", str(cfg), "-o", str(tmp / "run")]) == 0
    return {"tmp": tmp, "cache": store, "cfg": cfg, "run": tmp / "run"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return train_linear_run(tmp_path_factory.mktemp("trained"), {"train": 0.6, "val": 0.2, "test": 0.2})


def test_train_writes_head_with_metadata(trained: dict) -> None:
    run, store = trained["run"], cache.open(trained["cache"])
    info = json.loads((run / "head.json").read_text())
    assert info["name"] == "linear" and info["inputs"] == ["f"]
    assert info["fingerprints"] == {"syn": store.fingerprint}
    assert info["extractor_spec"]["syn"] == store.spec
    meta = store.meta()
    assert info["train_rows"] == int((meta["split"] == "train").sum())
    assert info["val_rows"] == int((meta["split"] == "val").sum()) and "split == 'val'" in info["val_policy"]
    assert 0.5 < info["val_metrics"]["auc"] <= 1.0
    assert load_config(run / "config.yaml").data.caches == {"syn": str(trained["cache"])}


def test_eval_matches_scores_computed_by_hand(trained: dict, capsys: pytest.CaptureFixture) -> None:
    run, rep = trained["run"], trained["tmp"] / "report"
    assert main(["eval", str(run), "-o", str(rep)]) == 0
    assert "mean ACC" in capsys.readouterr().out
    test = cache.open(trained["cache"]).load(["f"], where={"split": "test"})
    scores = manual_scores(run, test.features["f"])
    got = pd.read_parquet(rep / "scores.parquet")
    assert got["image_id"].tolist() == test.meta["image_id"].tolist()
    np.testing.assert_allclose(got["score"].to_numpy(), scores, rtol=1e-5, atol=1e-6)
    metrics = json.loads((rep / "metrics.json").read_text())
    assert set(metrics["groups"]) == {"vae", "gan"} and metrics["threshold"] == 0.5
    meta, labels = test.meta, test.labels
    reals = (meta["source"] == "real").to_numpy()
    vae = (meta["source"] == "vae").to_numpy()
    # vae fakes against the reals they were made from; gan fakes (no pair_id) against every real of the split
    groups = {
        "vae": vae | (reals & meta["pair_id"].isin(meta["pair_id"][vae]).to_numpy()),
        "gan": (meta["source"] == "gan").to_numpy() | reals,
    }
    for name, mask in groups.items():
        y, s = labels[mask], scores[mask]
        m = metrics["groups"][name]
        assert m["n"] == int(mask.sum())
        assert m["acc"] == pytest.approx(np.mean((s >= 0.5) == (y == 1)))
        assert m["real_acc"] == pytest.approx(np.mean(s[y == 0] < 0.5))
        assert m["fake_acc"] == pytest.approx(np.mean(s[y == 1] >= 0.5))
        assert m["ap"] == pytest.approx(average_precision_score(y, s), abs=1e-6)
        assert m["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-6)
    assert metrics["mean"]["acc"] == pytest.approx(
        (metrics["groups"]["vae"]["acc"] + metrics["groups"]["gan"]["acc"]) / 2
    )
    for name in ("report.md", "metrics.csv", "roc.png", "acc_by_group.png", "score_hist.png"):
        assert (rep / name).stat().st_size > 0


def test_threshold_val_is_calibrated_on_the_val_rows(trained: dict) -> None:
    run, rep = trained["run"], trained["tmp"] / "report_val"
    assert main(["eval", str(run), "--threshold", "val", "--by", "split", "-o", str(rep)]) == 0
    val = cache.open(trained["cache"]).load(["f"], where={"split": "val"})
    expected = calibrate_threshold(val.labels, manual_scores(run, val.features["f"]))
    metrics = json.loads((rep / "metrics.json").read_text())
    assert metrics["threshold"] == pytest.approx(expected, abs=1e-6)
    assert list(metrics["groups"]) == ["test"] and "calibrated on val" in metrics["threshold_source"]


def test_threshold_val_loads_only_the_validation_rows(trained: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    import aigi.pipeline.rows as rows_mod

    asked = []
    real = rows_mod.load_rows
    monkeypatch.setattr(rows_mod, "load_rows", lambda *a, **k: asked.append(k["where"]) or real(*a, **k))
    assert main(["eval", str(trained["run"]), "--threshold", "val", "-o", str(trained["tmp"] / "report_v")]) == 0
    assert sorted(w["split"] for w in asked) == ["test", "val"]  # the scored split and val, never train


def test_eval_refuses_a_cache_with_another_fingerprint(trained: dict, capsys: pytest.CaptureFixture) -> None:
    other = make_cache(trained["tmp"] / "other", ratios={"train": 0.5, "test": 0.5}, spec_tag="B")
    code = main(["eval", str(trained["run"]), "--cache", str(other), "-o", str(trained["tmp"] / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert cache.open(other).fingerprint[:16] in err and cache.open(trained["cache"]).fingerprint[:16] in err
    assert "synthetic-A" in err and "synthetic-B" in err  # the differing spec field


def test_validation_falls_back_to_a_seeded_share_of_pairs(tmp_path: Path) -> None:
    store = make_cache(tmp_path / "c", ratios={"train": 0.8, "test": 0.2})
    cfg = load_config(write_config(tmp_path / "r.yaml", head={"name": "linear", "inputs": ["f"]}, caches=str(store)))
    caches = {"c": cache.open(store)}
    train, val, how = train_val_rows(caches, cfg.data, inputs=["f"])
    key = lambda fs: set(fs.meta["pair_id"].where(fs.meta["pair_id"] != "", fs.meta["image_id"]))
    assert not key(train) & key(val)  # no pair straddles train and val
    n_pairs = len(key(train) | key(val))
    assert len(key(val)) == round(0.1 * n_pairs) and "seeded 0.1" in how
    again = train_val_rows(caches, cfg.data, inputs=["f"])[1]
    assert again.meta["image_id"].tolist() == val.meta["image_id"].tolist()
    only_val, only_how = val_rows(caches, cfg.data, inputs=["f"])
    assert only_val.meta["image_id"].tolist() == val.meta["image_id"].tolist() and only_how == how


def test_two_caches_are_joined_for_a_fusion_head(tmp_path: Path) -> None:
    a = make_cache(tmp_path / "a", ratios={"train": 0.7, "test": 0.3}, feature="x", dim=4, spec_tag="A")
    b = make_cache(tmp_path / "b", ratios={"train": 0.7, "test": 0.3}, feature="y", dim=6, spec_tag="B", seed=0)
    cfg = write_config(
        tmp_path / "r.yaml", head={"name": "concat", "inputs": ["x", "y"]}, caches={"a": str(a), "b": str(b)}
    )
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--set", "data.val_fraction=0", "-o", str(run)]) == 0
    info = json.loads((run / "head.json").read_text())
    assert set(info["fingerprints"]) == {"a", "b"} and info["config"]["in_dims"] == [4, 6]
    assert main(["eval", str(run), "-o", str(tmp_path / "rep")]) == 0
    n_test = int((cache.open(a).meta()["split"] == "test").sum())
    assert len(pd.read_parquet(tmp_path / "rep" / "scores.parquet")) == n_test


def test_missing_rows_and_features_are_clear_errors(trained: dict, capsys: pytest.CaptureFixture) -> None:
    assert main(["eval", str(trained["run"]), "--split", "holdout", "-o", str(trained["tmp"] / "x")]) == 2
    assert "--split" in capsys.readouterr().err
    cfg = write_config(
        trained["tmp"] / "bad.yaml", head={"name": "linear", "inputs": ["g"]}, caches=str(trained["cache"])
    )
    assert main(["train", str(cfg), "-o", str(trained["tmp"] / "y")]) == 2
    assert "'g' is in no cache" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# must-show: UAR's protocol on the shared UAR sample, against a plain reference loop


def reference_uar(train: list[Path], y_train: np.ndarray, test: list[Path], *, seed: int) -> np.ndarray:
    """UAR's recipe written plainly: Linear(3072, 1), Adam lr 1e-3, batch 32, 1 epoch, BCE-with-logits."""
    import torch

    load = lambda files: torch.from_numpy(np.concatenate([np.load(f, allow_pickle=False) for f in files]))
    x_train, x_test = load(train), load(test)
    target = torch.as_tensor(y_train, dtype=torch.float32)
    torch.manual_seed(seed)
    model = torch.nn.Linear(3072, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.randperm(len(x_train))
    for start in range(0, len(order), 32):
        idx = order[start : start + 32]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x_train[idx])[:, 0], target[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return torch.sigmoid(model(x_test)[:, 0]).numpy()


SEEDS = range(5)  # one epoch of batch-32 Adam moves ACC by ~0.5 pt from seed to seed: compare 5-seed means


@pytest.mark.slow
def test_uar_protocol_matches_a_plain_reference(tmp_path: Path, uar_sample: Path) -> None:
    store = tmp_path / "uar"
    assert main(["import", "uar", str(uar_sample), "--cache", str(store), "--split-ratio", "train=0.8,test=0.2"]) == 0
    config = Path(__file__).resolve().parents[2] / "configs" / "uar.yaml"
    ours = []
    for seed in SEEDS:
        run, rep = tmp_path / f"run{seed}", tmp_path / f"rep{seed}"
        assert main(["train", str(config), "--cache", str(store), "--set", f"fit.seed={seed}", "-o", str(run)]) == 0
        assert main(["eval", str(run), "-o", str(rep)]) == 0
        mean = json.loads((rep / "metrics.json").read_text())["mean"]
        ours.append((mean["acc"], mean["ap"]))

    meta = cache.open(store).meta()
    files = np.array([uar_sample / Path(p).parent.name / Path(p).name for p in meta["path"]])
    is_train = (meta["split"] == "train").to_numpy()
    assert is_train.sum() == 3200 and (~is_train).sum() == 800
    y_train, y_test = meta["label"].to_numpy()[is_train], meta["label"].to_numpy()[~is_train]
    ref = []
    for seed in SEEDS:
        s = reference_uar(list(files[is_train]), y_train, list(files[~is_train]), seed=seed)
        ref.append((np.mean((s >= 0.5) == (y_test == 1)), average_precision_score(y_test, s)))
    ours_acc, ours_ap = np.mean(ours, axis=0)
    ref_acc, ref_ap = np.mean(ref, axis=0)
    print(
        f"UAR sample, {len(SEEDS)} seeds: aigi ACC {100 * ours_acc:.2f} AP {100 * ours_ap:.2f}; "
        f"reference ACC {100 * ref_acc:.2f} AP {100 * ref_ap:.2f}"
    )
    assert abs(ours_acc - ref_acc) <= 0.005
    assert abs(ours_ap - ref_ap) <= 0.005
