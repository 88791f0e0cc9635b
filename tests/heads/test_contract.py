"""Every registered head: learns a separable set, round-trips through save/load, trains what it declares."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from aigi import heads
from aigi.heads.train import head_stages, stage_parameters
from tests.heads.synth import make_set

DIMS = {"a": 16, "b": 16}
CONFIGS = {
    "linear": {"inputs": ["a"]},
    "mlp": {"inputs": ["a"], "hidden": 32},
    "expert": {"inputs": ["a", "b"], "rank": 4},
    "gating": {"inputs": ["a"], "rank": 4, "gate_hidden": 16},
    "router": {"inputs": ["a"], "domains": ["human", "animal", "scene"], "rank": 4, "router_hidden": 16},
    "prototype": {"inputs": ["a"], "embed_dim": 8, "per_class": 4, "num_heads": 2},
    "concat": {"inputs": ["a", "b"]},
    "mean": {"inputs": ["a"], "experts": {"vae": ["vae:*"], "sr": ["sr:*"]}, "rank": 4},
}
FIT = heads.FitConfig(epochs=15, batch_size=64, lr=3e-3, seed=3)
TRAIN, TEST = make_set(600, seed=0), make_set(400, seed=1)


def test_every_head_has_a_contract_config() -> None:
    # the tail_* heads run a frozen backbone tail on cached tokens: their contract is in test_tail.py
    assert sorted(CONFIGS) == [h for h in heads.available() if not heads.needs_frozen(h)]


def _fit(name: str, *, seed: int = 3, on_stage_end=None, cfg: dict | None = None) -> tuple:
    head = heads.build(name, dims=DIMS, **(cfg or CONFIGS[name]))
    fit_cfg = heads.FitConfig(**{**FIT.__dict__, "seed": seed})
    hist = heads.fit(head, TRAIN["X"], TRAIN["y"], cfg=fit_cfg, groups=TRAIN["groups"], on_stage_end=on_stage_end)
    return head, hist


@pytest.fixture(scope="module")
def fitted() -> dict:
    return {}


def _fitted(fitted: dict, name: str) -> tuple:
    if name not in fitted:
        fitted[name] = _fit(name)
    return fitted[name]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_learns_separable_set(name: str, fitted: dict) -> None:
    head, hist = _fitted(fitted, name)
    scores = heads.predict(head, TEST["X"])
    assert scores.dtype == np.float64 and scores.shape == (400,)
    assert roc_auc_score(TEST["y"], scores) > 0.9
    assert head.cfg.inputs == tuple(CONFIGS[name]["inputs"])
    assert [s["name"] for s in hist["stages"]] == [s.name for s in head_stages(head)]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_save_load_round_trip(name: str, fitted: dict, tmp_path: Path) -> None:
    head, _ = _fitted(fitted, name)
    heads.save(head, tmp_path / "h", meta={"metrics": {"auc": 0.5}, "fingerprint": "abc"})
    loaded, info = heads.load(tmp_path / "h")
    assert info["name"] == name and info["inputs"] == list(head.cfg.inputs) and info["fingerprint"] == "abc"
    assert loaded.cfg == head.cfg
    np.testing.assert_array_equal(heads.predict(loaded, TEST["X"]), heads.predict(head, TEST["X"]))
    assert not list(tmp_path.glob("h/*.tmp"))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_trainable_parameter_gets_a_gradient(name: str, fitted: dict) -> None:
    head, _ = _fitted(fitted, name)
    head.train()
    x_all = {k: torch.from_numpy(v) for k, v in TRAIN["X"].items()}
    for stage in head_stages(head):
        rows = stage.rows(TRAIN["groups"], TRAIN["y"]) if stage.rows else np.ones(len(TRAIN["y"]), bool)
        x = {k: v[torch.from_numpy(rows)] for k, v in x_all.items()}
        aux = {
            k: torch.from_numpy(np.asarray(v)[rows])
            for k, v in (stage.aux or (lambda g, y: {}))(TRAIN["groups"], TRAIN["y"]).items()
        }
        head.zero_grad(set_to_none=True)
        out = (stage.forward or (lambda xb, a: head(xb)))(x, aux)
        logits, extra = out if isinstance(out, tuple) else (out, 0.0)
        y = torch.as_tensor(TRAIN["y"][rows], dtype=torch.float32)
        (torch.nn.functional.binary_cross_entropy_with_logits(logits, y) + extra).backward()
        for pname, p in stage_parameters(head, stage).items():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}/{stage.name}: {pname} got no gradient"
    head.eval()


MULTI_STAGE = [n for n in sorted(CONFIGS) if len(head_stages(heads.build(n, dims=DIMS, **CONFIGS[n]))) > 1]


@pytest.mark.parametrize("name", MULTI_STAGE)
def test_stages_train_their_parts_and_leave_frozen_parts_bit_identical(name: str) -> None:
    snapshots: list[dict[str, torch.Tensor]] = []
    head = heads.build(name, dims=DIMS, **CONFIGS[name])
    snapshots.append({k: v.clone() for k, v in head.named_parameters()})

    def snap(stage_name: str) -> None:
        snapshots.append({k: v.detach().clone() for k, v in head.named_parameters()})

    hist = heads.fit(head, TRAIN["X"], TRAIN["y"], cfg=FIT, groups=TRAIN["groups"], on_stage_end=snap)
    final = dict(head.named_parameters())
    stages = hist["stages"]
    for i, stage in enumerate(stages):
        before, after = snapshots[i], snapshots[i + 1]
        for pname in stage["trainable"]:  # a stage moves what it trains...
            assert not torch.equal(before[pname], after[pname]), f"{stage['name']} did not train {pname}"
        for pname in set(final) - set(stage["trainable"]):  # ...and nothing else
            assert torch.equal(before[pname], after[pname]), f"{stage['name']} changed frozen {pname}"
        later = {p for s in stages[i + 1 :] for p in s["trainable"]}
        for pname in set(stage["trainable"]) - later:  # what it trained is never touched again
            assert torch.equal(after[pname], final[pname].detach()), f"{pname} changed after {stage['name']}"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_same_seed_same_result(name: str, fitted: dict) -> None:
    head, hist = _fitted(fitted, name)
    again, hist2 = _fit(name)
    for (k, a), (_, b) in zip(head.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), f"{name}: {k} differs between two runs with the same seed"
    assert [s["epochs"][-1]["loss"] for s in hist["stages"] if s["epochs"]] == [
        s["epochs"][-1]["loss"] for s in hist2["stages"] if s["epochs"]
    ]
    other, _ = _fit(name, seed=4)
    assert any(not torch.equal(a, b) for a, b in zip(head.state_dict().values(), other.state_dict().values()))
