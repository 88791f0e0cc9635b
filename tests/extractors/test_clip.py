"""CLIP ViT-L/14: every weight format loads, timm and open_clip agree, the real size has OpenAI's parameters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from aigi import extractors
from aigi.extractors.clip import convert_clip_state, create_clip_model

from . import tiny

DATA = Path(__file__).resolve().parents[1] / "data"
FEATS = ["l0.mean", "l1.cls", "pooler", "proj"]


@pytest.fixture(scope="module")
def oc_model() -> torch.nn.Module:
    return tiny.open_clip_tiny()


def _extract(weights: Path, features: list[str] = FEATS) -> dict[str, torch.Tensor]:
    ex = extractors.build("clip-l14-336", weights=weights, features=features, device="cpu", **tiny.CLIP_TINY)
    torch.manual_seed(1)
    return ex(torch.randn(2, 3, 56, 56))


def _hf_state(oc: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same weights under Hugging Face transformers' CLIPModel names, built by hand."""
    hf = {
        "vision_model.embeddings.class_embedding": oc["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": oc["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": oc["visual.positional_embedding"],
        "vision_model.embeddings.position_ids": torch.arange(17).unsqueeze(0),
        "vision_model.pre_layrnorm.weight": oc["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": oc["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": oc["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": oc["visual.ln_post.bias"],
        "visual_projection.weight": oc["visual.proj"].T.contiguous(),
        "text_projection.weight": oc["text_projection"].T.contiguous(),
        "logit_scale": oc["logit_scale"],
    }
    for i in range(tiny.CLIP_TINY["depth"]):
        src, dst = f"visual.transformer.resblocks.{i}.", f"vision_model.encoder.layers.{i}."
        for kind in ("weight", "bias"):
            q, k, v = oc[src + f"attn.in_proj_{kind}"].chunk(3)
            hf |= {dst + f"self_attn.q_proj.{kind}": q, dst + f"self_attn.k_proj.{kind}": k}
            hf |= {dst + f"self_attn.v_proj.{kind}": v}
            hf[dst + f"self_attn.out_proj.{kind}"] = oc[src + f"attn.out_proj.{kind}"]
            hf[dst + f"layer_norm1.{kind}"] = oc[src + f"ln_1.{kind}"]
            hf[dst + f"layer_norm2.{kind}"] = oc[src + f"ln_2.{kind}"]
            hf[dst + f"mlp.fc1.{kind}"] = oc[src + f"mlp.c_fc.{kind}"]
            hf[dst + f"mlp.fc2.{kind}"] = oc[src + f"mlp.c_proj.{kind}"]
    return hf


def test_timm_and_open_clip_agree_on_one_state_dict(oc_model: torch.nn.Module, tmp_path: Path) -> None:
    torch.save(oc_model.state_dict(), tmp_path / "openai.pth")
    ex = extractors.build(
        "clip-l14", weights=tmp_path / "openai.pth", features=["proj"], device="cpu", **tiny.CLIP_TINY
    )
    x = torch.randn(4, 3, 56, 56)
    with torch.no_grad():
        expected = oc_model.encode_image(x)
    assert (ex(x)["proj"] - expected).abs().max().item() < 1e-5


def test_all_formats_give_the_same_features(oc_model: torch.nn.Module, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    oc = oc_model.state_dict()
    torch.save(oc, tmp_path / "openai.pth")
    reference = _extract(tmp_path / "openai.pth")
    torch.save({"state_dict": {f"module.{k}": v for k, v in oc.items()}, "epoch": 32}, tmp_path / "open_clip.pt")
    timm_model = create_clip_model("clip-l14-336", **tiny.CLIP_TINY)
    timm_model.load_state_dict(convert_clip_state(oc, timm_model))
    torch.save(timm_model.state_dict(), tmp_path / "timm.pth")
    save_file(_hf_state(oc), str(tmp_path / "model.safetensors"))
    for name in ["open_clip.pt", "timm.pth", "model.safetensors"]:
        got = _extract(tmp_path / name)
        for f in FEATS:
            assert (got[f] - reference[f]).abs().max().item() <= 1e-6, (name, f)


def test_quickgelu_matters(oc_model: torch.nn.Module, tmp_path: Path) -> None:
    import timm

    torch.save(oc_model.state_dict(), tmp_path / "openai.pth")
    gelu = timm.create_model(
        "vit_large_patch14_clip_224",
        pretrained=False,
        num_classes=32,
        **{k: v for k, v in tiny.CLIP_TINY.items() if k != "proj_dim"},
    )
    gelu.load_state_dict(convert_clip_state(oc_model.state_dict(), gelu))
    ex = extractors.build(
        "clip-l14", weights=tmp_path / "openai.pth", features=["proj"], device="cpu", **tiny.CLIP_TINY
    )
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        truth, plain_gelu = oc_model.encode_image(x), gelu.eval()(x)
    assert (plain_gelu - truth).abs().max() > 1e-3  # timm's plain-GELU CLIP is visibly off on OpenAI weights
    assert (ex(x)["proj"] - truth).abs().max() < 1e-5


def test_headless_checkpoint_serves_block_features_only(oc_model: torch.nn.Module, tmp_path: Path) -> None:
    torch.save({k: v for k, v in oc_model.state_dict().items() if k != "visual.proj"}, tmp_path / "noproj.pth")
    assert _extract(tmp_path / "noproj.pth", ["l1.cls", "pooler"])["pooler"].shape == (2, 64)
    with pytest.raises(ValueError, match=r"missing \['head.weight'"):
        _extract(tmp_path / "noproj.pth", ["proj"])


def test_wrong_checkpoint_is_explained(tmp_path: Path) -> None:
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a CLIP ViT checkpoint"):
        _extract(tmp_path / "other.pth")


def test_real_size_matches_openai_parameter_names_and_shapes() -> None:
    official = json.loads((DATA / "clip_l14_336_openai_keys.json").read_text())["keys"]
    meta = {k: torch.empty(shape, device="meta") for k, shape in official.items()}
    model = create_clip_model("clip-l14-336", device="meta")
    converted = {k: tuple(v.shape) for k, v in convert_clip_state(meta, model).items()}
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert converted == ours  # every OpenAI vision parameter has a home, and nothing of ours is left unset
    assert (
        sum(p.numel() for p in model.parameters())
        == sum(torch.Size(s).numel() for k, s in official.items() if k.startswith("visual.")) + 768
    )  # + the zero bias timm's head carries beside OpenAI's bias-free projection
    assert ours["pos_embed"] == (1, 577, 1024) and ours["head.weight"] == (768, 1024) and len(model.blocks) == 24


def test_proj_and_pooler_match_open_clip(oc_model: torch.nn.Module, tmp_path: Path) -> None:
    """`proj` = open_clip's encode_image, `pooler` = ln_post of the CLS token leaving the last block."""
    torch.save(oc_model.state_dict(), tmp_path / "openai.pth")
    x = torch.randn(3, 3, 56, 56, generator=torch.Generator().manual_seed(2))
    ex = extractors.build(
        "clip-l14", weights=tmp_path / "openai.pth", features=["pooler", "proj"], device="cpu", **tiny.CLIP_TINY
    )
    ref = tiny.open_clip_reference(oc_model, x, ["pooler", "proj"])
    got = ex(x)
    for f in ("pooler", "proj"):
        assert (got[f] - ref[f]).abs().max().item() <= 1e-4, f


def _hf_vision_model() -> torch.nn.Module:
    """transformers' CLIPVisionModelWithProjection at the tiny size, QuickGELU as OpenAI's CLIP, random weights."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.CLIPVisionConfig(
        hidden_size=tiny.CLIP_TINY["embed_dim"],
        intermediate_size=4 * tiny.CLIP_TINY["embed_dim"],
        num_hidden_layers=tiny.CLIP_TINY["depth"],
        num_attention_heads=tiny.CLIP_TINY["num_heads"],
        image_size=tiny.CLIP_TINY["img_size"],
        patch_size=14,
        projection_dim=tiny.CLIP_TINY["proj_dim"],
        hidden_act="quick_gelu",
    )
    torch.manual_seed(0)
    model = transformers.CLIPVisionModelWithProjection(cfg).eval()
    with torch.no_grad():  # every tensor random, LayerNorms included, so that each one matters
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * (0.1 if p.ndim > 1 else 0.5) + (1.0 if p.ndim == 1 else 0.0))
    return model


@pytest.mark.parametrize("layout", ["4.x", "5.x"])
def test_transformers_vision_model_with_projection_in_both_key_layouts(layout: str, tmp_path: Path) -> None:
    """4.x saves `vision_model.*` + `visual_projection.weight`; 5.x's CLIPVisionModel drops the `vision_model.`
    prefix (`embeddings.*`, `encoder.layers.*`, `pre_layrnorm.*`, `post_layernorm.*`)."""
    from safetensors.torch import save_file

    model = _hf_vision_model()
    state = model.state_dict()
    if layout == "5.x":
        state = {k.removeprefix("vision_model."): v for k, v in state.items()}
        assert "embeddings.patch_embedding.weight" in state and "encoder.layers.0.mlp.fc1.weight" in state
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    x = torch.randn(3, 3, 56, 56, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(pixel_values=x)
        pooled = model.vision_model(pixel_values=x).pooler_output
    ex = extractors.build(
        "clip-l14", weights=tmp_path / "model.safetensors", features=["pooler", "proj"], device="cpu", **tiny.CLIP_TINY
    )
    got = ex(x)
    assert (got["proj"] - ref.image_embeds).abs().max().item() <= 1e-4
    assert (got["pooler"] - pooled).abs().max().item() <= 1e-4


def test_transformers_5_save_pretrained_of_a_vision_model_loads(tmp_path: Path) -> None:
    """The folder `CLIPVisionModel.save_pretrained` writes (no projection) serves `pooler`."""
    transformers = pytest.importorskip("transformers")
    full = _hf_vision_model()
    vision = transformers.CLIPVisionModel(full.config).eval()
    getattr(vision, "vision_model", vision).load_state_dict(full.vision_model.state_dict())  # 5.x: no wrapper
    vision.save_pretrained(tmp_path)
    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = vision(pixel_values=x).pooler_output
    ex = extractors.build(
        "clip-l14", weights=tmp_path / "model.safetensors", features=["pooler"], device="cpu", **tiny.CLIP_TINY
    )
    assert (ex(x)["pooler"] - expected).abs().max().item() <= 1e-4
