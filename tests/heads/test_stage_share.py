"""Shared expert stages: gating, concat and mean reuse identical frozen experts with bit-identical results."""

from __future__ import annotations

import numpy as np
import torch

from aigi import heads
from tests.heads.synth import make_set

EXPERTS = {"vae": ["vae:*"], "sr": ["sr:*"]}


def _fit(name: str, data: dict, *, seed: int = 0, store: dict | None = None) -> tuple[object, dict]:
    head = heads.build(name, dims={"a": (16,)}, inputs="a", experts=EXPERTS, rank=4, seed=seed)
    cfg = heads.FitConfig(epochs=2, batch_size=64, seed=seed, lr=3e-3)
    hist = heads.fit(head, data["X"], data["y"], cfg=cfg, groups=data["groups"], stage_store=store, data_key="d")
    return head, hist


def test_concat_and_mean_reuse_the_experts_gating_trained() -> None:
    data = make_set(600, seed=7)
    store: dict = {}
    gating, _ = _fit("gating", data, store=store)
    assert len(store) == 2  # one entry per expert
    for name in ("concat", "mean"):
        alone, _ = _fit(name, data)
        shared, hist = _fit(name, data, store=store)
        assert [s.get("reused", False) for s in hist["stages"]] == [True, True, False]
        for key, value in alone.state_dict().items():  # every weight as if trained alone, bit for bit
            assert torch.equal(value, shared.state_dict()[key]), key
        for key, value in gating.experts.state_dict().items():
            assert torch.equal(value, shared.experts.state_dict()[key])
        np.testing.assert_array_equal(heads.predict(alone, data["X"]), heads.predict(shared, data["X"]))


def test_another_seed_or_other_rows_train_their_own_experts() -> None:
    data = make_set(600, seed=7)
    store: dict = {}
    _fit("gating", data, store=store)
    _, hist = _fit("concat", data, seed=1, store=store)
    assert not any(s.get("reused") for s in hist["stages"]) and len(store) == 4
    other = dict(data, y=data["y"].copy())
    other["y"][:10] = 1 - other["y"][:10]
    _, hist = _fit("mean", other, store=store)
    assert not any(s.get("reused") for s in hist["stages"])
