"""Tiny random-weight checkpoints in the official formats, and independent reference forwards for them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

# Architecture overrides giving a tiny model of each family (same classes and loaders as the real sizes).
CLIP_TINY = {"img_size": 56, "embed_dim": 64, "depth": 2, "num_heads": 2, "proj_dim": 32}
AIM_TINY = {"img_size": 56, "embed_dim": 32, "depth": 4, "num_heads": 2, "probe_layers": (1, 2)}
TIMM_TINY = {"depth": 3}


def noise_images(n: int, size: tuple[int, int] = (80, 70), seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


# ---------------------------------------------------------------- CLIP (open_clip writes OpenAI's names)
def open_clip_tiny() -> torch.nn.Module:
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    vision = CLIPVisionCfg(
        image_size=CLIP_TINY["img_size"],
        layers=CLIP_TINY["depth"],
        width=CLIP_TINY["embed_dim"],
        head_width=32,
        patch_size=14,
    )
    text = CLIPTextCfg(context_length=8, vocab_size=100, width=32, heads=2, layers=1)
    model = open_clip.model.CLIP(embed_dim=CLIP_TINY["proj_dim"], vision_cfg=vision, text_cfg=text, quick_gelu=True)
    with torch.no_grad():  # open_clip starts LayerNorms at identity; make them matter
        for name, p in model.visual.named_parameters():
            if "ln" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def open_clip_reference(model: torch.nn.Module, x: torch.Tensor, features: list[str]) -> dict[str, torch.Tensor]:
    """Features straight from open_clip's own forward (block outputs via hooks, `proj` = encode_image)."""
    outs: dict[int, torch.Tensor] = {}
    hooks = [
        blk.register_forward_hook(lambda _m, _i, o, i=i: outs.__setitem__(i, o))
        for i, blk in enumerate(model.visual.transformer.resblocks)
    ]
    with torch.no_grad():
        proj = model.encode_image(x)
    for h in hooks:
        h.remove()
    last = outs[len(outs) - 1]
    ref = {"proj": proj, "pooler": model.visual.ln_post(last)[:, 0]}
    for i, out in outs.items():
        ref[f"l{i}.cls"], ref[f"l{i}.mean"] = out[:, 0], out[:, 1:].mean(1)
    return {f: ref[f] for f in features}


