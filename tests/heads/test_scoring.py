"""Scoring wide heads in row slices: one forward's numbers (up to float32 rounding), in bounded slices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import aigi.heads.train as train
from aigi import heads
from tests.heads.synth import make_set

HEADS = {
    "gating": {"experts": {"vae": ["vae:*"], "sr": ["sr:*"]}, "rank": 4},
    "router": {"domains": ["human", "animal", "scene"], "rank": 4, "router_hidden": 32},
    "prototype": {"embed_dim": 16, "per_class": 4, "num_heads": 2},
}


@pytest.mark.parametrize("name", sorted(HEADS))
def test_sliced_scores_equal_one_forward_over_all_rows(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_set(900, d=256, seed=3)
    head = heads.build(name, dims={"a": (256,)}, inputs="a", seed=0, **HEADS[name])
    heads.fit(head, data["X"], data["y"], cfg=heads.FitConfig(epochs=1, batch_size=128), groups=data["groups"])
    with torch.inference_mode():
        whole = head({"a": torch.from_numpy(data["X"]["a"])}).double().numpy()  # float32 logits
    calls = []
    forward = head.forward
    monkeypatch.setattr(head, "forward", lambda x: calls.append(len(x["a"])) or forward(x))
    monkeypatch.setattr(train, "SCORE_BYTES", 100 * 256 * 4)  # 100 rows of 256 float32 per forward
    sliced = heads.logits(head, data["X"], batch_size=65536)
    assert calls == [100] * 9  # 900 rows read at once, scored 100 at a time
    np.testing.assert_allclose(sliced, whole, rtol=1e-5, atol=1e-6)
    calls.clear()
    np.testing.assert_allclose(heads.logits(head, data["X"], batch_size=250), whole, rtol=1e-5, atol=1e-6)
    assert calls == [100, 100, 50] * 3 + [100, 50]  # reads of 250 rows (the last 150), each sliced
