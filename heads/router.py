"""The `router` head (OmniAID hybrid MoE): routed semantic experts plus an always-on artifact expert."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aigi.heads._blocks import ExpertBank, check_inputs
from aigi.heads._experts import expert_stages
from aigi.heads._registry import register_head
from aigi.heads.train import Stage


def top_k_gates(logits: Tensor, k: int) -> Tensor:
    """Dense gates [N, E]: softmax over each row's k largest logits, zero elsewhere."""
    values, index = logits.topk(k, dim=-1)
    return torch.zeros_like(logits).scatter(-1, index, torch.softmax(values, dim=-1))


def balance_loss(logits: Tensor, k: int) -> Tensor:
    """Switch load-balance loss `E * sum_i f_i * P_i`.

    f_i is the fraction of rows whose top-k holds expert i, P_i the mean full-softmax probability of expert i.
    """
    n_experts = logits.shape[-1]
    chosen = torch.zeros_like(logits).scatter(-1, logits.topk(k, dim=-1).indices, 1.0)
    return n_experts * (chosen.mean(0) * torch.softmax(logits, dim=-1).mean(0)).sum()


def domain_loss(logits: Tensor, domain: Tensor) -> Tensor:
    """Cross-entropy of the router logits against the rows' domain index; rows with index < 0 are masked out."""
    valid = (domain >= 0).to(logits.dtype)
    ce = F.cross_entropy(logits, domain.clamp(min=0), reduction="none")
    return (ce * valid).sum() / valid.sum().clamp(min=1.0)


def manual_gates(weights: Mapping[str, float] | None, domains: tuple[str, ...]) -> Tensor | None:
    """User weights (domain -> weight, as given; unnamed domains 0) as a gate vector [E]; None stays None."""
    if weights is None:
        return None
    unknown = [d for d in weights if d not in domains]
    if unknown:
        hints = {d: difflib.get_close_matches(d, domains, n=1) for d in unknown}
        raise ValueError(
            f"unknown expert(s) {hints} (name: close match); the router's domains are "
            f"{list(domains)}; the artifact expert's weight is always 1"
        )
    return torch.tensor([float(weights.get(d, 0.0)) for d in domains])


def router_stage(head: nn.Module) -> Stage:
    """Stage 2 of `router` and `tail_moe`: experts frozen, router + classifier trained on the head's
    `_stage2_forward` (BCE + balance + domain losses), rows' domain indices as aux, `_start_stage2` first."""
    return Stage(
        "router",
        trainable=("router", "classifier"),
        forward=head._stage2_forward,
        aux=head.domain_index,
        setup=head._start_stage2,
        label_smoothing=head.cfg.label_smoothing,
    )


@dataclass(frozen=True, kw_only=True)
class RoutingCfg:
    """The routed mixture's keys (OmniAID's defaults), shared by the `router` and `tail_moe` configs.

    Attributes:
        domains: the semantic experts, one per domain value of `domain_column`.
        domain_column: the group column naming each row's semantic domain ("" / other values = unknown).
        artifact: glob patterns over `artifact_column` for the artifact expert's fake rows (real rows are added).
        artifact_column: the group column those patterns match.
        top_k: semantic experts used per row.
        router_hidden: hidden width of the router MLP.
        balance_weight: lambda of the load-balance loss.
        domain_weight: lambda of the router's domain cross-entropy.
        label_smoothing: label smoothing of every stage.
    """

    domains: tuple[str, ...] = ("human", "animal", "object", "scene", "anime")
    domain_column: str = "domain"
    artifact: tuple[str, ...] = ("vae:*",)
    artifact_column: str = "source"
    top_k: int = 2
    router_hidden: int = 256
    balance_weight: float = 1e-3
    domain_weight: float = 0.1
    label_smoothing: float = 0.1

    def check_routing(self, head: str) -> None:
        """top_k within the domains; domains unique and not named `artifact` (the always-on expert)."""
        if not 1 <= self.top_k <= len(self.domains):
            raise ValueError(f"{head}: top_k={self.top_k} must be between 1 and the {len(self.domains)} domains")
        if len(set(self.domains)) != len(self.domains) or "artifact" in self.domains:
            raise ValueError(f"{head}: domains must be unique and not 'artifact'; got {self.domains}")


@dataclass(frozen=True)
class RouterCfg(RoutingCfg):
    """Config of `router`: the routing keys of `RoutingCfg` and:

    Attributes:
        inputs: the one feature it reads (CLIP `pooler` in OmniAID).
        in_dim: that feature's width.
        rank: adapter rank of each expert.
    """

    inputs: tuple[str, ...]
    in_dim: int
    rank: int = 16

    def __post_init__(self) -> None:
        check_inputs(self.inputs, head="router", exactly_one=True)
        self.check_routing("router")


