"""LoRA experts inside a frozen backbone tail handed to a head, and the base class of the heads that run one.

The tail is any `nn.Module` mapping cached tokens [N, T, D] to {output name: [N, W]} that describes itself with
`blocks` (its blocks in order), `start` (index of its first block in the whole backbone), `outputs` (name -> width)
and `lora_targets` (target name -> (path of a Linear or a 1x1 Conv2d inside each block, first and last output
column, or None for the whole output)), and optionally `lora_site(block, target)` -> that site in one block or None
where a block lacks it; `extractors.build_tail` builds one. Heads never import it: it is given to them.

LoRA at a target: `y = W x + b + (alpha / r) * B A dropout(x)`, A [r, in] Kaiming-uniform, B [out, r] zero, so a
new adapter changes nothing. q/k/v of a fused qkv Linear are column slices: each has its own A and B and writes
only its slice. At a 1x1 Conv2d (a CNN's pointwise conv, a linear map over channels at every pixel) A and B are
1x1 convs: `B A x` over the channel axis. Several experts share the sites; `LoraExperts.use(...)` says which are
on: none, expert k alone, or per-row weights [N, E] (sum_e w_ne B_e A_e x). The frozen weights are not part of
the head's state dict.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TARGET_GROUPS = {
    "attn": ("q", "k", "v", "out"),
    "mlp": ("fc1", "fc2"),
    "qkv": ("q", "k", "v"),
    "pw": ("pw_expand", "pw_project"),
}
_TOKENS = re.compile(r"^(?:.*/)?l(-?\d+)\.tokens$")  # l-1.tokens: the tokens entering block 0


def expand_targets(targets: Sequence[str], offered: Mapping[str, Any]) -> tuple[str, ...]:
    """("attn", "fc1") -> ("q", "k", "v", "out", "fc1"), validated against the tail's target names."""
    out: list[str] = []
    for t in targets:
        for name in TARGET_GROUPS.get(t, (t,)):
            if name not in offered:
                groups = sorted(g for g, members in TARGET_GROUPS.items() if set(members) <= set(offered))
                raise ValueError(
                    f"unknown LoRA target {t!r} for this backbone; choose from {sorted(offered)} or {groups}"
                )
            if name not in out:
                out.append(name)
    if not out:
        raise ValueError(f"LoRA needs at least one target; this backbone offers {sorted(offered)}")
    return tuple(out)


class LoraPair(nn.Module):
    """One adapter's A [r, in] (Kaiming-uniform, as nn.Linear) and B [out, r] (zero); with `channels`, applied over
    the channel axis of [N, C, H, W] maps (as 1x1 convs) instead of the last axis."""

    def __init__(self, in_features: int, out_features: int, rank: int, *, channels: bool = False) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, rank))
        self.channels = channels
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        if self.channels:
            return F.conv2d(F.conv2d(x, self.A[:, :, None, None]), self.B[:, :, None, None])
        return F.linear(F.linear(x, self.A), self.B)


