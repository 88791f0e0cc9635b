"""OpenAI CLIP ViT-L/14 image tower (224 and 336 px) on timm's QuickGELU VisionTransformer, from local weights.

Weight formats that load (the text tower, if present, is ignored):
- OpenAI's state dict (`visual.conv1.weight`, `visual.transformer.resblocks.N...`, `visual.proj`) as saved by
  `torch.save(model.state_dict())`; the released `ViT-L-14.pt` is a TorchScript archive: convert it once (the
  loader's error message gives the one-line command).
- open_clip checkpoints of these models (same names as OpenAI's, optionally under "state_dict" / "module.").
- timm's (`patch_embed.proj.weight`, `blocks.N...`, `head.weight` = the projection).
- Hugging Face transformers' CLIPModel / CLIPVisionModelWithProjection (`vision_model.*`, `visual_projection.weight`),
  .bin or .safetensors, and transformers 5.x's CLIPVisionModel, saved without the `vision_model.` prefix
  (`embeddings.*`, `encoder.layers.*`, `pre_layrnorm.*`, `post_layernorm.*`).

Features: `l<i>.cls` / `l<i>.mean` / `l<i>.tokens` (tokens leaving block i, 0-23; `tokens` = all of them, CLS
first), `pooler` (CLS after ln_post, 1024-d) and `proj` (the projected image embedding, 768-d, unnormalised:
L2-normalise it yourself where a method does).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aigi.common.device import resolve_device
from aigi.common.files import sha256_file

from ._registry import register_extractor
from .base import Extractor, ExtractorSpec, resolve_dtype
from .preprocess import policy_fields, resolve_policy
from .timm_backbone import RANDOM_INIT, BlockFeatures, feature_dims, plan_blocks, seeded, token_count
from .weights import read_state_dict

# name -> (timm architecture, default preprocessing, default normalisation); defaults follow the seeds:
# GAPL uses CLIP-L/14 at 224 with a 224 center crop and ImageNet statistics; OmniAID resizes to 336 with CLIP's.
CLIP_MODELS = {
    "clip-l14": ("vit_large_patch14_clip_quickgelu_224", "center_crop", "imagenet"),
    "clip-l14-336": ("vit_large_patch14_clip_quickgelu_336", "resize", "clip"),
}
PROJ_DIM = 768
_OVERRIDES = ("embed_dim", "depth", "num_heads", "img_size", "patch_size", "mlp_ratio", "proj_dim")
_HF_BLOCK = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.(.+)$")
_HF_BLOCK_NAMES = {
    "layer_norm1": "norm1",
    "layer_norm2": "norm2",
    "self_attn.out_proj": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_HF_BARE = ("embeddings.", "encoder.layers.", "pre_layrnorm.", "post_layernorm.")  # transformers 5.x CLIPVisionModel
_HF_TOP = {
    "vision_model.embeddings.patch_embedding.weight": "patch_embed.proj.weight",
    "vision_model.pre_layrnorm.weight": "norm_pre.weight",
    "vision_model.pre_layrnorm.bias": "norm_pre.bias",
    "vision_model.post_layernorm.weight": "norm.weight",
    "vision_model.post_layernorm.bias": "norm.bias",
    "visual_projection.weight": "head.weight",
}


def create_clip_model(name: str, *, device: str | torch.device = "cpu", **overrides: Any) -> nn.Module:
    """The timm VisionTransformer of a CLIP name (random weights; `device="meta"` allocates nothing)."""
    import timm

    bad = sorted(set(overrides) - set(_OVERRIDES))
    if bad:
        raise ValueError(f"unknown architecture overrides {bad} for {name}; allowed: {', '.join(_OVERRIDES)}")
    kw = dict(overrides)
    kw["num_classes"] = kw.pop("proj_dim", PROJ_DIM)
    with seeded(0), torch.device(device):
        return timm.create_model(CLIP_MODELS[name][0], pretrained=False, **kw)


def convert_hf_clip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face CLIP vision weights -> timm VisionTransformer names (q/k/v fused into qkv)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str, str], torch.Tensor] = {}
    for key, value in state.items():
        if key in _HF_TOP:
            out[_HF_TOP[key]] = value
        elif key == "vision_model.embeddings.class_embedding":
            out["cls_token"] = value.reshape(1, 1, -1)
        elif key == "vision_model.embeddings.position_embedding.weight":
            out["pos_embed"] = value.unsqueeze(0)
        elif match := _HF_BLOCK.match(key):
            block, rest = int(match.group(1)), match.group(2)
            module, _, param = rest.rpartition(".")
            if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv[(block, module[-6], param)] = value
            else:
                out[f"blocks.{block}.{_HF_BLOCK_NAMES.get(module, module)}.{param}"] = value
    for block, _, param in sorted({(b, "", p) for b, _, p in qkv}):
        parts = [qkv[(block, letter, param)] for letter in "qkv"]
        out[f"blocks.{block}.attn.qkv.{param}"] = torch.cat(parts, dim=0)
    if "head.weight" in out:
        out["head.bias"] = torch.zeros(out["head.weight"].shape[0], dtype=out["head.weight"].dtype)
    return out


def convert_clip_state(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Any supported CLIP checkpoint's state dict -> the timm model's names (see the module doc)."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    if "embeddings.patch_embedding.weight" in state:  # transformers 5.x: the vision tower saved without its prefix
        state = {(f"vision_model.{k}" if k.startswith(_HF_BARE) else k): v for k, v in state.items()}
    if any(k.startswith("vision_model.") for k in state):
        return convert_hf_clip(state)
    return checkpoint_filter_fn(state, model)


def load_clip_weights(model: nn.Module, path: str | Path, *, need_proj: bool) -> str:
    """Load a CLIP checkpoint of any supported format into `model`; returns the file's sha256."""
    state = convert_clip_state(read_state_dict(path), model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if not need_proj:
        missing = [k for k in missing if not k.startswith("head.")]
    if missing or unexpected:
        raise ValueError(
            f"{path}: not a CLIP ViT checkpoint of this size (missing {missing[:4]}, unexpected {unexpected[:4]}). "
            "Formats that load: OpenAI state dict, open_clip, timm, Hugging Face transformers."
        )
    return sha256_file(path)


def _build_clip(
    *,
    name: str,
    weights: str | Path | None,
    features: list[str] | None,
    preprocess: str | None,
    device: str,
    dtype: str,
    **overrides: Any,
) -> Extractor:
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    model = create_clip_model(name, **overrides)
    depth, width = len(model.blocks), model.embed_dim
    features = list(features or ["pooler", "proj"])
    plan_blocks(features, n_layers=depth, pools=("cls", "mean", "tokens"), extra=("pooler", "proj"))
    sha = load_clip_weights(model, weights, need_proj="proj" in features) if weights else RANDOM_INIT
    _, default_policy, norm = CLIP_MODELS[name]
    policy = resolve_policy(preprocess, default=default_policy, size=model.patch_embed.img_size[0], norm=norm)
    spec = ExtractorSpec(
        name=name,
        arch=CLIP_MODELS[name][0],
        arch_params=tuple(sorted(overrides.items())),
        weights_sha256=sha,
        **policy_fields(policy),
        features=tuple(features),
        dims=feature_dims(
            features, [width] * depth, {"pooler": width, "proj": model.head.out_features}, token_count(model)
        ),
        dtype=dt,
    )
    forward = BlockFeatures(model, features, proj=model.head)
    return Extractor(spec=spec, model=forward, transform=policy.transform(), forward=forward, device=dev)


for _name in CLIP_MODELS:
    register_extractor(_name)(_build_clip)
