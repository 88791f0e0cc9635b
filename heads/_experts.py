"""Stage builders for heads that first train several experts apart, each on its own row subset."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from torch import Tensor

from aigi.heads._blocks import ExpertBank, subset_rows
from aigi.heads.train import Stage


def expert_stages(
    bank: ExpertBank,
    *,
    prefix: str,
    source: Callable[[Mapping[str, Tensor]], Tensor],
    patterns: Sequence[Sequence[str]],
    column: str,
    keep_real: bool,
    head: str,
    optional: bool = False,
    label_smoothing: float | None = None,
    only: Sequence[int] | None = None,
) -> list[Stage]:
    """One stage per expert k: train `bank.adapters[k]` + `bank.classifiers[k]` on rows matching `patterns[k]`.

    Args:
        bank: the experts.
        prefix: the bank's attribute name in the head (for parameter names).
        source: maps a batch dict to the tensor the experts read.
        patterns: per expert, glob patterns over `column`.
        column: the group column ("source" or "domain").
        keep_real: add every real row to each expert's subset (real vs fake-type-k).
        head: the head's name, for error messages.
        optional: skip an expert whose rows hold one class only instead of failing.
        label_smoothing: per-stage label smoothing override.
        only: the experts to build stages for (default all); `patterns` then align with `only`.
    """
    stages = []
    chosen = range(len(bank.names)) if only is None else only
    for j, k in enumerate(chosen):
        name = bank.names[k]

        def rows(groups: Mapping[str, np.ndarray] | None, y: np.ndarray, pats: Sequence[str] = patterns[j]):
            return subset_rows(groups, y, column=column, patterns=pats, keep_real=keep_real, head=head)

        def forward(xb: Mapping[str, Tensor], aux: Mapping[str, Tensor], k: int = k) -> Tensor:
            return bank.expert_logit(k, source(xb))

        stages.append(
            Stage(
                f"expert:{name}",
                trainable=(f"{prefix}.adapters.{k}", f"{prefix}.classifiers.{k}"),
                forward=forward,
                rows=rows,
                optional=optional,
                label_smoothing=label_smoothing,
                share="expert",
            )
        )
    return stages


def artifact_expert_stages(head: object, *, bank_attr: str = "experts") -> list[Stage]:
    """Stages of a head whose config maps expert names to source patterns (`cfg.experts`, `cfg.column`): each
    expert reads the head's first input and trains on the reals plus its own fake type (SEF's separate training)."""
    cfg = head.cfg
    return expert_stages(
        getattr(head, bank_attr),
        prefix=bank_attr,
        source=lambda xb: xb[cfg.inputs[0]],
        patterns=list(cfg.experts.values()),
        column=cfg.column,
        keep_real=True,
        head=head.head_name,
    )
