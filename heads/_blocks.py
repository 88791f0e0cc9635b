"""Building blocks shared by several heads: low-rank adapters, layer mixing, row selection by group patterns."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Adapter(nn.Module):
    """Low-rank residual adapter `z = x + B(A(LN(x)))`; `B` starts at zero so `z = x` before training."""

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, rank, bias=False)
        self.up = nn.Linear(rank, dim, bias=False)
        nn.init.zeros_(self.up.weight)

    def delta(self, x: Tensor) -> Tensor:
        """The residual `B(A(LN(x)))` alone."""
        return self.up(self.down(self.norm(x)))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.delta(x)


class LayerMix(nn.Module):
    """Learned softmax over several same-width features (e.g. several layers' CLS tokens); one input = identity."""

    def __init__(self, inputs: Sequence[str]) -> None:
        super().__init__()
        self.inputs = tuple(inputs)
        self.logits = nn.Parameter(torch.zeros(len(self.inputs))) if len(self.inputs) > 1 else None

    def forward(self, x: Mapping[str, Tensor]) -> Tensor:
        if self.logits is None:
            return x[self.inputs[0]]
        weights = torch.softmax(self.logits, dim=0)
        return torch.einsum("l,lnd->nd", weights, torch.stack([x[name] for name in self.inputs]))


def check_inputs(inputs: Sequence[str], *, head: str, exactly_one: bool = False) -> None:
    """Validate a config's `inputs` tuple."""
    if not inputs or not all(isinstance(i, str) and i for i in inputs):
        raise ValueError(f"head '{head}' needs `inputs`: a non-empty list of feature names, got {inputs!r}")
    if exactly_one and len(inputs) != 1:
        raise ValueError(f"head '{head}' reads exactly one feature; got inputs={list(inputs)}")


def match_rows(values: np.ndarray, patterns: Sequence[str]) -> np.ndarray:
    """Boolean mask of the rows whose value matches any glob pattern (`vae:*`, `human`)."""
    uniq, inverse = np.unique(np.asarray(values).astype(str), return_inverse=True)
    hit = np.array([any(fnmatch.fnmatchcase(u, p) for p in patterns) for u in uniq], dtype=bool)
    return hit[inverse.reshape(-1)] if len(uniq) else np.zeros(len(values), dtype=bool)


def group_column(groups: Mapping[str, np.ndarray] | None, column: str, *, head: str) -> np.ndarray:
    """The per-row `column` of `groups`, or a ValueError saying the head needs it."""
    if groups is None or column not in groups:
        have = sorted(groups) if groups else []
        raise ValueError(
            f"head '{head}' trains on subsets chosen by the '{column}' column; pass groups with it "
            f"(manifest column '{column}'), got groups {have}"
        )
    return np.asarray(groups[column])


def subset_rows(
    groups: Mapping[str, np.ndarray] | None,
    y: np.ndarray,
    *,
    column: str,
    patterns: Sequence[str],
    keep_real: bool,
    head: str,
) -> np.ndarray:
    """Rows matching `patterns` in `column`, plus every real row when `keep_real` (real vs fake-type-k subsets)."""
    values = group_column(groups, column, head=head)
    mask = match_rows(values, patterns)
    if keep_real:
        mask |= np.asarray(y) == 0
    return mask


class ExpertBank(nn.Module):
    """K adapters, each with its own classifier, trained apart on its own subset (one stage per expert)."""

    def __init__(self, names: Sequence[str], dim: int, rank: int) -> None:
        super().__init__()
        self.names = tuple(names)
        self.adapters = nn.ModuleList(Adapter(dim, rank) for _ in self.names)
        self.classifiers = nn.ModuleList(nn.Linear(dim, 1) for _ in self.names)

    def forward(self, x: Tensor) -> Tensor:
        """Every expert's adapted feature, [N, K, D]."""
        return torch.stack([adapter(x) for adapter in self.adapters], dim=1)

    def scores(self, z: Tensor) -> Tensor:
        """Each expert's own logit on its feature, [N, K]."""
        return torch.cat([cls(z[:, k]) for k, cls in enumerate(self.classifiers)], dim=1)

    def expert_logit(self, k: int, x: Tensor) -> Tensor:
        """Expert k alone: its classifier on its adapted feature, [N]: `w . (x + U h) + b` computed as
        `x . w + h . (U^T w) + b` (`h` its code, `codes`): the same math without forming the [N, D] feature."""
        cls, up = self.classifiers[k], self.adapters[k].up.weight
        h = self.codes(x, [k])[..., 0, :]
        return x @ cls.weight[0] + h @ (up.T @ cls.weight[0]) + cls.bias[0]

    def codes(self, x: Tensor, experts: Sequence[int] | None = None) -> Tensor:
        """The low-rank codes `h_k = A_k(LN_k(x))` of the chosen experts (default all), [N, K, r], in one product:
        LayerNorm's normalisation is computed once and each expert's affine folded into its down-projection
        (`A (x_hat * g + b) = (A * g) x_hat + A b`), the same math as running the adapters one by one."""
        chosen = [self.adapters[k] for k in (range(len(self.names)) if experts is None else experts)]
        first = chosen[0]
        x_hat = F.layer_norm(x, first.norm.normalized_shape, eps=first.norm.eps)
        weight = torch.cat([a.down.weight * a.norm.weight for a in chosen])
        bias = torch.cat([a.down.weight @ a.norm.bias for a in chosen])
        return F.linear(x_hat, weight, bias).view(*x.shape[:-1], len(chosen), first.down.out_features)

    def mixed(self, x: Tensor, gates: Tensor, experts: Sequence[int] | None = None) -> Tensor:
        """`sum_k gates[:, k] * delta_k(x)`, [N, D], as two products (codes, then every expert's up-projection at
        once) instead of K adapters' [N, D] outputs stacked and weighted."""
        h = self.codes(x, experts)
        chosen = [self.adapters[k] for k in (range(len(self.names)) if experts is None else experts)]
        up = torch.cat([a.up.weight for a in chosen], dim=1)
        return F.linear((h * gates.unsqueeze(-1)).flatten(-2), up)

    def read_out(self, x: Tensor, weights: Tensor, gates: Tensor | None = None) -> Tensor:
        """`sum_k g_k (w_k . delta_k(x))` per row, [N] (g = `gates` [N, K], default 1; `weights` [K, D]): a linear
        read-out of the experts' residuals without forming any of them, as `sum_k g_k h_k . (U_k^T w_k)` (`h_k`
        the codes). A head adds its read-out of `x` itself (`z_k = x + delta_k(x)`)."""
        h = self.codes(x)
        ups = torch.stack([a.up.weight for a in self.adapters])  # [K, D, r]
        per_code = torch.einsum("kd,kdr->kr", weights, ups)
        if gates is not None:
            h = h * gates.unsqueeze(-1)
        return torch.einsum("nkr,kr->n", h, per_code)
