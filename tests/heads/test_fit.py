"""The fit loop: class balancing, early stopping, the cosine schedule, input checks; registry errors."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from aigi import heads
from aigi.heads.train import class_weights


def test_class_weights_by_hand() -> None:
    np.testing.assert_allclose(class_weights(np.array([0, 0, 0, 1])), [2 / 3, 2 / 3, 2 / 3, 2.0])


def test_balancing_moves_an_uninformative_head_to_one_half() -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((1000, 4)).astype(np.float32) * 0.01  # no signal: only the bias can learn
    y = np.r_[np.zeros(900), np.ones(100)].astype(int)
    cfg = heads.FitConfig(epochs=30, batch_size=100, lr=0.05, optimizer="adam")
    plain, balanced = (heads.build("linear", inputs="x", in_dim=4) for _ in range(2))
    heads.fit(plain, X, y, cfg=cfg)
    heads.fit(balanced, X, y, cfg=dataclasses.replace(cfg, balance=True))
    assert heads.predict(plain, X).mean() == pytest.approx(0.1, abs=0.02)  # the base rate
    assert heads.predict(balanced, X).mean() == pytest.approx(0.5, abs=0.02)


def test_early_stop_restores_the_best_epoch() -> None:
    rng = np.random.default_rng(1)
    X = rng.standard_normal((400, 8)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    y_val = 1 - y[:200]  # validation disagrees with training: AP only drops after the first epoch
    cfg = heads.FitConfig(epochs=10, batch_size=50, lr=0.05, early_stop=2)
    head = heads.build("linear", inputs="x", in_dim=8)
    hist = heads.fit(head, X, y, cfg=cfg, X_val=X[:200], y_val=y_val)
    epochs = hist["stages"][0]["epochs"]
    aps = [e["val_ap"] for e in epochs]
    assert hist["stages"][0]["best_epoch"] == int(np.argmax(aps)) == 0
    assert len(epochs) == 3 and hist["val_ap"] == aps[0]
    one_epoch = heads.build("linear", inputs="x", in_dim=8)
    heads.fit(one_epoch, X, y, cfg=dataclasses.replace(cfg, epochs=1, early_stop=0))
    np.testing.assert_array_equal(heads.predict(head, X), heads.predict(one_epoch, X))


def test_cosine_schedule_values() -> None:
    want = [1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4)), 0.0]
    got = [heads.lr_at(s, 5, lr=1.0, schedule="cosine") for s in range(5)]
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert heads.lr_at(3, 5, lr=0.1, schedule="constant") == 0.1
    assert heads.lr_at(4, 5, lr=2.0, schedule="cosine", min_lr_ratio=0.1) == pytest.approx(0.2)
    X = np.random.default_rng(2).standard_normal((100, 3)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    hist = heads.fit(
        heads.build("linear", inputs="x", in_dim=3),
        X,
        y,
        cfg=heads.FitConfig(epochs=4, batch_size=25, lr=0.01, schedule="cosine"),
    )
    lrs = [e["lr"] for e in hist["stages"][0]["epochs"]]  # lr of each epoch's last step: steps 3, 7, 11, 15 of 16
    np.testing.assert_allclose(lrs, [heads.lr_at(s, 16, lr=0.01, schedule="cosine") for s in (3, 7, 11, 15)])


def test_fit_rejects_bad_inputs() -> None:
    head = heads.build("linear", inputs="x", in_dim=3)
    X = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="0 \\(real\\) or 1"):
        heads.fit(head, X, np.array([0, 1, 2, 1]))
    with pytest.raises(ValueError, match="needs feature"):
        heads.fit(head, {"y": X}, np.array([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="FitConfig"):
        heads.FitConfig(optimizer="sgd")
    gating = heads.build("gating", inputs="x", in_dim=3)
    with pytest.raises(ValueError, match="'source'"):
        heads.fit(gating, X, np.array([0, 1, 0, 1]))


def test_registry_errors_name_close_matches() -> None:
    with pytest.raises(ValueError, match="Did you mean router"):
        heads.build("ruter", inputs="x", in_dim=3)
    with pytest.raises(ValueError, match="did you mean \\['hidden'\\]"):
        heads.build("mlp", inputs="x", in_dim=3, hiden=4)
    with pytest.raises(ValueError, match="in_dim"):
        heads.build("linear", inputs="x")
    with pytest.raises(ValueError, match="already registered"):
        heads.register_head("linear")(type(heads.build("linear", inputs="x", in_dim=1)))
    assert heads.build("linear", inputs="x", dims={"x": (7,)}).cfg.in_dim == 7
    assert heads.build("concat", inputs=["x", "z"], dims={"x": (7,), "z": (2,)}).cfg.in_dims == (7, 2)


def test_build_is_seeded() -> None:
    a, b = (heads.build("mlp", inputs="x", in_dim=5, seed=2) for _ in range(2))
    c = heads.build("mlp", inputs="x", in_dim=5, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.net[0].weight, c.net[0].weight)


def test_gapl_mlp_form() -> None:
    head = heads.build("mlp", inputs="x", in_dim=6, gapl=True, embed_dim=4)
    assert head.proj.bias is None and head.fc.bias is None and head.proj.weight.shape == (4, 6)
    x = torch.randn(3, 6)
    e = x @ head.proj.weight.T
    want = (e / e.norm(dim=1, keepdim=True)) @ head.fc.weight.T
    torch.testing.assert_close(head({"x": x}), want.squeeze(-1))


def test_expert_trains_on_its_subset_only() -> None:
    from tests.heads.synth import make_set

    data = make_set(300, seed=4)
    head = heads.build("expert", inputs="a", in_dim=16, column="source", subset=["vae:*"], rank=2)
    hist = heads.fit(head, data["X"], data["y"], groups=data["groups"], cfg=heads.FitConfig(epochs=1))
    src = data["groups"]["source"]
    assert hist["stages"][0]["rows"] == int(((src == "real") | (src == "vae:x")).sum())
    dom = heads.build("expert", inputs="a", in_dim=16, column="domain", subset=["human"], rank=2)
    hist = heads.fit(dom, data["X"], data["y"], groups=data["groups"], cfg=heads.FitConfig(epochs=1))
    assert hist["stages"][0]["rows"] == int((data["groups"]["domain"] == "human").sum())


@pytest.mark.parametrize(
    "cfg",
    [
        heads.FitConfig(optimizer="adam", lr=1e-2, epochs=3, batch_size=32),
        heads.FitConfig(optimizer="adam", lr=1e-2, weight_decay=0.05, epochs=2, batch_size=7, balance=True),
        heads.FitConfig(
            optimizer="adamw",
            lr=1e-2,
            weight_decay=0.1,
            epochs=2,
            batch_size=16,
            schedule="cosine",
            label_smoothing=0.1,
        ),
    ],
)
def test_fast_linear_step_matches_autograd_and_torch_adam(cfg: heads.FitConfig, monkeypatch) -> None:
    rng = np.random.default_rng(3)
    X = rng.standard_normal((300, 12)).astype(np.float32)
    y = (X[:, :3].sum(1) + rng.standard_normal(300) > 0.8).astype(int)
    _assert_same_training(_fast_and_autograd(X, y, cfg, monkeypatch))


def test_fast_linear_step_on_float16_batches_in_blocks_matches_autograd(monkeypatch) -> None:
    """Float16 rows reach the fast step as stored and are widened block by block inside it (blocks of 8 rows here,
    batches of 64): the same training as autograd on the widened rows."""
    import aigi.heads._fastlinear as fastlinear

    rng = np.random.default_rng(5)
    X = rng.standard_normal((400, 12)).astype(np.float16)
    y = (X[:, :3].astype(np.float32).sum(1) + rng.standard_normal(400) > 0.5).astype(int)
    cfg = heads.FitConfig(optimizer="adam", lr=1e-2, epochs=2, batch_size=64, balance=True)
    monkeypatch.setattr(fastlinear, "BLOCK_BYTES", 8 * 12 * 4)
    seen = []
    step = fastlinear.LinearAdamStep.__call__

    def spy(self, x, target, weight):
        seen.append(x["x"].dtype)
        return step(self, x, target, weight)

    monkeypatch.setattr(fastlinear.LinearAdamStep, "__call__", spy)
    results = _fast_and_autograd(X, y, cfg, monkeypatch)
    assert seen and set(seen) == {torch.float16}
    _assert_same_training(results)


def _fast_and_autograd(X, y, cfg: heads.FitConfig, monkeypatch) -> list:
    """(weight, bias, history) of a linear head fitted with the fast step, then with autograd."""
    import aigi.heads.bank as bank

    results = []
    for fast in (True, False):
        monkeypatch.setattr(bank, "FAST_LINEAR", fast)
        head = heads.build("linear", inputs="x", in_dim=12)
        hist = heads.fit(head, X, y, cfg=cfg)
        results.append((head.linear.weight.detach().clone(), head.linear.bias.detach().clone(), hist))
    return results


def _assert_same_training(results: list) -> None:
    (w1, b1, h1), (w2, b2, h2) = results
    torch.testing.assert_close(w1, w2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b1, b2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        [e["loss"] for e in h1["stages"][0]["epochs"]], [e["loss"] for e in h2["stages"][0]["epochs"]], rtol=1e-5
    )