def site_shape(module: nn.Module) -> tuple[int, int, bool]:
    """(in width, out width, over channels) of a LoRA site: an nn.Linear or a 1x1, stride-1, ungrouped nn.Conv2d."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, False
    pointwise = isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.stride == (1, 1)
    if pointwise and module.groups == 1:
        return module.in_channels, module.out_channels, True
    raise TypeError(f"LoRA goes on nn.Linear or pointwise (1x1, stride 1, groups 1) nn.Conv2d, not {module}")


ADAPTER_BYTES_PER_PARAMETER = 16  # float32 value, gradient and Adam's two moments
ADAPTER_MEMORY_SHARE = 0.5  # adapters may take at most this share of the memory available when the head is built


def check_adapter_size(shapes: Mapping[str, tuple[int, int, bool]], *, rank: int, experts: int) -> None:
    """Refuse a rank beyond the adapted layers' widths, and adapters whose training state does not fit in memory.

    An update B A of rank r has rank <= min(in, out), so a larger r only costs memory; the adapters' parameters,
    gradients and Adam state must fit in ADAPTER_MEMORY_SHARE of the memory available now.

    Raises:
        ValueError: naming the layer and the largest rank it takes, or the memory needed and available.
    """
    import psutil

    narrow = min(shapes.items(), key=lambda kv: min(kv[1][:2]), default=None)
    if narrow is not None and rank > min(narrow[1][:2]):
        width = min(narrow[1][:2])
        raise ValueError(
            f"LoRA rank {rank} exceeds the width {width} of the adapted layer {narrow[0]} (an update of rank r needs "
            f"r <= min(in, out)); set head.rank to at most {width}"
        )
    parameters = experts * rank * sum(i + o for i, o, _ in shapes.values())
    need, free = parameters * ADAPTER_BYTES_PER_PARAMETER, psutil.virtual_memory().available
    if need > ADAPTER_MEMORY_SHARE * free:
        raise ValueError(
            f"LoRA adapters of rank {rank} x {experts} expert(s) hold {parameters:,} parameters: {need / 1e9:.1f} GB "
            f"with their gradients and optimizer state, more than {ADAPTER_MEMORY_SHARE:.0%} of the "
            f"{free / 1e9:.1f} GB of memory available; lower head.rank or the number of experts"
        )


class LoraExperts(nn.Module):
    """E experts, each a LoraPair at every (block, target) site of the tail, added by forward hooks on its Linears.

    Args:
        tail: the frozen tail (see the module doc).
        experts: number of experts E.
        rank: r.
        alpha: the update is scaled by alpha / r.
        dropout: dropout on the adapters' input (the frozen path sees the input unchanged).
        targets: target names (q, k, v, out, fc1, fc2; groups attn, mlp, qkv).
    """

    def __init__(
        self, tail: nn.Module, *, experts: int, rank: int, alpha: float, dropout: float, targets: Sequence[str]
    ):
        super().__init__()
        if rank < 1 or experts < 1:
            raise ValueError(f"LoRA needs rank >= 1 and >= 1 expert; got rank={rank}, experts={experts}")
        self.targets = expand_targets(targets, tail.lora_targets)
        self.scale = float(alpha) / rank
        self.dropout = nn.Dropout(dropout)
        self.mix: int | Tensor | None = None
        sites: dict[nn.Module, list[tuple[str, int | None, int | None]]] = {}
        shapes: dict[str, tuple[int, int, bool]] = {}
        site_of = getattr(tail, "lora_site", lambda _block, target: tail.lora_targets[target])
        for j, block in enumerate(tail.blocks):
            for target in self.targets:
                site = site_of(block, target)
                if site is None:  # this block has no such layer (e.g. no expansion conv)
                    continue
                path, start, stop = site
                module = block.get_submodule(path)
                key = f"b{tail.start + j}_{target}"
                width_in, width_out, channels = site_shape(module)
                shapes[key] = (width_in, width_out if start is None else stop - start, channels)
                sites.setdefault(module, []).append((key, start, stop))
        check_adapter_size(shapes, rank=rank, experts=experts)
        self.experts = nn.ModuleList(
            nn.ModuleDict({k: LoraPair(i, o, rank, channels=c) for k, (i, o, c) in shapes.items()})
            for _ in range(experts)
        )
        self._hooks = [lin.register_forward_hook(self._hook(slices)) for lin, slices in sites.items()]

    @contextlib.contextmanager
    def use(self, mix: int | Tensor | None) -> Iterator[None]:
        """Within the block, the tail runs with expert `mix` alone (int), per-row weights [N, E], or no adapter."""
        previous, self.mix = self.mix, mix
        try:
            yield
        finally:
            self.mix = previous

    def _delta(self, key: str, x: Tensor) -> Tensor:
        if isinstance(self.mix, int):
            return self.experts[self.mix][key](x)
        shape = (-1,) + (1,) * (x.dim() - 1)
        parts = [w.reshape(shape) * bank[key](x) for bank, w in zip(self.experts, self.mix.unbind(-1))]
        return torch.stack(parts).sum(0)

    def _hook(self, slices: list[tuple[str, int | None, int | None]]):
        def add_lora(module: nn.Linear, args: tuple, output: Tensor) -> Tensor | None:
            if self.mix is None:
                return None
            x = self.dropout(args[0])
            for key, start, stop in slices:
                delta = self.scale * self._delta(key, x)
                output = output + (delta if start is None else F.pad(delta, (start, module.out_features - stop)))
            return output

        return add_lora

    def pairs(self, k: int) -> list[LoraPair]:
        """Expert k's adapters, site by site."""
        return list(self.experts[k].values())


