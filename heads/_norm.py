"""Optional per-feature input standardisation, fitted on the training rows and stored with the head."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn


class InputNorm(nn.Module):
    """`(x - mean) / std` per input feature and dimension; buffers `mean_<i>` / `std_<i>` follow `inputs` order.

    heads.fit sets the statistics from the training rows; heads.fit, heads.predict and heads.explain apply them at
    the data boundary, so the head's own layers see standardised features.
    """

    def __init__(self, inputs: tuple[str, ...], widths: tuple[int, ...]) -> None:
        super().__init__()
        self.inputs = tuple(inputs)
        for i, width in enumerate(widths):
            self.register_buffer(f"mean_{i}", torch.zeros(width))
            self.register_buffer(f"std_{i}", torch.ones(width))

    def fit(self, X: Mapping[str, np.ndarray]) -> None:
        """Set mean/std from training features (float64 accumulation; a constant dimension keeps std 1)."""
        for i, name in enumerate(self.inputs):
            x = np.asarray(X[name], dtype=np.float64)
            std = x.std(axis=0)
            getattr(self, f"mean_{i}").copy_(torch.from_numpy(x.mean(axis=0)))
            getattr(self, f"std_{i}").copy_(torch.from_numpy(np.where(std > 1e-12, std, 1.0)))

    def apply(self, X: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Standardised float32 copies of the head's inputs (other keys pass through)."""
        out = dict(X)
        for i, name in enumerate(self.inputs):
            mean = getattr(self, f"mean_{i}").cpu().numpy()
            std = getattr(self, f"std_{i}").cpu().numpy()
            out[name] = ((np.asarray(X[name], dtype=np.float32) - mean) / std).astype(np.float32)
        return out


def input_widths(cfg: object) -> tuple[int, ...]:
    """Per-input widths from a head config's `in_dims` or `in_dim`."""
    n = len(cfg.inputs)
    if getattr(cfg, "in_dims", None):
        return tuple(int(w) for w in cfg.in_dims)
    return (int(cfg.in_dim),) * n
