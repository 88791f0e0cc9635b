"""Other libraries' checkpoint key layouts, renamed to timm's so their weights load into timm models.

- MobileNetV2 in torchvision's layout (`torchvision.models.mobilenet_v2().state_dict()`) and in the original
  `features.N` layout of the first PyTorch ports (`conv.0/1` expand, `conv.3/4` depthwise, `conv.6/7` project;
  the first block without expansion), both mapped onto timm's `mobilenetv2_*` (`EfficientNet` class).
- torchvision's ResNets (`resnet18` ... `resnet152`, `wide_resnet*`) already use timm's names: no rename needed;
  their `fc.` classifier is dropped with the other classifier keys.
"""

from __future__ import annotations

import re

import torch
from torch import nn

# (sub-module of a torchvision / original block) -> timm's name, for blocks with and without an expansion conv
_TORCHVISION = {
    True: {"conv.0.0": "conv_pw", "conv.0.1": "bn1", "conv.1.0": "conv_dw", "conv.1.1": "bn2", "conv.2": "conv_pwl",
           "conv.3": "bn3"},
    False: {"conv.0.0": "conv_dw", "conv.0.1": "bn1", "conv.1": "conv_pw", "conv.2": "bn2"},
}  # fmt: skip
_ORIGINAL = {
    True: {"conv.0": "conv_pw", "conv.1": "bn1", "conv.3": "conv_dw", "conv.4": "bn2", "conv.6": "conv_pwl",
           "conv.7": "bn3"},
    False: {"conv.0": "conv_dw", "conv.1": "bn1", "conv.3": "conv_pw", "conv.4": "bn2"},
}  # fmt: skip
_KEY = re.compile(r"^features\.(\d+)\.(.+)\.([a-z_]+)$")


def mobilenet_v2_layout(state: dict[str, torch.Tensor]) -> str | None:
    """`torchvision`, `original` or None: which MobileNetV2 `features.N` layout a state dict uses."""
    if "features.1.conv.0.0.weight" in state:
        return "torchvision"
    if "features.1.conv.0.weight" in state and state["features.1.conv.0.weight"].ndim == 4:
        return "original"
    return None


def _block_names(model: nn.Module) -> list[str]:
    """timm's block names in forward order: `blocks.<stage>.<index>`."""
    return [f"blocks.{s}.{j}" for s, stage in enumerate(model.blocks) for j in range(len(stage))]


def mobilenet_v2_to_timm(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename a torchvision- or original-layout MobileNetV2 state dict to timm's `mobilenetv2_*` keys.

    `features.0` is the stem (`conv_stem`, `bn1`), `features.1..N` the inverted residual blocks in order,
    `features.N+1` the 1x1 head conv (`conv_head`, `bn2`). A key that fits none of these is kept as is, so the
    loader reports it as unexpected.
    """
    layout = mobilenet_v2_layout(state)
    table = _TORCHVISION if layout == "torchvision" else _ORIGINAL
    blocks = _block_names(model)
    project_bn = "conv.3" if layout == "torchvision" else "conv.7"
    out = {}
    for key, value in state.items():
        match = _KEY.match(key)
        if match is None:
            out[key] = value
            continue
        index, module, param = int(match[1]), match[2], match[3]
        if index == 0:
            name = {"0": "conv_stem", "1": "bn1"}.get(module)
        elif index == len(blocks) + 1:
            name = {"0": "conv_head", "1": "bn2"}.get(module)
        elif index <= len(blocks):
            expands = f"features.{index}.{project_bn}.weight" in state
            sub = table[expands].get(module)
            name = f"{blocks[index - 1]}.{sub}" if sub else None
        else:
            name = None
        out[f"{name}.{param}" if name else key] = value
    return out


def to_timm_layout(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """`state` renamed to `model`'s timm keys when it is in a known foreign layout; else unchanged."""
    is_mobilenet = type(model).__name__ == "EfficientNet" and hasattr(model, "blocks")
    if is_mobilenet and "conv_stem.weight" not in state and mobilenet_v2_layout(state):
        return mobilenet_v2_to_timm(state, model)
    return state
