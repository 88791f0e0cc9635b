"""Optional per-feature input standardisation, fitted on the training rows and stored with the head."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch
from torch import Tensor, nn


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
        """Set mean/std from in-memory training features (see `fit_batches`)."""
        n = len(X[self.inputs[0]])
        self.fit_batches({k: X[k][i : i + 65536] for k in self.inputs} for i in range(0, n, 65536))

    def fit_batches(self, batches: Iterable[Mapping[str, np.ndarray | Tensor]]) -> None:
        """Set mean/std in one pass over batches of training rows: per-batch float64 moments merged exactly
        (Chan et al.), so memory stays one batch whatever the row count; a constant dimension keeps std 1."""
        count, mean, m2 = 0, [0.0] * len(self.inputs), [0.0] * len(self.inputs)
        for xb in batches:
            nb = 0
            for i, name in enumerate(self.inputs):
                x = torch.as_tensor(xb[name]).double()
                nb = x.shape[0]
                if nb == 0:
                    continue
                mb = x.mean(0)
                delta = mb - mean[i]
                total = count + nb
                m2[i] = m2[i] + ((x - mb) ** 2).sum(0) + delta**2 * (count * nb / total)
                mean[i] = mean[i] + delta * (nb / total)
            count += nb
        if count == 0:
            raise ValueError("input standardisation needs at least one training row")
        for i in range(len(self.inputs)):
            std = torch.sqrt(torch.as_tensor(m2[i]) / count)
            getattr(self, f"mean_{i}").copy_(torch.as_tensor(mean[i]))
            getattr(self, f"std_{i}").copy_(torch.where(std > 1e-12, std, torch.ones_like(std)))

    def apply(self, X: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Standardised float32 copies of the head's inputs (other keys pass through)."""
        out = dict(X)
        for i, name in enumerate(self.inputs):
            mean = getattr(self, f"mean_{i}").cpu().numpy()
            std = getattr(self, f"std_{i}").cpu().numpy()
            out[name] = ((np.asarray(X[name], dtype=np.float32) - mean) / std).astype(np.float32)
        return out

    def apply_tensors(self, xb: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The same as `apply` on a batch of float32 tensors (on the buffers' device)."""
        out = dict(xb)
        for i, name in enumerate(self.inputs):
            out[name] = (xb[name] - getattr(self, f"mean_{i}")) / getattr(self, f"std_{i}")
        return out


def input_widths(cfg: object) -> tuple[int, ...]:
    """Per-input widths from a head config's `in_dims` or `in_dim`."""
    n = len(cfg.inputs)
    if getattr(cfg, "in_dims", None):
        return tuple(int(w) for w in cfg.in_dims)
    return (int(cfg.in_dim),) * n
