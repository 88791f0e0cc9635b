"""AIM-v1 (Apple's autoregressive image models, 600M-7B): trunk on timm's VisionTransformer plus the attention probe.

The trunk is a pre-norm ViT without class token: 14-px patches (224 px -> 256 tokens), a LayerNorm after the patch
projection, fixed 2-D sin-cos positions, no biases in qkv / attention output / MLP, LayerNorm eps 1e-6, GELU.
The attention probe (Apple's `..._attnprobe_head_best_layers.pth`) averages the tokens leaving the "best" blocks
(1B/3B: 12-17, 600M/7B: 14-19, 0-based), normalises them with a BatchNorm1d (affine=False, eps 1e-6, the
checkpoint's running statistics) and attends to them from one learned query with k and v projections (no bias);
`probe` is that attended vector (what UAR stores, before the ImageNet classifier `head.linear`).

Official checkpoints load by key name: `preprocessor.patchifier.{proj,norm}.*`, `trunk.blocks.N.{norm_1, attn.qkv,
attn.proj, norm_2, mlp.fc1, mlp.fc2}.*`, `trunk.post_trunk_norm.*`, `head.{cls_token, k, v, linear, bn}.*`.
Features: `l<i>.mean` (mean of the 256 tokens leaving block i), `l<i>.tokens` (those tokens, [256, D] per row) and
`probe`; the trunk stops after the deepest block
a request needs (block 17 for the 3B probe).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from aigi.common.device import resolve_device
from aigi.common.files import sha256_file

from ._registry import register_extractor
from .base import Extractor, ExtractorSpec, parse_layer_feature, resolve_dtype
from .preprocess import policy_fields, resolve_policy
from .timm_backbone import RANDOM_INIT, feature_dims, plan_blocks, seeded
from .weights import read_state_dict


@dataclass(frozen=True)
class AimSize:
    """One published AIM-v1 size."""

    embed_dim: int
    depth: int
    num_heads: int
    probe_layers: tuple[int, ...]
    img_size: int = 224
    patch_size: int = 14
    num_classes: int = 1000


AIM_SIZES = {
    "aim-v1-600m": AimSize(1536, 24, 12, (14, 15, 16, 17, 18, 19)),
    "aim-v1-1b": AimSize(2048, 24, 16, (12, 13, 14, 15, 16, 17)),
    "aim-v1-3b": AimSize(3072, 24, 24, (12, 13, 14, 15, 16, 17)),
    "aim-v1-7b": AimSize(4096, 32, 32, (14, 15, 16, 17, 18, 19)),
}
_RENAMES = (
    (re.compile(r"^preprocessor\.patchifier\."), "trunk.patch_embed."),
    (re.compile(r"^trunk\.blocks\.(\d+)\.norm_(\d)\."), r"trunk.blocks.\1.norm\2."),
    (re.compile(r"^trunk\.post_trunk_norm\."), "trunk.norm."),
)


def sincos_positions(grid_h: int, grid_w: int, dim: int) -> torch.Tensor:
    """AIM-v1's fixed positions [grid_h * grid_w, dim] for row-major tokens.

    Token (row r, column c) gets [sin(c w), cos(c w), sin(r w), cos(r w)] with w_k = 10000^(-k / (dim / 4)),
    k = 0 .. dim/4 - 1: the first half of the channels encodes the column, the second half the row.
    """
    if dim % 4:
        raise ValueError(f"AIM-v1 positions need an embedding width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim / 4))
    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1).float() * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(cols), encode(rows)], dim=1)


class AttentionProbe(nn.Module):
    """Apple's attention-probe head: BatchNorm over tokens, one learned query, multi-head attention (no bias)."""

    def __init__(self, dim: int, num_heads: int, num_classes: int = 1000) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.linear = nn.Linear(dim, num_classes, bias=False)  # ImageNet classifier: loaded, not a feature

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens [B, N, D] -> the attended query [B, D] (input of `linear`)."""
        b, n, d = tokens.shape
        x = self.bn(tokens.transpose(1, 2)).transpose(1, 2)
        heads = (b, -1, self.num_heads, d // self.num_heads)
        q = self.cls_token.expand(b, -1, -1).reshape(heads).transpose(1, 2)
        k = self.k(x).reshape(heads).transpose(1, 2)
        v = self.v(x).reshape(heads).transpose(1, 2)
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, d)


class AimV1(nn.Module):
    """AIM-v1 trunk (timm VisionTransformer) + attention probe; `forward` computes the requested features."""

    def __init__(self, size: AimSize) -> None:
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        norm = partial(nn.LayerNorm, eps=1e-6)
        self.size = size
        self.trunk = VisionTransformer(
            img_size=size.img_size,
            patch_size=size.patch_size,
            embed_dim=size.embed_dim,
            depth=size.depth,
            num_heads=size.num_heads,
            mlp_ratio=4.0,
            qkv_bias=False,
            proj_bias=False,
            class_token=False,
            global_pool="",
            num_classes=0,
            norm_layer=norm,
            embed_norm_layer=norm,
            act_layer=nn.GELU,
        )
        self.head = AttentionProbe(size.embed_dim, size.num_heads, size.num_classes)
        self.trunk.pos_embed.requires_grad_(False)
        self.features: list[str] = []

    def set_features(self, features: list[str]) -> None:
        """Select the features `forward` returns and drop the blocks after the deepest one they need."""
        self.features = list(features)
        self.trunk.prune_intermediate_layers(self.blocks(), prune_norm=True, prune_head=True)

    def blocks(self) -> list[int]:
        """Sorted indices of the blocks whose outputs the selected features read."""
        wanted = {p[0] for p in map(parse_layer_feature, self.features) if p}
        if "probe" in self.features:
            wanted.update(self.size.probe_layers)
        return sorted(wanted)

    def positions(self) -> torch.Tensor:
        """The fixed position table [1, tokens, D] for this size."""
        grid = self.trunk.patch_embed.grid_size
        return sincos_positions(grid[0], grid[1], self.size.embed_dim).unsqueeze(0)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        blocks = self.blocks()
        inter = self.trunk.forward_intermediates(
            x, indices=blocks, output_fmt="NLC", norm=False, stop_early=True, intermediates_only=True
        )
        by_block = dict(zip(blocks, inter))
        out = {
            f: by_block[p[0]] if p[1] == "tokens" else by_block[p[0]].mean(dim=1)
            for f in self.features
            if (p := parse_layer_feature(f))
        }
        if "probe" in self.features:
            out["probe"] = self.head(torch.stack([by_block[i] for i in self.size.probe_layers], dim=-1).mean(dim=-1))
        return out


def official_to_ours(state: dict[str, torch.Tensor], model: AimV1) -> dict[str, torch.Tensor]:
    """Apple's AIM-v1 key names -> AimV1's, adding the computed positions."""
    out = {}
    for key, value in state.items():
        for pattern, repl in _RENAMES:
            key = pattern.sub(repl, key)
        out[key] = value
    out["trunk.pos_embed"] = model.positions()
    return out


def create_aim_model(name: str, *, device: str | torch.device = "cpu", **overrides: Any) -> AimV1:
    """AimV1 of a registered size, with optional overrides (embed_dim, depth, num_heads, probe_layers, ...)."""
    base = AIM_SIZES[name]
    allowed = set(AimSize.__dataclass_fields__)
    bad = sorted(set(overrides) - allowed)
    if bad:
        raise ValueError(f"unknown architecture overrides {bad} for {name}; allowed: {', '.join(sorted(allowed))}")
    size = AimSize(**{**base.__dict__, **{k: tuple(v) if k == "probe_layers" else v for k, v in overrides.items()}})
    if max(size.probe_layers) >= size.depth:
        raise ValueError(f"probe_layers {size.probe_layers} exceed the depth {size.depth}")
    with seeded(0), torch.device(device):
        model = AimV1(size)
    if str(device) != "meta":
        with torch.no_grad():
            model.trunk.pos_embed.copy_(model.positions())
    return model


def _weight_files(weights: str | Path) -> list[Path]:
    path = Path(weights)
    if path.is_dir():
        backbone = sorted(path.glob("*backbone*.pth"))
        heads = sorted(path.glob("*head_best_layers*.pth")) or sorted(path.glob("*head*.pth"))
        if len(backbone) != 1 or len(heads) > 1:
            raise ValueError(
                f"{path}: expected one *backbone*.pth and at most one *head*.pth, found "
                f"{[p.name for p in backbone + heads]}; pass 'BACKBONE.pth,HEAD.pth' instead"
            )
        return backbone + heads
    if path.exists() or "," not in str(weights):
        return [path]
    return [Path(p.strip()) for p in str(weights).split(",") if p.strip()]


def load_aim_weights(model: AimV1, weights: str | Path, *, need_head: bool) -> str:
    """Load Apple's checkpoint file(s) by key name (memory-mapped, assigned); returns the "+"-joined sha256s."""
    used, state = [], {}
    for path in _weight_files(weights):
        part = read_state_dict(path)
        is_head = all(k.startswith("head.") for k in part)
        if is_head and not need_head:
            continue
        overlap = set(part) & set(state)
        if overlap:
            raise ValueError(f"{path}: repeats keys of another weights file, e.g. {sorted(overlap)[:3]}")
        state.update(part)
        used.append(path)
    if not need_head:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    elif not any(k.startswith("head.") for k in state):
        raise ValueError(
            f"feature 'probe' needs the attention-probe head: pass 'BACKBONE.pth,HEAD.pth' "
            f"(Apple's ..._attnprobe_head_best_layers.pth); got {weights}"
        )
    ours = official_to_ours(state, model)
    missing, unexpected = model.load_state_dict(ours, strict=False, assign=True)
    if not need_head:
        missing = [k for k in missing if not k.startswith("head.")]
    if missing or unexpected:
        raise ValueError(
            f"{weights}: not AIM-v1 weights of this size (missing {missing[:4]}, unexpected {unexpected[:4]})"
        )
    return "+".join(sha256_file(p) for p in used)


