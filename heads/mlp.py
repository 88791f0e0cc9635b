"""The `mlp` head: a plain MLP, or GAPL's stage-1 form (projection -> L2-normalise -> bias-free linear)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from aigi.heads._blocks import check_inputs
from aigi.heads._registry import register_head


@dataclass(frozen=True)
class MlpCfg:
    """Config of `mlp`.

    Attributes:
        inputs: the one feature it reads.
        in_dim: that feature's width.
        hidden: hidden width of the plain form.
        depth: number of hidden layers of the plain form.
        dropout: dropout after each hidden activation (plain form).
        gapl: use GAPL's stage-1 form `Linear(D, embed_dim, bias=False) -> L2-normalise -> Linear(embed_dim, 1,
            bias=False)` (exact: GAPL's `foren_proj` + `fc` on CLIP-L/14 `pooler`).
        embed_dim: GAPL embedding width (128 in GAPL).
    """

    inputs: tuple[str, ...]
    in_dim: int
    hidden: int = 512
    depth: int = 1
    dropout: float = 0.1
    gapl: bool = False
    embed_dim: int = 128

    def __post_init__(self) -> None:
        check_inputs(self.inputs, head="mlp", exactly_one=True)
        if self.depth < 1 or self.hidden < 1 or not 0 <= self.dropout < 1:
            raise ValueError(f"mlp needs depth >= 1, hidden >= 1, 0 <= dropout < 1; got {self}")


@register_head("mlp")
class MlpHead(nn.Module):
    """Plain: `D -> hidden (-> hidden ...) -> 1` with GELU and dropout. GAPL form: `proj`, normalise, `fc`."""

    cfg_cls = MlpCfg

    def __init__(self, cfg: MlpCfg) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.gapl:
            self.proj = nn.Linear(cfg.in_dim, cfg.embed_dim, bias=False)
            self.fc = nn.Linear(cfg.embed_dim, 1, bias=False)
            return
        layers: list[nn.Module] = []
        width = cfg.in_dim
        for _ in range(cfg.depth):
            layers += [nn.Linear(width, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout)]
            width = cfg.hidden
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def embed(self, x: Mapping[str, Tensor]) -> Tensor:
        """GAPL form only: the L2-normalised embedding."""
        return F.normalize(self.proj(x[self.cfg.inputs[0]]), dim=-1)

    def forward(self, x: Mapping[str, Tensor]) -> Tensor:
        if self.cfg.gapl:
            return self.fc(self.embed(x)).squeeze(-1)
        return self.net(x[self.cfg.inputs[0]]).squeeze(-1)
