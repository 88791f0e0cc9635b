"""The `expert` head: a low-rank residual adapter + classifier trained on one subset (adapted from SEF / OmniAID)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from torch import Tensor, nn

from aigi.heads._blocks import Adapter, LayerMix, check_inputs, subset_rows
from aigi.heads._registry import register_head
from aigi.heads.train import Stage


@dataclass(frozen=True)
class ExpertCfg:
    """Config of `expert`.

    Attributes:
        inputs: one feature, or several same-width features (e.g. several layers) mixed by a learned softmax.
        in_dim: the features' width.
        rank: adapter rank r.
        column: the group column choosing the training subset ("source" for an artifact type, "domain" for a
            semantic domain); "" trains on every row.
        subset: glob patterns over `column` (e.g. ("vae:*",) or ("human",)).
        keep_real: also train on every real row (None = yes when column is "source": real vs fake-type-k).
    """

    inputs: tuple[str, ...]
    in_dim: int
    rank: int = 16
    column: str = ""
    subset: tuple[str, ...] = ()
    keep_real: bool | None = None

    def __post_init__(self) -> None:
        check_inputs(self.inputs, head="expert")
        if self.column and not self.subset:
            raise ValueError(f"expert: column='{self.column}' needs `subset` patterns (e.g. ['vae:*'])")
        if self.rank < 1:
            raise ValueError(f"expert: rank must be >= 1, got {self.rank}")


@register_head("expert")
class ExpertHead(nn.Module):
    """`z = x + B(A(LN(x)))`, `logit = w . z + b`; x is one feature or a softmax-weighted mix of several.

    Adapted: SEF and OmniAID put LoRA/SVD experts inside the backbone's attention; on cached features the expert
    is a residual low-rank adapter on the pooled feature (B zero-initialised, so training starts from a linear
    probe). The subset selection (real vs one fake type, or one semantic domain) follows the seeds.
    """

    cfg_cls = ExpertCfg

    def __init__(self, cfg: ExpertCfg) -> None:
        super().__init__()
        self.cfg = cfg
        self.mix = LayerMix(cfg.inputs)
        self.adapter = Adapter(cfg.in_dim, cfg.rank)
        self.classifier = nn.Linear(cfg.in_dim, 1)

    def features(self, x: Mapping[str, Tensor]) -> Tensor:
        """The adapted feature z [N, D]."""
        return self.adapter(self.mix(x))

    def forward(self, x: Mapping[str, Tensor]) -> Tensor:
        return self.classifier(self.features(x)).squeeze(-1)

    def stages(self) -> list[Stage]:
        cfg = self.cfg
        if not cfg.column:
            return [Stage("expert")]
        keep_real = cfg.column == "source" if cfg.keep_real is None else cfg.keep_real

        def rows(groups: Mapping[str, np.ndarray] | None, y: np.ndarray) -> np.ndarray:
            return subset_rows(groups, y, column=cfg.column, patterns=cfg.subset, keep_real=keep_real, head="expert")

        return [Stage(f"expert:{','.join(cfg.subset)}", rows=rows)]