def _build_aim(
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
    features = list(features or ["probe"])
    if weights is not None and "last_layers" in Path(str(weights).split(",")[-1]).name:
        depth = overrides.get("depth", AIM_SIZES[name].depth)
        overrides.setdefault("probe_layers", tuple(range(depth - 6, depth)))  # Apple's "last" head: last 6 blocks
    size = create_aim_model(name, device="meta", **overrides).size
    plan_blocks(features, n_layers=size.depth, pools=("mean", "tokens"), extra=("probe",))
    model, sha = load_aim(name, weights, overrides, need_head="probe" in features)
    model.set_features(features)
    policy = resolve_policy(preprocess, default="rich_patch", size=size.img_size, norm="imagenet")
    spec = ExtractorSpec(
        name=name,
        arch=name,
        arch_params=tuple(sorted(overrides.items())),
        weights_sha256=sha,
        **policy_fields(policy),
        features=tuple(features),
        dims=feature_dims(
            features, [size.embed_dim] * size.depth, {"probe": size.embed_dim}, model.trunk.patch_embed.num_patches
        ),
        dtype=dt,
    )
    return Extractor(spec=spec, model=model, transform=policy.transform(), forward=model, device=dev)


def load_aim(name: str, weights: str | Path | None, overrides: dict[str, Any], *, need_head: bool) -> tuple[AimV1, str]:
    """AimV1 of `name` with `overrides`, loaded from `weights` (None: seeded random weights); returns it and the
    "+"-joined sha256 of the files (or RANDOM_INIT)."""
    model = create_aim_model(name, device="meta" if weights else "cpu", **overrides)
    sha = load_aim_weights(model, weights, need_head=need_head) if weights else RANDOM_INIT
    return _materialise(model), sha


def _materialise(model: AimV1) -> AimV1:
    """After an assign-load: float32 everywhere, no tensor left on the meta device (unloaded head -> zeros)."""
    for module in model.modules():
        for name, tensor in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            if tensor.is_meta:
                fresh = torch.zeros(tensor.shape, dtype=tensor.dtype)
                fresh = nn.Parameter(fresh, requires_grad=False) if isinstance(tensor, nn.Parameter) else fresh
                setattr(module, name, fresh)
    return model.float()


for _name in AIM_SIZES:
    register_extractor(_name)(_build_aim)
