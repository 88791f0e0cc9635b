"""Ablation baselines `concat` and `mean`: fuse several features, or several separately trained experts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from aigi.heads._blocks import ExpertBank, check_inputs
from aigi.heads._experts import artifact_expert_stages
from aigi.heads._registry import register_head
from aigi.heads.train import Stage


@dataclass(frozen=True)
class ConcatCfg:
    """Config of `concat`.

    Attributes:
        inputs: the features to concatenate (or the one feature the experts read when `experts` is set).
        in_dims: their widths, in the same order.
        experts: optional expert name -> glob patterns over `column` (as in `gating`); when set, the head
            concatenates the K experts' adapted features instead of the input features.
        column: the group column the patterns match.
        rank: adapter rank of each expert.
    """

    inputs: tuple[str, ...]
    in_dims: tuple[int, ...]
    experts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    column: str = "source"
    rank: int = 16

    def __post_init__(self) -> None:
        _check_fusion(self.inputs, self.experts, head="concat")
        if len(self.in_dims) != len(self.inputs):
            raise ValueError(f"concat: in_dims {self.in_dims} must give one width per input {self.inputs}")


@dataclass(frozen=True)
class MeanCfg:
    """Config of `mean`: as `concat`, but the fused vectors (same width `in_dim`) are averaged."""

    inputs: tuple[str, ...]
    in_dim: int
    experts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    column: str = "source"
    rank: int = 16

    def __post_init__(self) -> None:
        _check_fusion(self.inputs, self.experts, head="mean")


def _check_fusion(inputs: tuple[str, ...], experts: dict, *, head: str) -> None:
    check_inputs(inputs, head=head)
    if experts and len(inputs) != 1:
        raise ValueError(f"{head}: with experts the head reads one feature; got inputs={list(inputs)}")
    if not experts and len(inputs) < 2:
        raise ValueError(f"{head}: give >= 2 inputs to fuse, or `experts` (name -> source patterns)")


class _Fusion(nn.Module):
    """Shared parts: optional expert bank, the vectors to fuse, stages and explain."""

    def _init_experts(self, dim: int) -> None:
        cfg = self.cfg
        self.experts = ExpertBank(list(cfg.experts), dim, cfg.rank) if cfg.experts else None

    def vectors(self, x: Mapping[str, Tensor]) -> list[Tensor]:
        """The vectors to fuse: each expert's adapted feature, or each input feature."""
        if self.experts is None:
            return [x[name] for name in self.cfg.inputs]
        z = self.experts(x[self.cfg.inputs[0]])
        return list(z.unbind(1))

    def stages(self) -> list[Stage]:
        if self.experts is None:
            return [Stage("fusion")]
        return [*artifact_expert_stages(self), Stage("fusion", trainable=("classifier",))]


@register_head("concat")
class ConcatHead(_Fusion):
    """`logit = w . [v_1, ..., v_K] + b` over input features or frozen experts' features (ablation baseline)."""

    cfg_cls = ConcatCfg

    def __init__(self, cfg: ConcatCfg) -> None:
        super().__init__()
        self.cfg = cfg
        self._init_experts(cfg.in_dims[0])
        width = cfg.in_dims[0] * len(cfg.experts) if cfg.experts else sum(cfg.in_dims)
        self.classifier = nn.Linear(width, 1)

    def forward(self, x: Mapping[str, Tensor]) -> Tensor:
        if self.experts is not None:  # w . [z_1, ..., z_K] + b without forming the z_k (`ExpertBank.read_out`)
            x0, weights = x[self.cfg.inputs[0]], self.classifier.weight.view(len(self.cfg.experts), -1)
            return x0 @ weights.sum(0) + self.experts.read_out(x0, weights) + self.classifier.bias[0]
        return self.classifier(torch.cat(self.vectors(x), dim=-1)).squeeze(-1)


@register_head("mean")
class MeanHead(_Fusion):
    """`logit = w . mean_k(v_k) + b` over same-width input features or frozen experts' features."""

    cfg_cls = MeanCfg

    def __init__(self, cfg: MeanCfg) -> None:
        super().__init__()
        self.cfg = cfg
        self._init_experts(cfg.in_dim)
        self.classifier = nn.Linear(cfg.in_dim, 1)

    def forward(self, x: Mapping[str, Tensor]) -> Tensor:
        if self.experts is not None:  # w . mean_k z_k + b = w . x + sum_k (w / K) . delta_k + b (`ExpertBank.read_out`)
            x0, k = x[self.cfg.inputs[0]], len(self.cfg.experts)
            weights = self.classifier.weight.expand(k, -1) / k
            return x0 @ self.classifier.weight[0] + self.experts.read_out(x0, weights) + self.classifier.bias[0]
        return self.classifier(torch.stack(self.vectors(x)).mean(0)).squeeze(-1)
