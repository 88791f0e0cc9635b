"""`l<i>.tokens` of timm's EfficientNet-family CNNs (MobileNetV2, EfficientNet): the feature map leaving one block.

Block numbering (it differs from `l<i>.mean`, which counts timm's feature levels): i = 0 is the stem
(`conv_stem` + `bn1`), i = 1 .. N the blocks in forward order, flattened over timm's stages; for MobileNetV2 block i
is torchvision's `features[i]` (1 .. 17 the inverted residual blocks). The map [C, H, W] is stored as tokens
[H * W, C], row-major over (H, W): `x.flatten(2).transpose(1, 2)`; the frozen tail folds them back.
"""

from __future__ import annotations

import torch
from torch import nn


def cnn_token_blocks(model: nn.Module) -> list[nn.Module] | None:
    """[stem, block 1, .., block N]: the modules whose outputs `l0.tokens` .. `lN.tokens` hold; None for a model
    that is not a timm `EfficientNet` (stem, nested block stages, 1x1 head conv + BN, global pooling)."""
    if type(model).__name__ != "EfficientNet" or not hasattr(model, "conv_head"):
        return None
    return [model.bn1, *(blk for stage in model.blocks for blk in stage)]


def run_cnn_blocks(model: nn.Module, x: torch.Tensor, last: int) -> torch.Tensor:
    """The map leaving block `last` (0 = the stem): the stem and blocks 1 .. last, nothing after them."""
    x = model.bn1(model.conv_stem(x))
    for blk in (cnn_token_blocks(model) or [])[1 : last + 1]:
        x = blk(x)
    return x


def cnn_token_shapes(model: nn.Module, size: int) -> list[tuple[int, int]]:
    """(H * W, C) of every block's output for a size x size input (one eval-mode forward of a blank image: the
    BatchNorm statistics are left as they are)."""
    blocks = cnn_token_blocks(model) or []
    capture, training = TokenCapture(model, list(range(len(blocks)))), model.training
    try:
        with torch.no_grad():
            model.eval().forward_features(torch.zeros(1, 3, size, size))
    finally:
        capture.remove()
        model.train(training)
    return [tuple(capture.take(i).shape[1:]) for i in range(len(blocks))]


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H * W, C]."""
    return x.flatten(2).transpose(1, 2)


def tokens_to_map(tokens: torch.Tensor) -> torch.Tensor:
    """[B, H * W, C] -> [B, C, H, W] for a square map (the preprocessing makes square inputs)."""
    n, t, c = tokens.shape
    side = int(round(t**0.5))
    if side * side != t:
        raise ValueError(f"CNN tokens must come from a square feature map; got {t} tokens per row")
    return tokens.transpose(1, 2).reshape(n, c, side, side)


class TokenCapture:
    """Records the outputs of the blocks whose tokens a CNN extraction asks for, by forward hooks."""

    def __init__(self, model: nn.Module, indices: list[int]) -> None:
        self.seen: dict[int, torch.Tensor] = {}
        modules = cnn_token_blocks(model) or []
        self.hooks = [modules[i].register_forward_hook(self._hook(i)) for i in indices]

    def _hook(self, i: int):
        def keep(_module: nn.Module, _args: tuple, output: torch.Tensor) -> None:
            self.seen[i] = output

        return keep

    def take(self, i: int) -> torch.Tensor:
        """Block i's output of the last forward as tokens [B, H * W, C]."""
        return map_to_tokens(self.seen.pop(i))

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()
