"""The `linear` head: one `nn.Linear(D, 1)` on one feature (UAR, UnivFD; exact)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from aigi.heads._blocks import check_inputs
from aigi.heads._fastlinear import LinearAdamStep
from aigi.heads._registry import register_head


@dataclass(frozen=True)
class LinearCfg:
    """Config of `linear`.

    Attributes:
        inputs: the one feature it reads, e.g. ("probe",) for UAR or ("proj",) for UnivFD.
        in_dim: that feature's width.
    """

    inputs: tuple[str, ...]
    in_dim: int

    def __post_init__(self) -> None:
        check_inputs(self.inputs, head="linear", exactly_one=True)


@register_head("linear")
class LinearHead(nn.Module):
    """`logit = x @ w.T + b`; parameter names `linear.weight` / `linear.bias` match UAR's released state dict."""

    cfg_cls = LinearCfg

    def __init__(self, cfg: LinearCfg) -> None:
        super().__init__()
        self.cfg = cfg
        self.linear = nn.Linear(cfg.in_dim, 1)

    def forward(self, x: Mapping[str, Tensor]) -> Tensor:
        feature = x[self.cfg.inputs[0]]
        if feature.shape[-1] != self.cfg.in_dim:
            raise ValueError(
                f"linear head reads '{self.cfg.inputs[0]}' of width {self.cfg.in_dim}; got width {feature.shape[-1]}"
            )
        return self.linear(feature).squeeze(-1)

    def fast_step(
        self, trainable: Sequence[str], *, lr: float, weight_decay: float, decoupled: bool
    ) -> LinearAdamStep | None:
        """heads.fit's training step when a plain stage trains exactly this layer: the closed-form gradient and the
        Adam/AdamW update without autograd (same numbers as `torch.optim.Adam(W)`), or None for other stages."""
        if sorted(trainable) != ["linear.bias", "linear.weight"]:
            return None
        return LinearAdamStep(self.linear, self.cfg.inputs[0], lr=lr, weight_decay=weight_decay, decoupled=decoupled)
