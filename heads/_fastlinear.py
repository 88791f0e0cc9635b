"""A no-autograd training step for `Linear(D, 1)` heads: closed-form BCE gradient + the Adam/AdamW update."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LinearAdamStep:
    """Replaces forward + backward + `torch.optim.Adam(W).step()` for one linear logit (the UAR/UnivFD probe).

    For a batch of B rows, `z = x w^T + b`, loss `mean_i c_i (softplus(z_i) - z_i t_i)` (c = class weights or 1),
    `dL/dz_i = c_i (sigmoid(z_i) - t_i) / B`, `dL/dw = (dL/dz)^T x`, `dL/db = sum dL/dz`; then Adam exactly as
    `torch.optim.Adam` / `AdamW` (default betas and eps): the same numbers up to float rounding, with a handful of
    kernel calls per step instead of an autograd graph and an optimizer wrapper (at batch 32 that overhead is most
    of the step).
    """

    def __init__(self, linear: nn.Linear, name: str, *, lr: float, weight_decay: float, decoupled: bool) -> None:
        self.params, self.name = [linear.weight, linear.bias], name
        self.param_groups = [{"lr": lr}]
        self.weight_decay, self.decoupled = weight_decay, decoupled
        self.betas, self.eps = (0.9, 0.999), 1e-8
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    @torch.no_grad()
    def __call__(self, x: Mapping[str, Tensor], target: Tensor, weight: Tensor | None) -> Tensor:
        """One step on a batch (feature `name` of `x`); returns the batch loss (a 0-d tensor, no sync)."""
        w, b = self.params
        xb = x[self.name]
        z = torch.addmm(b, xb, w.t()).squeeze(1)
        per_row = F.softplus(z) - z * target
        r = torch.sigmoid(z).sub_(target)
        if weight is not None:
            r.mul_(weight)
            per_row = per_row * weight
        r.div_(len(target))
        self._adam([torch.mm(r.unsqueeze(0), xb), r.sum().reshape(1)])
        return per_row.mean()

    def _adam(self, grads: list[Tensor]) -> None:
        beta1, beta2 = self.betas
        lr, wd = self.param_groups[0]["lr"], self.weight_decay
        self.t += 1
        step_size = lr / (1 - beta1**self.t)
        root_bc2 = math.sqrt(1 - beta2**self.t)
        for p, g, m, v in zip(self.params, grads, self.m, self.v, strict=True):
            if wd and self.decoupled:
                p.mul_(1 - lr * wd)
            elif wd:
                g = g.add(p, alpha=wd)
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            p.addcdiv_(m, v.sqrt().div_(root_bc2).add_(self.eps), value=-step_size)