# ---------------------------------------------------------------- AIM-v1 (Apple's names, written out plainly)
def aim_official_state(
    *, embed_dim: int, depth: int, num_heads: int, patch: int = 14, classes: int = 1000, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random weights under Apple's AIM-v1 key names (backbone + attention-probe head)."""
    g = torch.Generator().manual_seed(seed)
    d, h = embed_dim, 4 * embed_dim

    def lin(out_f: int, in_f: int) -> torch.Tensor:
        return torch.randn(out_f, in_f, generator=g) / math.sqrt(in_f)

    def ln(prefix: str) -> dict[str, torch.Tensor]:
        return {
            f"{prefix}.weight": 1 + 0.1 * torch.randn(d, generator=g),
            f"{prefix}.bias": 0.1 * torch.randn(d, generator=g),
        }

    sd = {
        "preprocessor.patchifier.proj.weight": torch.randn(d, 3, patch, patch, generator=g) / patch / 2,
        "preprocessor.patchifier.proj.bias": 0.1 * torch.randn(d, generator=g),
        **ln("preprocessor.patchifier.norm"),
    }
    for i in range(depth):
        b = f"trunk.blocks.{i}"
        sd |= {f"{b}.attn.qkv.weight": lin(3 * d, d), f"{b}.attn.proj.weight": lin(d, d), **ln(f"{b}.norm_1")}
        sd |= {f"{b}.mlp.fc1.weight": lin(h, d), f"{b}.mlp.fc2.weight": lin(d, h), **ln(f"{b}.norm_2")}
    sd |= ln("trunk.post_trunk_norm")
    sd |= {
        "head.cls_token": torch.randn(1, 1, d, generator=g),
        "head.k.weight": lin(d, d),
        "head.v.weight": lin(d, d),
        "head.linear.weight": lin(classes, d),
        "head.bn.running_mean": 0.3 * torch.randn(d, generator=g),
        "head.bn.running_var": 0.5 + torch.rand(d, generator=g),
        "head.bn.num_batches_tracked": torch.tensor(1000),
    }
    return sd


def save_aim_checkpoints(sd: dict[str, torch.Tensor], folder: Path) -> tuple[Path, Path]:
    """Split like Apple's release: ..._attnprobe_backbone.pth and ..._attnprobe_head_best_layers.pth."""
    folder.mkdir(parents=True, exist_ok=True)
    backbone, head = folder / "aim_tiny_attnprobe_backbone.pth", folder / "aim_tiny_attnprobe_head_best_layers.pth"
    torch.save({k: v for k, v in sd.items() if not k.startswith("head.")}, backbone)
    torch.save({k: v for k, v in sd.items() if k.startswith("head.")}, head)
    return backbone, head


def _plain_positions(gh: int, gw: int, d: int) -> torch.Tensor:
    pos = torch.zeros(gh * gw, d, dtype=torch.float64)
    q = d // 4
    for r in range(gh):
        for c in range(gw):
            for k in range(q):
                w = 10000.0 ** (-k / q)
                pos[r * gw + c, [k, q + k, 2 * q + k, 3 * q + k]] = torch.tensor(
                    [math.sin(c * w), math.cos(c * w), math.sin(r * w), math.cos(r * w)], dtype=torch.float64
                )
    return pos.float()


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head softmax attention written out: q [B, Nq, D], k/v [B, N, D] -> [B, Nq, D]."""
    b, nq, d = q.shape
    dh = d // heads
    out = []
    for j in range(heads):
        s = slice(j * dh, (j + 1) * dh)
        weights = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(dh), dim=-1)
        out.append(weights @ v[..., s])
    return torch.cat(out, dim=-1)


def plain_aim(
    sd: dict[str, torch.Tensor], x: torch.Tensor, *, heads: int, probe_layers: tuple[int, ...], eps: float = 1e-6
) -> dict[str, torch.Tensor]:
    """AIM-v1 features computed directly from Apple-named weights with basic torch ops."""
    w = sd["preprocessor.patchifier.proj.weight"]
    d, p = w.shape[0], w.shape[-1]
    t = F.conv2d(x, w, sd["preprocessor.patchifier.proj.bias"], stride=p)
    gh, gw = t.shape[-2:]
    t = t.flatten(2).transpose(1, 2)
    t = F.layer_norm(t, (d,), sd["preprocessor.patchifier.norm.weight"], sd["preprocessor.patchifier.norm.bias"], eps)
    t = t + _plain_positions(gh, gw, d)
    depth = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("trunk.blocks."))
    blocks = []
    for i in range(depth):
        b = f"trunk.blocks.{i}"
        y = F.layer_norm(t, (d,), sd[f"{b}.norm_1.weight"], sd[f"{b}.norm_1.bias"], eps)
        q, k, v = (y @ sd[f"{b}.attn.qkv.weight"].T).split(d, dim=-1)
        t = t + _attend(q, k, v, heads) @ sd[f"{b}.attn.proj.weight"].T
        y = F.layer_norm(t, (d,), sd[f"{b}.norm_2.weight"], sd[f"{b}.norm_2.bias"], eps)
        t = t + F.gelu(y @ sd[f"{b}.mlp.fc1.weight"].T) @ sd[f"{b}.mlp.fc2.weight"].T
        blocks.append(t)
    out = {f"l{i}.mean": blk.mean(dim=1) for i, blk in enumerate(blocks)}
    avg = torch.stack([blocks[i] for i in probe_layers], dim=-1).mean(dim=-1)  # Apple's AverageLayers
    normed = (avg - sd["head.bn.running_mean"]) / torch.sqrt(sd["head.bn.running_var"] + eps)
    query = sd["head.cls_token"].expand(x.shape[0], -1, -1)
    out["probe"] = _attend(query, normed @ sd["head.k.weight"].T, normed @ sd["head.v.weight"].T, heads)[:, 0]
    return out


# ---------------------------------------------------------------- timm
def timm_tiny(arch: str = "vit_tiny_patch16_224", **overrides) -> torch.nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model(arch, pretrained=False, **(overrides or TIMM_TINY)).eval()


def timm_reference(model: torch.nn.Module, x: torch.Tensor, features: list[str]) -> dict[str, torch.Tensor]:
    """Block outputs via hooks on the model's blocks, pooler via forward_features + forward_head."""
    outs: dict[int, torch.Tensor] = {}
    hooks = [
        blk.register_forward_hook(lambda _m, _i, o, i=i: outs.__setitem__(i, o)) for i, blk in enumerate(model.blocks)
    ]
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
    for h in hooks:
        h.remove()
    ref = {"pooler": pooled, "pre_logits": pooled}
    for i, out in outs.items():
        ref[f"l{i}.cls"], ref[f"l{i}.mean"] = out[:, 0], out[:, model.num_prefix_tokens :].mean(1)
    return {f: ref[f] for f in features}
