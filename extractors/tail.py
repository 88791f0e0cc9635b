"""The frozen tail of a backbone: blocks i+1 .. L and the backbone's own final norm, pooling, projection or
attention probe, rebuilt from the weights file a cache's `l<i>.tokens` were extracted with.

`build_tail(spec, weights=..., feature="l<i>.tokens")` returns a plain `nn.Module` mapping those cached tokens
[B, T, D] to the backbone's pooled features (`pooler` / `pre_logits` / `proj` for CLIP and timm ViTs, `probe` for
AIM-v1, `pooler` / `pre_logits` for timm's EfficientNet-family CNNs such as MobileNetV2): the same modules with the
same weights as the one-pass extractor, so with nothing inserted the tail reproduces the cached pooled features.
Heads put adapters into it; for that it describes its blocks:

- `blocks`: the blocks it runs, in order (`start` = index of the first one in the whole backbone);
- `lora_targets`: target name -> (path of a Linear or 1x1 Conv2d inside each block, first and last output column or
  None): ViTs: `q`, `k`, `v` are column slices of the fused `attn.qkv`, `out` is `attn.proj`, `fc1` / `fc2` the MLP;
  CNNs: `pw_expand` / `pw_project`, the pointwise convs of an inverted residual block (linear maps over channels);
- `lora_site(block, target)` (optional): the site of a target in one block when blocks differ, None when absent;
- `outputs`: output name -> width.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .base import parse_layer_feature
from .cnn_tokens import cnn_token_blocks, tokens_to_map

Target = tuple[str, int | None, int | None]


def vit_lora_targets(dim: int) -> dict[str, Target]:
    """LoRA target names of a timm ViT block of width `dim` (fused qkv: q/k/v are its output column slices)."""
    return {
        "q": ("attn.qkv", 0, dim),
        "k": ("attn.qkv", dim, 2 * dim),
        "v": ("attn.qkv", 2 * dim, 3 * dim),
        "out": ("attn.proj", None, None),
        "fc1": ("mlp.fc1", None, None),
        "fc2": ("mlp.fc2", None, None),
    }


class VitTail(nn.Module):
    """Blocks `start` .. L-1 of a timm VisionTransformer, its final norm, `forward_head(pre_logits=True)` pooling
    and (CLIP) the projection `head`: tokens [B, T, D] -> {"pooler", "pre_logits"[, "proj"]}."""

    def __init__(self, vit: nn.Module, start: int, *, proj: bool) -> None:
        super().__init__()
        blocks = list(vit.blocks)
        self.start = start
        self.blocks = nn.ModuleList(blocks[start:])
        vit.blocks = nn.Sequential()  # earlier blocks are not needed; the rest now live in self.blocks
        vit.patch_embed = nn.Identity()
        self.vit = vit
        self.has_proj = proj
        pooled = int(getattr(vit, "head_hidden_size", vit.num_features))
        self.outputs = {"pooler": pooled, "pre_logits": pooled}
        if proj:
            self.outputs["proj"] = int(vit.head.out_features)
        self.lora_targets = vit_lora_targets(int(vit.embed_dim))

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        x = tokens
        for blk in self.blocks:
            x = blk(x)
        pooled = self.vit.forward_head(self.vit.norm(x), pre_logits=True)
        out = {"pooler": pooled, "pre_logits": pooled}
        if self.has_proj:
            out["proj"] = self.vit.head(pooled)
        return out


class AimTail(nn.Module):
    """AIM-v1 blocks `start` .. max(probe layers) and the attention probe: tokens -> {"probe"}.

    The probe averages the outputs of its blocks, so the cached tokens must leave a block before the first of them.
    """

    def __init__(self, aim: nn.Module, start: int) -> None:
        super().__init__()
        layers = tuple(aim.size.probe_layers)
        if start > min(layers):
            raise ValueError(
                f"the AIM-v1 probe reads blocks {list(layers)}: cache l{min(layers) - 1}.tokens or an earlier block "
                f"for a tail (got tokens leaving block {start - 1})"
            )
        self.start = start
        self.probe_layers = layers
        self.blocks = nn.ModuleList(list(aim.trunk.blocks)[start : max(layers) + 1])
        self.head = aim.head
        self.outputs = {"probe": int(aim.size.embed_dim)}
        self.lora_targets = vit_lora_targets(int(aim.size.embed_dim))

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        x, taken = tokens, {}
        for j, blk in enumerate(self.blocks):
            x = blk(x)
            if self.start + j in self.probe_layers:
                taken[self.start + j] = x
        return {"probe": self.head(torch.stack([taken[i] for i in self.probe_layers]).mean(dim=0))}


CNN_TARGETS: dict[str, Target] = {"pw_expand": ("conv_pw", None, None), "pw_project": ("conv_pwl", None, None)}


class CnnTail(nn.Module):
    """Blocks `start` .. N of a timm EfficientNet-family CNN (MobileNetV2: torchvision's `features[start..17]`),
    its 1x1 head conv + BN + activation and global average pooling: tokens [B, H * W, C] (row-major) ->
    {"pooler", "pre_logits"}. timm's `forward_head(pre_logits=True)` pools, as in the one-pass extractor."""

    def __init__(self, cnn: nn.Module, start: int) -> None:
        super().__init__()
        blocks = (cnn_token_blocks(cnn) or [])[1:]  # block j of the numbering is blocks[j - 1]
        self.start = start
        self.blocks = nn.ModuleList(blocks[start - 1 :])
        cnn.blocks, cnn.conv_stem, cnn.bn1 = nn.Sequential(), nn.Identity(), nn.Identity()  # not needed any more
        self.cnn = cnn
        pooled = int(getattr(cnn, "head_hidden_size", cnn.num_features))
        self.outputs = {"pooler": pooled, "pre_logits": pooled}
        self.lora_targets = dict(CNN_TARGETS)

    def lora_site(self, block: nn.Module, target: str) -> Target | None:
        """A depthwise-separable block (no expansion) has one pointwise conv, `conv_pw`: its projection."""
        if hasattr(block, "conv_pwl"):
            return self.lora_targets[target]
        return ("conv_pw", None, None) if target == "pw_project" else None

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        x = tokens_to_map(tokens)
        for blk in self.blocks:
            x = blk(x)
        pooled = self.cnn.forward_head(self.cnn.bn2(self.cnn.conv_head(x)), pre_logits=True)
        return {"pooler": pooled, "pre_logits": pooled}


def tail_block(feature: str) -> int:
    """ "l<i>.tokens" -> i (the tail starts at block i + 1)."""
    parsed = parse_layer_feature(feature)
    if parsed is None or parsed[1] != "tokens":
        raise ValueError(f"a tail starts from cached tokens: the feature must be 'l<i>.tokens', got {feature!r}")
    return parsed[0]


def _arch_overrides(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): tuple(v) if isinstance(v, list) else v for k, v in spec.get("arch_params", ())}