@register_head("router")
class RouterHead(nn.Module):
    """OmniAID's hybrid mixture of experts on cached features.

    Math: router `r = Linear(256, E)(ReLU(Linear(D, 256)(x)))`; semantic gates `g` = softmax over the top-k of `r`
    (zero elsewhere); `z = x + sum_i g_i delta_i(x) + delta_art(x)` with `delta(x) = B(A(LN(x)))` (the artifact
    gate is always 1); `logit = w . z + b`. Stage 1 trains each semantic expert on its own domain's rows, then the
    artifact expert on real + VAE-reconstruction rows, each with a freshly initialised classifier (OmniAID resets
    the head before each expert). Stage 2 freezes the experts and trains router + classifier (the classifier
    continues from the artifact stage's, as OmniAID keeps its head) with loss
    `BCE(label smoothing 0.1) + 0.001 * E * sum_i f_i P_i + 0.1 * CE(r, domain)` (rows of unknown domain masked).

    Exact: router shape, top-k softmax, Switch balance loss, masked domain loss, always-on artifact expert, two-stage
    schedule. Adapted: OmniAID's experts are SVD subspaces of the CLIP attention projections (with an orthogonality
    loss) and its head is a 2-way softmax; here experts are residual low-rank adapters on the pooled feature and the
    head one logit (BCE).

    Manual mode: `set_manual_weights({"human": 0.7, ...})` replaces the router's semantic gates by those weights
    (as given, unnormalised; unnamed domains get 0) for forward/explain until `set_manual_weights(None)`.
    """

    cfg_cls = RouterCfg

    def __init__(self, cfg: RouterCfg) -> None:
        super().__init__()
        self.cfg = cfg
        self.experts = ExpertBank([*cfg.domains, "artifact"], cfg.in_dim, cfg.rank)
        self.router = nn.Sequential(
            nn.Linear(cfg.in_dim, cfg.router_hidden), nn.ReLU(), nn.Linear(cfg.router_hidden, len(cfg.domains))
        )
        self.classifier = nn.Linear(cfg.in_dim, 1)
        self.manual: Tensor | None = None

    def set_manual_weights(self, weights: Mapping[str, float] | None) -> None:
        """Fix the semantic gates to `weights` (domain -> weight) at inference; None returns to the router."""
        self.manual = manual_gates(weights, self.cfg.domains)

    def route(self, x0: Tensor) -> tuple[Tensor, Tensor]:
        """Router logits [N, E] and the semantic gates [N, E] (top-k softmax, or the manual weights)."""
        logits = self.router(x0)
        if self.manual is not None:
            return logits, self.manual.to(logits).expand_as(logits)
        return logits, top_k_gates(logits, self.cfg.top_k)

    def _mix(self, x0: Tensor, gates: Tensor) -> Tensor:
        """`x + sum_i g_i delta_i(x) + delta_art(x)`, every expert in one pair of products (`ExpertBank.mixed`)."""
        return x0 + self.experts.mixed(x0, torch.cat([gates, torch.ones_like(gates[:, :1])], dim=1))

    def forward(self, x: Mapping[str, Tensor]) -> Tensor:
        x0 = x[self.cfg.inputs[0]]
        _, gates = self.route(x0)
        return self._logit(x0, gates)

    def _logit(self, x0: Tensor, gates: Tensor) -> Tensor:
        """`w . _mix(x0, gates) + b` as `w . x + sum_i g_i (w . delta_i(x)) + w . delta_art(x) + b` (`ExpertBank.
        read_out`: the same math without forming the mixed feature)."""
        w = self.classifier.weight
        full = torch.cat([gates, torch.ones_like(gates[:, :1])], dim=1)
        return x0 @ w[0] + self.experts.read_out(x0, w.expand(full.shape[1], -1), full) + self.classifier.bias[0]

    def explain(self, x: Mapping[str, Tensor]) -> dict:
        """Gates [N, E+1] (semantic gates, then the artifact gate = 1) and expert_scores [N, E+1] = P(fake) of each
        expert alone through its own stage-1 classifier; "score" is the head's P(fake)."""
        x0 = x[self.cfg.inputs[0]]
        _, gates = self.route(x0)
        logit = self.classifier(self._mix(x0, gates)).squeeze(-1)
        scores = torch.sigmoid(self.experts.scores(self.experts(x0)))
        return {
            "gates": torch.cat([gates, torch.ones_like(gates[:, :1])], dim=1),
            "expert_scores": scores,
            "expert_names": list(self.experts.names),
            "score": torch.sigmoid(logit),
        }

    def _stage2_forward(self, xb: Mapping[str, Tensor], aux: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        x0 = xb[self.cfg.inputs[0]]
        logits = self.router(x0)
        out = self._logit(x0, top_k_gates(logits, self.cfg.top_k))
        extra = self.cfg.balance_weight * balance_loss(logits, self.cfg.top_k)
        if "domain" in aux:
            extra = extra + self.cfg.domain_weight * domain_loss(logits, aux["domain"])
        return out, extra

    def domain_index(self, groups: Mapping[str, np.ndarray] | None, y: np.ndarray) -> dict[str, np.ndarray]:
        """Per-row index of the domain in `cfg.domains`, -1 when unknown."""
        if groups is None or self.cfg.domain_column not in groups:
            return {"domain": np.full(len(y), -1, dtype=np.int64)}
        lookup = {d: i for i, d in enumerate(self.cfg.domains)}
        values = np.asarray(groups[self.cfg.domain_column]).astype(str)
        return {"domain": np.array([lookup.get(v, -1) for v in values], dtype=np.int64)}

    def _start_stage2(self, batches: object) -> None:
        self.classifier.load_state_dict(self.experts.classifiers[-1].state_dict())

    def stages(self) -> list[Stage]:
        cfg = self.cfg
        source = lambda xb: xb[cfg.inputs[0]]  # noqa: E731
        common = {"prefix": "experts", "source": source, "head": "router", "label_smoothing": cfg.label_smoothing}
        semantic = expert_stages(
            self.experts,
            patterns=[(d,) for d in cfg.domains],
            column=cfg.domain_column,
            keep_real=False,
            optional=True,
            only=range(len(cfg.domains)),
            **common,
        )
        artifact = expert_stages(
            self.experts,
            patterns=[cfg.artifact],
            column=cfg.artifact_column,
            keep_real=True,
            only=[len(cfg.domains)],
            **common,
        )
        return [*semantic, *artifact, router_stage(self)]
