"""Opt-in input standardisation: training-set statistics, applied by fit/predict/explain, saved with the head."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from aigi import heads


def badly_scaled(n: int = 2000, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Separable along dim 0, but every dim sits on a large offset with scales from 1e-3 to 1e2."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.standard_normal((n, d))
    x[:, 0] += 2.0 * y
    scale = np.logspace(-3, 2, d)
    return (x * scale + 500.0).astype(np.float32), y


def test_statistics_and_scores_follow_the_formula(tmp_path: Path) -> None:
    x, y = badly_scaled()
    head = heads.build("linear", inputs=["f"], in_dim=16, standardize=True)
    heads.fit(head, {"f": x}, y, cfg=heads.FitConfig(epochs=5, batch_size=128, lr=1e-2))
    mean, std = x.astype(np.float64).mean(0), x.astype(np.float64).std(0)
    np.testing.assert_allclose(head.input_norm.mean_0.numpy(), mean, rtol=1e-6)
    np.testing.assert_allclose(head.input_norm.std_0.numpy(), std, rtol=1e-6)
    w, b = head.linear.weight.detach().double().numpy()[0], float(head.linear.bias.detach())
    z = ((x - mean.astype(np.float32)) / std.astype(np.float32)).astype(np.float64) @ w + b
    np.testing.assert_allclose(heads.predict(head, {"f": x}), 1 / (1 + np.exp(-z)), atol=1e-5)
    assert roc_auc_score(y, heads.predict(head, {"f": x})) > 0.9

    heads.save(head, tmp_path / "h")
    assert json.loads((tmp_path / "h" / "head.json").read_text())["standardize"] is True
    again, _ = heads.load(tmp_path / "h")
    np.testing.assert_array_equal(heads.predict(again, {"f": x}), heads.predict(head, {"f": x}))


def test_default_is_raw_features_and_multi_stage_heads_work() -> None:
    x, y = badly_scaled(seed=1)
    plain = heads.build("linear", inputs=["f"], in_dim=16)
    assert not hasattr(plain, "input_norm")
    src = np.where(y == 1, np.where(np.arange(len(y)) % 2, "vae:a", "sr:b"), "real")
    gating = heads.build(
        "gating", inputs=["f"], in_dim=16, standardize=True, experts={"vae": ["vae:*"], "sr": ["sr:*"]}
    )
    torch.manual_seed(0)
    heads.fit(gating, {"f": x}, y, cfg=heads.FitConfig(epochs=5, batch_size=128, lr=1e-2), groups={"source": src})
    assert roc_auc_score(y, heads.predict(gating, {"f": x})) > 0.9
    assert heads.explain(gating, {"f": x})["gates"].shape == (len(y), 2)
