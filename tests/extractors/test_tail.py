"""`l<i>.tokens` and the frozen tail: tokens equal the blocks' own outputs; the tail on cached tokens gives back the
one-pass pooled features (CLIP `pooler`/`proj`, AIM-v1 `probe`, timm `pooler`) from float32 and float16 caches."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from aigi import extractors, heads
from aigi.extractors.tail import build_tail

from . import tiny


def _backbones(tmp: Path) -> dict[str, tuple[str, str, dict, str, list[str]]]:
    """name -> (build name, weights, overrides, token feature, pooled outputs)."""
    clip = tiny.open_clip_tiny()
    torch.save(clip.state_dict(), tmp / "clip.pth")
    cfg = tiny.AIM_TINY
    sd = tiny.aim_official_state(embed_dim=cfg["embed_dim"], depth=cfg["depth"], num_heads=cfg["num_heads"], seed=5)
    backbone, head = tiny.save_aim_checkpoints(sd, tmp)
    torch.save(tiny.timm_tiny().state_dict(), tmp / "vit.pth")
    return {
        "clip": ("clip-l14", str(tmp / "clip.pth"), tiny.CLIP_TINY, "l0.tokens", ["pooler", "proj"]),
        "aim": ("aim-v1-3b", f"{backbone},{head}", cfg, "l0.tokens", ["probe"]),
        "timm": ("timm:vit_tiny_patch16_224", str(tmp / "vit.pth"), tiny.TIMM_TINY, "l1.tokens", ["pooler"]),
    }


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _backbones(tmp_path_factory.mktemp("tail"))


def _images(ex: extractors.Extractor, n: int = 5) -> torch.Tensor:
    return torch.stack([ex.transform(img, f"i{i}") for i, img in enumerate(tiny.noise_images(n, (90, 80)))])


@pytest.mark.parametrize("family", ["clip", "aim", "timm"])
def test_tail_on_tokens_reproduces_pooled_features(cases: dict, family: str) -> None:
    name, weights, overrides, tokens, pooled = cases[family]
    ex = extractors.build(name, weights=weights, features=[tokens, *pooled], device="cpu", **overrides)
    x = _images(ex)
    feats = ex(x)
    spec = dataclasses.asdict(ex.spec)
    assert feats[tokens].ndim == 3 and tuple(feats[tokens].shape[1:]) == ex.feature_shapes[tokens]
    tail = build_tail(spec, weights=weights, feature=tokens)
    assert not any(p.requires_grad for p in tail.parameters())
    with torch.no_grad():
        out32 = tail(feats[tokens])
        out16 = tail(feats[tokens].half().float())  # a float16 token cache
    for f in pooled:
        assert (out32[f] - feats[f]).abs().max().item() <= 1e-5, f
        head = heads.build("tail_lora", frozen=tail, inputs=[tokens], output=f, targets=["attn", "mlp"])
        with torch.no_grad():  # a fresh LoRA head (B = 0) gives the same pooled feature
            assert (head.pooled({tokens: feats[tokens]}) - feats[f]).abs().max().item() <= 1e-5, f
        # float16 storage of the tokens moves the tail's output by about one float16 step of the feature itself
        step = float(np.spacing(np.float16(feats[f].abs().max().item())))
        err16 = (out16[f] - feats[f]).abs().max().item()
        assert err16 <= step, (f, err16, step)


def test_tokens_are_the_block_outputs_with_prefix_tokens(cases: dict) -> None:
    name, weights, overrides, _, _ = cases["timm"]
    feats = ["l0.tokens", "l2.tokens", "l2.cls"]
    ex = extractors.build(name, weights=weights, features=feats, device="cpu", **overrides)
    assert ex.feature_shapes["l0.tokens"] == (197, 192)
    model = tiny.timm_tiny()
    model.load_state_dict(torch.load(weights, weights_only=True))
    outs = {}
    hooks = [
        blk.register_forward_hook(lambda _m, _i, o, i=i: outs.__setitem__(i, o)) for i, blk in enumerate(model.blocks)
    ]
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    got = ex(x)
    assert torch.equal(got["l0.tokens"], outs[0]) and torch.equal(got["l2.tokens"], outs[2])
    assert torch.equal(got["l2.cls"], got["l2.tokens"][:, 0])


def test_tail_refuses_other_weights_and_non_token_features(cases: dict, tmp_path: Path) -> None:
    name, weights, overrides, tokens, pooled = cases["clip"]
    spec = dataclasses.asdict(extractors.build(name, weights=weights, features=[tokens], **overrides).spec)
    other = tiny.open_clip_tiny()
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    torch.save(other.state_dict(), tmp_path / "other.pth")
    with pytest.raises(ValueError, match="same --weights"):
        build_tail(spec, weights=tmp_path / "other.pth", feature=tokens)
    with pytest.raises(ValueError, match="l<i>.tokens"):
        build_tail(spec, weights=weights, feature="pooler")
    with pytest.raises(ValueError, match="not a feature"):
        build_tail(spec, weights=weights, feature="l1.tokens")


def test_aim_tail_must_start_before_the_probe_blocks(cases: dict) -> None:
    name, weights, overrides, _, _ = cases["aim"]
    spec = dataclasses.asdict(extractors.build(name, weights=weights, features=["l1.tokens"], **overrides).spec)
    with pytest.raises(ValueError, match="l0.tokens or an earlier block"):
        build_tail(spec, weights=weights, feature="l1.tokens")


def test_tokens_need_a_vit(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown feature"):
        extractors.build("timm:resnet18", features=["l1.tokens"], device="cpu")
