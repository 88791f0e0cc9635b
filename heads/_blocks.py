"""Building blocks shared by several heads: low-rank adapters, layer mixing, row selection by group patterns."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence

import numpy as np
import torch
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
        """Expert k alone: its classifier on its adapted feature, [N]."""
        return self.classifiers[k](self.adapters[k](x)).squeeze(-1)