def orthogonality_loss(lora: LoraExperts, k: int, previous: Sequence[int]) -> Tensor:
    """Mean over sites of the mean over experts i in `previous` of ||n(A_i) n(A_k)^T||_F + ||n(B_i)^T n(B_k)||_F
    (rows of A and columns of B unit-normalised; earlier experts detached): keeps expert k's subspaces apart."""
    device = lora.experts[k][next(iter(lora.experts[k].keys()))].A.device
    if not previous:
        return torch.zeros((), device=device)
    total = []
    for key, pair in lora.experts[k].items():
        a_k, b_k = F.normalize(pair.A, dim=1), F.normalize(pair.B, dim=0)
        terms = []
        for i in previous:
            other = lora.experts[i][key]
            a_i, b_i = F.normalize(other.A.detach(), dim=1), F.normalize(other.B.detach(), dim=0)
            terms.append(torch.linalg.matrix_norm(a_i @ a_k.T) + torch.linalg.matrix_norm(b_i.T @ b_k))
        total.append(torch.stack(terms).mean())
    return torch.stack(total).mean()


def token_block(feature: str) -> int | None:
    """ "l20.tokens" (or "alias/l20.tokens") -> 20; None for other names."""
    match = _TOKENS.match(feature)
    return int(match.group(1)) if match else None


class TailHead(nn.Module):
    """Base of the heads that run a frozen tail on cached tokens: holds the tail, keeps it frozen and in eval mode,
    and leaves its weights out of the state dict (they come from the backbone's weights file)."""

    needs_frozen = True
    batch_rows = 64  # rows per forward when scoring: every row runs the tail's transformer blocks

    def attach(self, frozen: nn.Module, *, inputs: Sequence[str], output: str) -> None:
        missing = [a for a in ("blocks", "start", "outputs", "lora_targets") if not hasattr(frozen, a)]
        if missing:
            raise TypeError(f"head '{self.head_name}' needs a frozen tail (extractors.build_tail); it lacks {missing}")
        if len(inputs) != 1 or token_block(inputs[0]) is None:
            raise ValueError(
                f"head '{self.head_name}' reads one token feature 'l<i>.tokens'; got inputs={list(inputs)}"
            )
        if token_block(inputs[0]) + 1 != frozen.start:
            raise ValueError(
                f"head '{self.head_name}': the tail starts at block {frozen.start} but the input {inputs[0]!r} "
                f"holds the tokens entering block {token_block(inputs[0]) + 1}; build the tail for that feature"
            )
        if output not in frozen.outputs:
            raise ValueError(
                f"head '{self.head_name}': output {output!r} is not one of the tail's {list(frozen.outputs)}"
            )
        self.tail = frozen.requires_grad_(False).eval()

    def run_tail(self, tokens: Tensor, mix: int | Tensor | None) -> dict[str, Tensor]:
        """The tail's outputs with the given experts on (see LoraExperts.use)."""
        with self.lora.use(mix):
            return self.tail(tokens)

    def train(self, mode: bool = True) -> TailHead:
        super().train(mode)
        self.tail.eval().requires_grad_(False)  # frozen: no dropout, the AIM probe's BatchNorm keeps its statistics
        return self

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        state = super().state_dict(*args, **kwargs)
        for key in [k for k in state if k.startswith("tail.")]:
            del state[key]
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if not k.startswith("tail.")]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"head '{self.head_name}': missing {missing}, unexpected {result.unexpected_keys}")
        return result
