"""The head bank: every head kind trains in a bank as it trains alone; batches are read once per pass; linear heads
step together; shared stages train once; a failing head fails alone; bad inputs are refused at the boundary."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from aigi import heads
from aigi.heads import bank as bank_mod
from tests.heads.synth import make_set

EXPERTS = {"vae": ["vae:*"], "sr": ["sr:*"]}
KINDS = {
    "linear": {},
    "mlp": {"hidden": 8, "dropout": 0.3},  # dropout: each head draws from its own RNG stream
    "expert": {"column": "source", "subset": ["vae:*"], "rank": 4},
    "gating": {"experts": EXPERTS, "rank": 4, "gate_hidden": 8},
    "concat": {"experts": EXPERTS, "rank": 4},
    "mean": {"experts": EXPERTS, "rank": 4},
    "router": {"domains": ["human", "animal", "scene"], "rank": 4, "router_hidden": 16},
    "prototype": {"embed_dim": 8, "per_class": 4, "num_heads": 2},
}
CFG = heads.FitConfig(epochs=2, batch_size=64, lr=3e-3, balance=True, device="cpu")


@pytest.fixture(scope="module")
def data() -> dict:
    train, val = make_set(360, seed=3), make_set(120, seed=4)
    return {"X": train["X"], "y": train["y"], "groups": train["groups"], "X_val": val["X"], "y_val": val["y"],
            "groups_val": val["groups"]}  # fmt: skip


def _head(name: str, seed: int) -> torch.nn.Module:
    return heads.build(name, dims={"a": (16,)}, inputs="a", seed=seed, **KINDS[name])


def _fit_kwargs(data: dict) -> dict:
    return {k: data[k] for k in ("X_val", "y_val", "groups", "groups_val")}


def _same_history(a: dict, b: dict) -> None:
    assert len(a["stages"]) == len(b["stages"])
    for sa, sb in zip(a["stages"], b["stages"], strict=True):
        assert sa["name"] == sb["name"] and sa["best_epoch"] == sb["best_epoch"]
        for ea, eb in zip(sa["epochs"], sb["epochs"], strict=True):
            assert ea["loss"] == pytest.approx(eb["loss"], rel=1e-5, abs=1e-7)
            assert ea.get("val_ap") == pytest.approx(eb.get("val_ap"), rel=1e-5)


@pytest.mark.parametrize("name", sorted(KINDS))
def test_a_head_in_a_bank_trains_as_it_trains_alone(name: str, data: dict) -> None:
    alone = _head(name, 1)
    hist = heads.fit(alone, data["X"], data["y"], cfg=dataclasses.replace(CFG, seed=1), **_fit_kwargs(data))
    others = "gating" if name != "gating" else "linear"
    members = [heads.Member(_head(name, s), dataclasses.replace(CFG, seed=s)) for s in (0, 1, 2)]
    members.append(heads.Member(_head(others, 1), dataclasses.replace(CFG, seed=1)))
    members.append(heads.Member(_head(name, 1), dataclasses.replace(CFG, seed=1, lr=1e-3)))
    out = heads.fit_many(members, data["X"], data["y"], **_fit_kwargs(data))
    twin = members[1].head
    for key, value in alone.state_dict().items():
        if name == "linear":  # stepped with the other linear heads as one matmul: float rounding apart
            torch.testing.assert_close(value, twin.state_dict()[key], rtol=1e-5, atol=1e-6)
        else:  # bit for bit
            assert torch.equal(value, twin.state_dict()[key]), key
    _same_history(hist, out[1])
    assert not torch.equal(next(iter(members[0].head.parameters())), next(iter(twin.parameters())))


def test_the_linear_heads_of_a_sweep_step_as_one_matmul(data: dict, monkeypatch) -> None:
    grid = [(lr, seed) for lr in (1e-3, 3e-3, 1e-2, 3e-2) for seed in (0, 1)]
    calls = []
    real = bank_mod.LinearStack.__call__
    monkeypatch.setattr(
        bank_mod.LinearStack, "__call__", lambda self, *a: calls.append(len(self.steps)) or real(self, *a)
    )
    members = [heads.Member(_head("linear", s), dataclasses.replace(CFG, lr=lr, seed=s)) for lr, s in grid]
    heads.fit_many(members, data["X"], data["y"])
    steps = 2 * int(np.ceil(len(data["y"]) / CFG.batch_size))
    assert calls == [4] * (2 * steps)  # per step, one stacked call for the 4 learning rates of each seed
    for (lr, seed), m in zip(grid, members, strict=True):
        alone = _head("linear", seed)
        heads.fit(alone, data["X"], data["y"], cfg=dataclasses.replace(CFG, lr=lr, seed=seed))
        torch.testing.assert_close(alone.linear.weight, m.head.linear.weight, rtol=1e-5, atol=1e-6)


def test_shared_stages_are_trained_once_in_a_bank(data: dict) -> None:
    store: dict = {}
    members = [heads.Member(_head(name, 0), CFG) for name in ("concat", "gating", "mean")]
    out = heads.fit_many(members, data["X"], data["y"], stage_store=store, **_fit_kwargs(data))
    assert len(store) == 2  # one entry per expert
    reused = [[s.get("reused", False) for s in h["stages"]] for h in out]
    assert sorted(reused) == [[False, False, False], [True, True, False], [True, True, False]]
    for key, value in members[0].head.experts.state_dict().items():
        assert torch.equal(value, members[1].head.experts.state_dict()[key])


def test_a_failing_head_fails_alone(data: dict) -> None:
    one_class = heads.build("expert", dims={"a": (16,)}, inputs="a", column="source", subset=["gan:*"], rank=4)
    exploding = heads.Member(_head("mlp", 0), dataclasses.replace(CFG, lr=1e30))
    members = [heads.Member(one_class, CFG), exploding, heads.Member(_head("linear", 0), CFG)]
    out = heads.fit_many(members, data["X"], data["y"], groups=data["groups"], errors="keep")
    assert isinstance(out[0], ValueError) and "one class" in str(out[0])
    assert isinstance(out[1], ValueError) and "training loss is" in str(out[1]) and "lower fit.lr" in str(out[1])
    assert isinstance(out[2], dict) and np.isfinite(out[2]["stages"][0]["epochs"][-1]["loss"])
    with pytest.raises(ValueError, match="one class"):
        heads.fit_many(members[:1], data["X"], data["y"], groups=data["groups"])


def test_bad_inputs_are_refused_at_the_boundary(data: dict) -> None:
    head = _head("linear", 0)
    X = data["X"]["a"].copy()
    X[7, 3] = np.nan
    with pytest.raises(ValueError, match=r"X: feature 'a' holds NaN or inf values \(first in rows 0\.\.359\)"):
        heads.fit(head, X, data["y"])
    with pytest.raises(ValueError, match="X_val: feature 'a' holds NaN"):
        heads.fit(head, data["X"]["a"], data["y"], X_val=X, y_val=data["y"])
    for bad in (float("inf"), float("nan"), -1.0):
        with pytest.raises(ValueError, match=r"lr=.*a finite number > 0"):
            heads.FitConfig(lr=bad)


def test_a_streamed_bank_reads_each_pass_once_for_every_head(tmp_path) -> None:
    from aigi import cache
    from aigi.cache.stream import FeatureStream, open_stream
    from tests.heads.test_stream_fit import write_cache

    store = cache.open(write_cache(tmp_path / "c", 3000, 8, shard_size=700))
    train = open_stream(store, ["x"], {"split": "train"}, buffer_bytes=1 << 20)
    passes = []
    real = FeatureStream.batches

    def counted(self, *args, **kwargs):
        passes.append(kwargs.get("shuffle", False))
        return real(self, *args, **kwargs)

    cfg = heads.FitConfig(epochs=3, batch_size=128, seed=5, device="cpu")
    members = [heads.Member(heads.build("linear", inputs="x", in_dim=8, seed=5), dataclasses.replace(cfg, lr=lr))
               for lr in (1e-3, 1e-2, 1e-1)]  # fmt: skip
    mlp = heads.build("mlp", inputs="x", in_dim=8, hidden=4, seed=5)
    try:
        FeatureStream.batches = counted
        out = heads.fit_many([*members, heads.Member(mlp, cfg)], train, train.labels)
    finally:
        FeatureStream.batches = real
    assert passes.count(True) == 3 and all(h["streamed"] for h in out)  # one pass per epoch for all four heads
    for m in members:
        alone = heads.build("linear", inputs="x", in_dim=8, seed=5)
        heads.fit(alone, train, train.labels, cfg=m.cfg)
        torch.testing.assert_close(alone.linear.weight, m.head.linear.weight, rtol=1e-5, atol=1e-6)
    alone = heads.build("mlp", inputs="x", in_dim=8, hidden=4, seed=5)
    heads.fit(alone, train, train.labels, cfg=cfg)
    for key, value in alone.state_dict().items():
        assert torch.equal(value, mlp.state_dict()[key]), key


def test_the_api_fits_a_sweep_as_a_bank_and_refuses_bad_inputs(data: dict) -> None:
    import aigi

    grid = [{"lr": lr, "seed": s, "epochs": 2, "batch_size": 64} for lr in (1e-3, 1e-2) for s in (0, 1)]
    sweep = [aigi.build_head("linear", inputs=["a"], in_dim=16, seed=g["seed"]) for g in grid]
    out = aigi.fit_many(sweep, data["X"], data["y"], settings=grid)
    assert len(out) == 4 and all(np.isfinite(h["stages"][0]["epochs"][-1]["loss"]) for h in out)
    alone = aigi.build_head("linear", inputs=["a"], in_dim=16, seed=1)
    aigi.fit(alone, data["X"], data["y"], **grid[3])
    torch.testing.assert_close(alone.linear.weight, sweep[3].linear.weight, rtol=1e-5, atol=1e-6)
    X = {"a": data["X"]["a"].copy()}
    X["a"][0, 0] = np.inf
    with pytest.raises(ValueError, match="feature 'a' holds NaN or inf"):
        aigi.fit(alone, X, data["y"])
    with pytest.raises(ValueError, match="lr=inf"):
        aigi.fit(alone, data["X"], data["y"], lr=float("inf"))
    with pytest.raises(ValueError, match="one mapping for every head"):
        aigi.fit_many(sweep, data["X"], data["y"], settings=grid[:3])


def test_nan_features_streamed_from_a_cache_are_named_when_the_loss_breaks(tmp_path) -> None:
    import pandas as pd

    from aigi import cache
    from aigi.cache.stream import open_stream

    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 6)).astype(np.float16)
    meta = pd.DataFrame({"image_id": [f"{i:04d}" for i in range(400)], "path": [f"{i}.png" for i in range(400)],
                         "label": np.arange(400) % 2, "source": "real", "split": "train"})  # fmt: skip
    with cache.CacheWriter(tmp_path / "c", spec={"synthetic": "nan"}, features={"v": (6,)}, dtype="float16") as w:
        w.append(meta, {"v": x})
    import h5py

    with h5py.File(next((tmp_path / "c" / "shards").glob("*.h5")), "r+") as f:  # a NaN the writer would refuse
        f["features"]["v"][123, 2] = np.nan
    rows = open_stream(cache.open(tmp_path / "c"), ["v"])
    for name in ("linear", "mlp"):
        head = heads.build(name, inputs="v", in_dim=6, **({"hidden": 4} if name == "mlp" else {}))
        with pytest.raises(ValueError, match=r"X: feature 'v' holds NaN or inf values \(the training loss is nan\)"):
            heads.fit(head, rows, rows.labels, cfg=heads.FitConfig(epochs=1, batch_size=64))
