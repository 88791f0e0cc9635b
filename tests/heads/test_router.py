"""OmniAID router: top-k gates, balance loss, masked domain loss by hand; manual mode; the artifact gate."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from aigi import heads
from aigi.heads.router import balance_loss, domain_loss, top_k_gates


def test_top_k_gates_softmax_over_the_k_largest_only() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0], [0.5, -1.0, 4.0]])
    e32 = math.exp(3) / (math.exp(3) + math.exp(2))
    e405 = math.exp(4) / (math.exp(4) + math.exp(0.5))
    expected = torch.tensor([[0.0, e32, 1 - e32], [1 - e405, 0.0, e405]])
    torch.testing.assert_close(top_k_gates(logits, 2), expected)
    torch.testing.assert_close(top_k_gates(logits, 1), torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))


def test_balance_loss_by_hand() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    # top-2: row 0 -> experts {2, 1}; row 1 -> {0, 1}: f = [0.5, 1.0, 0.5]
    s = [math.exp(0), math.exp(1), math.exp(2)]
    p_row0 = [v / sum(s) for v in s]
    p_mean = [(p_row0[i] + p_row0[2 - i]) / 2 for i in range(3)]
    expected = 3 * (0.5 * p_mean[0] + 1.0 * p_mean[1] + 0.5 * p_mean[2])
    assert balance_loss(logits, 2).item() == pytest.approx(expected, rel=1e-6)
    # perfectly balanced top-1 routing: f_i = P_i = 1/E, so the loss is E * E * (1/E)^2 = 1
    assert balance_loss(torch.eye(4) * 5, 1).item() == pytest.approx(1.0, rel=1e-6)


def test_domain_loss_masks_unknown_rows() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0], [5.0, 5.0, -5.0]])
    domain = torch.tensor([-1, 2, 0])
    ce1 = -math.log(math.exp(3) / (1 + math.e + math.exp(3)))
    ce2 = -math.log(math.exp(5) / (2 * math.exp(5) + math.exp(-5)))
    assert domain_loss(logits, domain).item() == pytest.approx((ce1 + ce2) / 2, rel=1e-6)
    assert domain_loss(logits, torch.tensor([-1, -1, -1])).item() == 0.0


@pytest.fixture
def router() -> torch.nn.Module:
    torch.manual_seed(0)
    head = heads.build("router", inputs="x", in_dim=6, domains=["human", "animal", "scene"], rank=2, seed=1)
    with torch.no_grad():  # non-zero experts, as after stage 1
        for p in head.experts.parameters():
            p.normal_()
    return head


def _by_hand(head, x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    ad = head.experts.adapters
    z = x + sum(gates[:, i : i + 1] * ad[i].delta(x) for i in range(3)) + ad[3].delta(x)
    return head.classifier(z).squeeze(-1)


def test_manual_weights_override_the_router_and_artifact_gate_stays_one(router) -> None:
    x = torch.randn(5, 6)
    with torch.no_grad():
        auto = router({"x": x})
        torch.testing.assert_close(auto, _by_hand(router, x, top_k_gates(router.router(x), 2)))
        router.set_manual_weights({"human": 0.7, "scene": 0.3})
        manual = router({"x": x})
        ex = router.explain({"x": x})
    want = torch.tensor([0.7, 0.0, 0.3, 1.0]).expand(5, 4)
    torch.testing.assert_close(ex["gates"], want)
    torch.testing.assert_close(manual, _by_hand(router, x, want[:, :3]))
    assert not torch.allclose(auto, manual)
    router.set_manual_weights(None)
    with torch.no_grad():
        torch.testing.assert_close(router({"x": x}), auto)
    with pytest.raises(ValueError, match="humane"):
        router.set_manual_weights({"humane": 1.0})


def test_artifact_gate_is_one_whatever_the_router_says(router) -> None:
    x = torch.randn(8, 6)
    with torch.no_grad():
        router.router[-1].bias.copy_(torch.tensor([50.0, -50.0, 0.0]))
        ex = router.explain({"x": x})
        np.testing.assert_array_equal(ex["gates"][:, 3].numpy(), np.ones(8))
        torch.testing.assert_close(ex["gates"][:, :3].sum(1), torch.ones(8))
        solo = torch.sigmoid(router.experts.classifiers[3](router.experts.adapters[3](x))).squeeze(-1)
        torch.testing.assert_close(ex["expert_scores"][:, 3], solo)
    out = heads.explain(router, {"x": x.numpy()})
    assert out["expert_names"] == ["human", "animal", "scene", "artifact"]
    np.testing.assert_allclose(out["gates"], ex["gates"].double().numpy())


def test_stage2_loss_terms_use_configured_weights(router) -> None:
    x = torch.randn(4, 6)
    domain = torch.tensor([0, -1, 2, 1])
    logits_out, extra = router._stage2_forward({"x": x}, {"domain": domain})
    r = router.router(x)
    want = 1e-3 * balance_loss(r, 2) + 0.1 * domain_loss(r, domain)
    torch.testing.assert_close(extra, want)
    torch.testing.assert_close(logits_out, router({"x": x}))


def test_router_stage_order_and_skips_empty_domain() -> None:
    from tests.heads.synth import make_set

    data = make_set(400, seed=2)
    head = heads.build("router", inputs="a", in_dim=16, domains=["human", "animal", "anime"], rank=2)
    hist = heads.fit(head, data["X"], data["y"], groups=data["groups"], cfg=heads.FitConfig(epochs=2))
    names = [s["name"] for s in hist["stages"]]
    assert names == ["expert:human", "expert:animal", "expert:anime", "expert:artifact", "router"]
    assert "skipped" in hist["stages"][2] and hist["stages"][3]["rows"] == int(
        (data["y"] == 0).sum() + (data["groups"]["source"] == "vae:x").sum()
    )


# The keys (and defaults) a saved head.json holds for each head, as written before the two configs shared their
# routing keys: an old head.json must load, a new one must carry the same keys.
ROUTING_DEFAULTS = {
    "domains": ("human", "animal", "object", "scene", "anime"),
    "domain_column": "domain",
    "artifact": ("vae:*",),
    "artifact_column": "source",
    "top_k": 2,
    "router_hidden": 256,
    "balance_weight": 1e-3,
    "domain_weight": 0.1,
    "label_smoothing": 0.1,
}
SAVED_KEYS = {
    "router": {**ROUTING_DEFAULTS, "inputs": ("f",), "in_dim": 6, "rank": 16},
    "tail_moe": {**ROUTING_DEFAULTS, "inputs": ("l0.tokens",), "output": "pooler", "router_input": "pooler",
                 "rank": 8, "alpha": 8.0, "dropout": 0.1, "targets": ("q", "k", "v", "out"), "orth_weight": 1e-3},
}  # fmt: skip


@pytest.mark.parametrize("name", ["router", "tail_moe"])
def test_router_and_tail_moe_configs_keep_their_saved_keys_and_checks(name: str) -> None:
    import dataclasses

    from aigi.heads._registry import make_config
    from aigi.heads.router import RouterCfg, RoutingCfg
    from aigi.heads.tail import TailMoeCfg

    cfg_cls = {"router": RouterCfg, "tail_moe": TailMoeCfg}[name]
    assert issubclass(cfg_cls, RoutingCfg)  # one definition of the routing keys
    required = {"router": {"inputs": ["f"], "in_dim": 6}, "tail_moe": {"inputs": ["l0.tokens"]}}[name]
    cfg = make_config(cfg_cls, required)
    assert dataclasses.asdict(cfg) == SAVED_KEYS[name]
    old = json.loads(json.dumps(SAVED_KEYS[name]))  # a head.json's config, lists for tuples
    assert make_config(cfg_cls, old) == cfg
    with pytest.raises(ValueError, match=f"{name}: top_k=6 must be between 1 and the 5 domains"):
        make_config(cfg_cls, {**required, "top_k": 6})
    with pytest.raises(ValueError, match=f"{name}: domains must be unique and not 'artifact'"):
        make_config(cfg_cls, {**required, "domains": ["a", "artifact"]})