def _load_backbone(name: str, weights: str | Path | None, overrides: dict[str, Any]) -> tuple[str, nn.Module, str]:
    """(family, model, weights sha256) of the backbone a spec names, built and loaded like its extractor."""
    from .aim import AIM_SIZES, load_aim
    from .clip import CLIP_MODELS, create_clip_model, load_clip_weights
    from .timm_backbone import RANDOM_INIT, classifier_prefixes, create_timm, load_timm_weights
    from .weights import resolve_weights

    weights = resolve_weights(weights, backbone=name)  # a name -> local files; a local path stays as it is
    if name in CLIP_MODELS:
        model = create_clip_model(name, **overrides)
        sha = load_clip_weights(model, weights, need_proj=True) if weights else RANDOM_INIT
        return "clip", model, sha
    if name in AIM_SIZES:
        model, sha = load_aim(name, weights, overrides, need_head=True)
        return "aim", model, sha
    if name.startswith("timm:"):
        model = create_timm(name[len("timm:") :], overrides)
        prefixes = classifier_prefixes(model)
        sha = load_timm_weights(model, weights, drop_prefixes=prefixes) if weights else RANDOM_INIT
        return "timm", model, sha
    raise ValueError(
        f"no frozen tail for backbone {name!r}: tails exist for CLIP, AIM-v1, timm ViTs and timm EfficientNet-family "
        "CNNs (MobileNetV2)"
    )


def build_tail(
    spec: Mapping[str, Any], *, weights: str | Path | None, feature: str, device: str | torch.device = "cpu"
) -> nn.Module:
    """The frozen tail after the block whose tokens `feature` holds, from the weights the spec was extracted with.

    Args:
        spec: the extractor spec a cache records (`dataclasses.asdict(ExtractorSpec)` or its JSON).
        weights: the same weights file(s) the cache was extracted with (None only for a random-init spec).
        feature: the cached token feature, "l<i>.tokens".
        device: where the tail lives.

    Raises:
        ValueError: not a token feature of this spec, a backbone without tails, or weights whose sha256 differs from
            the spec's (the message names both and the fix).
    """
    block = tail_block(feature)
    if feature not in tuple(spec.get("features", ())):
        raise ValueError(f"{feature!r} is not a feature of this cache (it has {list(spec.get('features', ()))})")
    family, model, sha = _load_backbone(str(spec["name"]), weights, _arch_overrides(spec))
    recorded = str(spec.get("weights_sha256"))
    if not set(recorded.split("+")) <= set(sha.split("+")):  # AIM-v1: the probe's head file may come on top
        raise ValueError(
            f"the weights given ({weights or 'none'}, sha256 {sha[:12]}) are not those the cache was extracted with "
            f"(sha256 {recorded[:12]}); pass the same --weights as for `aigi extract`"
        )
    if family == "aim":
        tail: nn.Module = AimTail(model, block + 1)
    elif cnn_token_blocks(model) is not None:
        tail = CnnTail(model, block + 1)
    else:
        tail = VitTail(model, block + 1, proj=family == "clip")
    return tail.float().eval().requires_grad_(False).to(device)
