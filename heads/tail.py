"""Tail heads: the seeds' in-backbone LoRA experts, exact in the last blocks, trained from cached tokens.

Each head gets the frozen tail (blocks i+1 .. L and the backbone's pooling / final norm / projection / probe, see
heads/_lora.py) at build time and reads the cached tokens leaving block i (`l<i>.tokens`). Only the adapters, gates,
router and classifiers are trained and saved. Exact: the adapters in blocks i+1 .. L are the seed's adapters (same
targets, rank, scaling, zero-initialised B, separate/two-stage training). Not exact: the seeds also adapt blocks <= i.

- `tail_lora`: LoRA + a linear classifier on one pooled output (one SEF expert when trained on a subset), or GAPL:
  its prototype mapping on that output, stage 1 on the frozen tail, stage 2 with LoRA (on q/k/v in GAPL).
- `tail_sef`: SEF: K LoRA experts, each trained apart with its own classifier on the reals + one fake type, frozen;
  then a gate `softmax(MLP(f0))` on the frozen backbone's output f0 fuses the experts' outputs `sum_k g_k f_k` for a
  classifier (only gate + classifier train).
- `tail_moe`: OmniAID's hybrid MoE: one LoRA expert per semantic domain + the always-on artifact expert (gate 1), a
  router on the frozen backbone's `pooler` with top-k softmax gates that weight the experts' LoRA updates in every
  adapted Linear; the router's losses are those of the `router` head, plus OmniAID's orthogonality loss between an
  expert's adapters and those trained before it (stage 1). Manual expert weights at inference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from aigi.heads._blocks import subset_rows
from aigi.heads._lora import LoraExperts, TailHead, orthogonality_loss
from aigi.heads._registry import register_head
from aigi.heads.prototype import PrototypeCfg, PrototypeHead
from aigi.heads.router import RouterHead, RoutingCfg, balance_loss, domain_loss, manual_gates, router_stage, top_k_gates
from aigi.heads.train import Stage

ATTN = ("q", "k", "v", "out")


@dataclass(frozen=True)
class TailLoraCfg:
    """Config of `tail_lora`.

    Attributes:
        inputs: the one token feature it reads, "l<i>.tokens".
        output: the tail output the classifier reads ("pooler", "proj", "probe").
        rank: LoRA rank r.
        alpha: LoRA alpha (updates are scaled by alpha / r).
        dropout: dropout on the adapters' input.
        targets: where LoRA goes: q, k, v, out, fc1, fc2 (groups: attn, qkv, mlp).
        column: group column choosing the training subset ("" = every row), as in `expert`.
        subset: glob patterns over `column`; every real row is added when column is "source".
        mapping: "linear" (a linear classifier) or "prototype" (GAPL: stage 1 trains the `prototype` head's
            projection on the frozen tail's output, PCA prototypes, then stage 2 trains LoRA + projection +
            cross-attention + classifier).
        embed_dim / per_class / num_heads / stage1_epochs: the prototype mapping's settings (see `prototype`).
    """

    inputs: tuple[str, ...]
    output: str = "pooler"
    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ATTN
    column: str = ""
    subset: tuple[str, ...] = ()
    mapping: str = "linear"
    embed_dim: int = 128
    per_class: int = 32
    num_heads: int = 4
    stage1_epochs: int | None = None

    def __post_init__(self) -> None:
        if self.mapping not in ("linear", "prototype"):
            raise ValueError(f"tail_lora: mapping must be 'linear' or 'prototype', got {self.mapping!r}")


@register_head("tail_lora")
class TailLoraHead(TailHead):
    """`logit = w . tail_LoRA(tokens)[output] + b`: LoRA in the tail's blocks + a linear classifier; or, with
    mapping "prototype", GAPL's prototype mapping of the `prototype` head on that output instead of `w`."""

    cfg_cls = TailLoraCfg

    def __init__(self, cfg: TailLoraCfg, frozen: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg
        self.attach(frozen, inputs=cfg.inputs, output=cfg.output)
        lora = dict(rank=cfg.rank, alpha=cfg.alpha, dropout=cfg.dropout, targets=cfg.targets)
        self.lora = LoraExperts(frozen, experts=1, **lora)
        width = frozen.outputs[cfg.output]
        if cfg.mapping == "prototype":
            proto = dict(embed_dim=cfg.embed_dim, per_class=cfg.per_class, num_heads=cfg.num_heads)
            self.mapping = PrototypeHead(PrototypeCfg(inputs=("pooled",), in_dim=width, **proto))
        else:
            self.classifier = nn.Linear(width, 1)

    def pooled(self, x: Mapping[str, Tensor], *, adapted: bool = True) -> Tensor:
        """The (adapted) tail's pooled output [N, W]."""
        return self.run_tail(x[self.cfg.inputs[0]], 0 if adapted else None)[self.cfg.output]

    def forward(self, x: Mapping[str, Tensor]) -> Tensor:
        if self.cfg.mapping == "prototype":
            return self.mapping({"pooled": self.pooled(x)})
        return self.classifier(self.pooled(x)).squeeze(-1)

    def _gapl_stage1(self, xb: Mapping[str, Tensor], aux: Mapping[str, Tensor]) -> Tensor:
        with torch.no_grad():  # GAPL's stage 1: the backbone is frozen, no adapter yet
            pooled = self.pooled(xb, adapted=False)
        return self.mapping.stage1_fc(self.mapping.embed({"pooled": pooled})).squeeze(-1)

    def _gapl_prototypes(self, batches: Callable[[], Iterator[tuple[dict[str, Tensor], Tensor]]]) -> None:
        step = self.batch_rows

        def pooled() -> Iterator[tuple[dict[str, Tensor], Tensor]]:
            for xb, yb in batches():
                for i in range(0, len(yb), step):
                    yield {"pooled": self.pooled({k: v[i : i + step] for k, v in xb.items()})}, yb[i : i + step]

        self.mapping._start_stage2(pooled)

    def _gapl_stages(self) -> list[Stage]:
        stage1 = Stage(
            "stage1", trainable=("mapping.proj", "mapping.stage1_fc"), forward=self._gapl_stage1,
            epochs=self.cfg.stage1_epochs,
        )  # fmt: skip
        trainable = ("lora", "mapping.proj", "mapping.attn", "mapping.fc")
        return [stage1, Stage("stage2", trainable=trainable, setup=self._gapl_prototypes)]

    def stages(self) -> list[Stage]:
        cfg = self.cfg
        if cfg.mapping == "prototype":
            return self._gapl_stages()
        if not cfg.column:
            return [Stage("lora", trainable=("lora", "classifier"))]

        def rows(groups: Mapping[str, np.ndarray] | None, y: np.ndarray) -> np.ndarray:
            keep = cfg.column == "source"
            return subset_rows(groups, y, column=cfg.column, patterns=cfg.subset, keep_real=keep, head="tail_lora")

        return [Stage(f"lora:{','.join(cfg.subset)}", trainable=("lora", "classifier"), rows=rows)]


def _default_experts() -> dict[str, tuple[str, ...]]:
    return {"vae": ("vae:*",), "sr": ("sr:*",)}


@dataclass(frozen=True)
class TailSefCfg:
    """Config of `tail_sef` (LoRA fields as in `tail_lora`).

    Attributes:
        experts: expert name -> glob patterns over `column` selecting its fake rows (each expert also sees the reals).
        column: the group column the patterns match.
        gate_hidden: hidden width of the gate MLP.
    """

    inputs: tuple[str, ...]
    output: str = "pooler"
    experts: dict[str, tuple[str, ...]] = field(default_factory=_default_experts)
    column: str = "source"
    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ATTN
    gate_hidden: int = 128

    def __post_init__(self) -> None:
        if len(self.experts) < 2 or not all(self.experts.values()):
            raise ValueError(f"tail_sef needs >= 2 experts, each with glob patterns; got {self.experts}")


@register_head("tail_sef")
class TailSefHead(TailHead):
    """SEF's Separate Expert Fusion with its LoRA experts in the tail's blocks.

    Experts k = 1..K: `f_k = tail with LoRA_k (tokens)[output]`, each trained alone with its own classifier on real +
    fake-type-k rows, then frozen. Fusion: `g = softmax(MLP(f_0))` on the frozen tail's output f_0;
    `logit = w . sum_k g_k f_k + b`; only the gate and the classifier train (the tail runs K + 1 times per row).
    """

    cfg_cls = TailSefCfg

    def __init__(self, cfg: TailSefCfg, frozen: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg
        self.attach(frozen, inputs=cfg.inputs, output=cfg.output)
        k, width = len(cfg.experts), frozen.outputs[cfg.output]
        lora = dict(rank=cfg.rank, alpha=cfg.alpha, dropout=cfg.dropout, targets=cfg.targets)
        self.lora = LoraExperts(frozen, experts=k, **lora)
        self.expert_heads = nn.ModuleList(nn.Linear(width, 1) for _ in range(k))
        self.gate = nn.Sequential(nn.Linear(width, cfg.gate_hidden), nn.ReLU(), nn.Linear(cfg.gate_hidden, k))
        self.classifier = nn.Linear(width, 1)

    def _parts(self, x: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        tokens, out = x[self.cfg.inputs[0]], self.cfg.output
        with torch.no_grad():  # experts are frozen once trained: no gradient through the K + 1 tail passes
            base = self.run_tail(tokens, None)[out]
            z = torch.stack([self.run_tail(tokens, k)[out] for k in range(len(self.expert_heads))], dim=1)
        return z, torch.softmax(self.gate(base), dim=-1)

    def forward(self, x: Mapping[str, Tensor]) -> Tensor:
        z, g = self._parts(x)
        return self.classifier(torch.einsum("nk,nkd->nd", g, z)).squeeze(-1)

    def explain(self, x: Mapping[str, Tensor]) -> dict:
        """Gates [N, K], expert_scores [N, K] (each expert's own classifier), the fused score."""
        z, g = self._parts(x)
        scores = torch.cat([h(z[:, k]) for k, h in enumerate(self.expert_heads)], dim=1)
        fused = self.classifier(torch.einsum("nk,nkd->nd", g, z)).squeeze(-1)
        return {"gates": g, "expert_scores": torch.sigmoid(scores), "expert_names": list(self.cfg.experts),
                "score": torch.sigmoid(fused)}  # fmt: skip

    def _expert_stage(self, k: int, name: str, patterns: tuple[str, ...]) -> Stage:
        cfg = self.cfg

        def rows(groups: Mapping[str, np.ndarray] | None, y: np.ndarray) -> np.ndarray:
            return subset_rows(groups, y, column=cfg.column, patterns=patterns, keep_real=True, head="tail_sef")

        def forward(xb: Mapping[str, Tensor], aux: Mapping[str, Tensor]) -> Tensor:
            return self.expert_heads[k](self.run_tail(xb[cfg.inputs[0]], k)[cfg.output]).squeeze(-1)

        return Stage(f"expert:{name}", trainable=(f"lora.experts.{k}", f"expert_heads.{k}"), forward=forward, rows=rows)

    def stages(self) -> list[Stage]:
        experts = [self._expert_stage(k, n, p) for k, (n, p) in enumerate(self.cfg.experts.items())]
        return [*experts, Stage("fusion", trainable=("gate", "classifier"))]


@dataclass(frozen=True)
class TailMoeCfg(RoutingCfg):
    """Config of `tail_moe` (OmniAID's defaults: rank 8, scaling 1, dropout 0.1 on q/k/v/out): the routing and loss
    keys of `router` (`RoutingCfg`) and:

    Attributes:
        router_input: the frozen tail's output the router reads (OmniAID: the CLIP `pooler`).
        orth_weight: lambda of the orthogonality loss in stage 1.
    """

    inputs: tuple[str, ...]
    output: str = "pooler"
    router_input: str = "pooler"
    rank: int = 8
    alpha: float = 8.0
    dropout: float = 0.1
    targets: tuple[str, ...] = ATTN
    orth_weight: float = 1e-3

    def __post_init__(self) -> None:
        self.check_routing("tail_moe")


@register_head("tail_moe")
class TailMoeHead(TailHead):
    """OmniAID's hybrid MoE in the tail's blocks.

    Every adapted Linear computes `W x + sum_e g_e B_e A_e x` with g = [top-k softmax of the router over the domain
    experts, 1 for the artifact expert]; router `Linear(256, E)(ReLU(Linear(W, 256)(f0)))` on the frozen tail's
    `router_input`; `logit = w . tail(tokens)[output] + b`. Stage 1 trains each domain expert alone on its domain's
    rows, then the artifact expert alone on real + artifact rows, each with a fresh classifier and the
    orthogonality loss to the experts before it; stage 2 freezes the experts and trains router + classifier
    (initialised from the artifact stage's) with the `router` head's balance and domain losses.
    """

    cfg_cls = TailMoeCfg
    domain_index = RouterHead.domain_index

    def __init__(self, cfg: TailMoeCfg, frozen: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg
        self.attach(frozen, inputs=cfg.inputs, output=cfg.output)
        if cfg.router_input not in frozen.outputs:
            raise ValueError(f"tail_moe: router_input {cfg.router_input!r} is not one of {list(frozen.outputs)}")
        n, width = len(cfg.domains) + 1, frozen.outputs[cfg.output]
        lora = dict(rank=cfg.rank, alpha=cfg.alpha, dropout=cfg.dropout, targets=cfg.targets)
        self.lora = LoraExperts(frozen, experts=n, **lora)
        self.expert_heads = nn.ModuleList(nn.Linear(width, 1) for _ in range(n))
        hidden = cfg.router_hidden
        r_in = frozen.outputs[cfg.router_input]
        self.router = nn.Sequential(nn.Linear(r_in, hidden), nn.ReLU(), nn.Linear(hidden, len(cfg.domains)))
        self.classifier = nn.Linear(width, 1)
        self.manual: Tensor | None = None

    def set_manual_weights(self, weights: Mapping[str, float] | None) -> None:
        """Fix the domain gates to `weights` (domain -> weight) at inference; None returns to the router."""
        self.manual = manual_gates(weights, self.cfg.domains)

    def route(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Router logits [N, E] and the gates of all experts [N, E + 1] (artifact gate 1)."""
        with torch.no_grad():
            f0 = self.run_tail(tokens, None)[self.cfg.router_input]
        logits = self.router(f0)
        gates = top_k_gates(logits, self.cfg.top_k) if self.manual is None else self.manual.to(logits).expand_as(logits)
        return logits, torch.cat([gates, torch.ones_like(gates[:, :1])], dim=1)

    def forward(self, x: Mapping[str, Tensor]) -> Tensor:
        tokens = x[self.cfg.inputs[0]]
        _, gates = self.route(tokens)
        return self.classifier(self.run_tail(tokens, gates)[self.cfg.output]).squeeze(-1)

    def explain(self, x: Mapping[str, Tensor]) -> dict:
        """Gates [N, E + 1], expert_scores [N, E + 1] (each expert alone through its own classifier), the score."""
        tokens, out = x[self.cfg.inputs[0]], self.cfg.output
        _, gates = self.route(tokens)
        score = self.classifier(self.run_tail(tokens, gates)[out]).squeeze(-1)
        alone = [h(self.run_tail(tokens, k)[out]) for k, h in enumerate(self.expert_heads)]
        names = [*self.cfg.domains, "artifact"]
        return {"gates": gates, "expert_scores": torch.sigmoid(torch.cat(alone, dim=1)), "expert_names": names,
                "score": torch.sigmoid(score)}  # fmt: skip

    def _expert_stage(self, k: int, rows, *, optional: bool) -> Stage:
        cfg = self.cfg

        def forward(xb: Mapping[str, Tensor], aux: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
            logit = self.expert_heads[k](self.run_tail(xb[cfg.inputs[0]], k)[cfg.output]).squeeze(-1)
            return logit, cfg.orth_weight * orthogonality_loss(self.lora, k, list(range(k)))

        name = [*cfg.domains, "artifact"][k]
        trainable = (f"lora.experts.{k}", f"expert_heads.{k}")
        return Stage(f"expert:{name}", trainable=trainable, forward=forward, rows=rows, optional=optional,
                     label_smoothing=cfg.label_smoothing)  # fmt: skip

    def _stage2_forward(self, xb: Mapping[str, Tensor], aux: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        tokens = xb[self.cfg.inputs[0]]
        logits, gates = self.route(tokens)
        extra = self.cfg.balance_weight * balance_loss(logits, self.cfg.top_k)
        if "domain" in aux:
            extra = extra + self.cfg.domain_weight * domain_loss(logits, aux["domain"])
        return self.classifier(self.run_tail(tokens, gates)[self.cfg.output]).squeeze(-1), extra

    def _start_stage2(self, batches: object) -> None:
        self.classifier.load_state_dict(self.expert_heads[-1].state_dict())

    def stages(self) -> list[Stage]:
        cfg = self.cfg
        stages = []
        for k, domain in enumerate(cfg.domains):

            def rows(groups, y, d=domain):
                return subset_rows(groups, y, column=cfg.domain_column, patterns=(d,), keep_real=False, head="tail_moe")

            stages.append(self._expert_stage(k, rows, optional=True))

        def artifact_rows(groups, y):
            pats = cfg.artifact
            return subset_rows(groups, y, column=cfg.artifact_column, patterns=pats, keep_real=True, head="tail_moe")

        stages.append(self._expert_stage(len(cfg.domains), artifact_rows, optional=False))
        return [*stages, router_stage(self)]
