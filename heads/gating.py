"""The `gating` head (SEF, adapted): experts trained apart per fake type, fused by a learned softmax gate."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from aigi.heads._blocks import ExpertBank, check_inputs
from aigi.heads._experts import artifact_expert_stages
from aigi.heads._registry import register_head
from aigi.heads.train import Stage


def _default_experts() -> dict[str, tuple[str, ...]]:
    return {"vae": ("vae:*",), "sr": ("sr:*",)}


@dataclass(frozen=True)
class GatingCfg:
    """Config of `gating`.

    Attributes:
        inputs: the one feature it reads.
        in_dim: that feature's width.
        experts: expert name -> glob patterns over `column` selecting its fake rows (each expert also sees every
            real row), e.g. {"vae": ["vae:*"], "sr": ["sr:*"]}.
        column: the group column the patterns match ("source").
        rank: adapter rank of each expert.
        gate_hidden: hidden width of the gate MLP.
    """

    inputs: tuple[str, ...]
    in_dim: int
    experts: dict[str, tuple[str, ...]] = field(default_factory=_default_experts)
    column: str = "source"
    rank: int = 16
    gate_hidden: int = 128

    def __post_init__(self) -> None:
        check_inputs(self.inputs, head="gating", exactly_one=True)
        if len(self.experts) < 2 or not all(self.experts.values()):
            raise ValueError(f"gating needs >= 2 experts, each with glob patterns; got {self.experts}")


@register_head("gating")
class GatingHead(nn.Module):
    """SEF's Separate Expert Fusion on cached features.

    Math: experts k = 1..K each `z_k = x + B_k(A_k(LN(x)))`, trained apart with their own classifier on real rows +
    fake rows of type k, then frozen; gate `g = softmax(MLP(x))`; `fused = sum_k g_k z_k`; `logit = w . fused + b`.
    Only the gate and the final classifier train in the fusion stage.

    Adapted: SEF's experts are LoRA modules inside the frozen backbone; here they are residual low-rank adapters on
    the cached pooled feature. The separate-then-fuse training and the softmax gate follow SEF.
    """

    cfg_cls = GatingCfg

    def __init__(self, cfg: GatingCfg) -> None:
        super().__init__()
        self.cfg = cfg
        self.experts = ExpertBank(list(cfg.experts), cfg.in_dim, cfg.rank)
        k = len(cfg.experts)
        self.gate = nn.Sequential(nn.Linear(cfg.in_dim, cfg.gate_hidden), nn.ReLU(), nn.Linear(cfg.gate_hidden, k))
        self.classifier = nn.Linear(cfg.in_dim, 1)

    def _parts(self, x: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        x0 = x[self.cfg.inputs[0]]
        return self.experts(x0), torch.softmax(self.gate(x0), dim=-1)

    def forward(self, x: Mapping[str, Tensor]) -> Tensor:
        """`w . sum_k g_k z_k + b` as `(w . x) sum_k g_k + sum_k g_k (w . delta_k(x)) + b` (`ExpertBank.read_out`:
        neither the experts' features nor their mix is formed)."""
        x0, w = x[self.cfg.inputs[0]], self.classifier.weight
        g = torch.softmax(self.gate(x0), dim=-1)
        weights = w.expand(len(self.cfg.experts), -1)
        return (x0 @ w[0]) * g.sum(-1) + self.experts.read_out(x0, weights, g) + self.classifier.bias[0]

    def explain(self, x: Mapping[str, Tensor]) -> dict:
        """Gates [N, K], expert_scores [N, K] = P(fake) from each expert's own classifier, the fused score."""
        z, g = self._parts(x)
        fused = self.classifier(torch.einsum("nk,nkd->nd", g, z)).squeeze(-1)
        return {
            "gates": g,
            "expert_scores": torch.sigmoid(self.experts.scores(z)),
            "expert_names": list(self.experts.names),
            "score": torch.sigmoid(fused),
        }

    def stages(self) -> list[Stage]:
        return [*artifact_expert_stages(self), Stage("fusion", trainable=("gate", "classifier"))]
