"""The `prototype` head (GAPL): a normalised projection attending over frozen real/fake PCA prototypes."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aigi.heads._blocks import check_inputs
from aigi.heads._registry import register_head
from aigi.heads.train import Stage


@dataclass(frozen=True)
class PrototypeCfg:
    """Config of `prototype`.

    Attributes:
        inputs: the one feature it reads (CLIP ViT-L/14 `pooler`, 1024-d, in GAPL).
        in_dim: that feature's width.
        embed_dim: projection width d (128).
        per_class: PCA axes kept per class (32 -> 64 prototypes).
        num_heads: attention heads (4).
        train_stage1: run stage 1 (projection + linear on the normalised embedding); off for GAPL's released
            projection.
        fit_prototypes: compute the prototypes by PCA at the start of stage 2; off when they are loaded.
        stage1_epochs: epochs of stage 1 (None = FitConfig.epochs).
    """

    inputs: tuple[str, ...]
    in_dim: int
    embed_dim: int = 128
    per_class: int = 32
    num_heads: int = 4
    train_stage1: bool = True
    fit_prototypes: bool = True
    stage1_epochs: int | None = None

    def __post_init__(self) -> None:
        check_inputs(self.inputs, head="prototype", exactly_one=True)
        if self.embed_dim % self.num_heads or self.per_class < 1:
            raise ValueError(
                f"prototype: embed_dim {self.embed_dim} must divide by num_heads {self.num_heads}, "
                f"per_class >= 1 (got {self.per_class})"
            )


class ClassMoments:
    """Per-class row count, mean and scatter matrix of embeddings, merged batch by batch (Chan et al., float64):
    one pass over the rows in memory bounded by one batch, whatever the row count."""

    def __init__(self) -> None:
        self.n = [0, 0]
        self.mean: list = [0.0, 0.0]
        self.scatter: list = [0.0, 0.0]

    def add(self, emb: np.ndarray, y: np.ndarray) -> None:
        for c in (0, 1):
            rows = np.asarray(emb[y == c], dtype=np.float64)
            if not len(rows):
                continue
            mb = rows.mean(0)
            centred = rows - mb
            total = self.n[c] + len(rows)
            delta = mb - self.mean[c]
            self.scatter[c] = (
                self.scatter[c] + centred.T @ centred + np.outer(delta, delta) * (self.n[c] * len(rows) / total)
            )
            self.mean[c] = self.mean[c] + delta * (len(rows) / total)
            self.n[c] = total

    def prototypes(self, per_class: int) -> np.ndarray:
        """GAPL's prototypes: the top `per_class` principal axes of the real rows, then of the fake rows, stacked
        [2 * per_class, d] with unit rows. Principal axes are the covariance's leading eigenvectors (what
        sklearn's PCA finds by SVD), each signed so that its largest-magnitude entry is positive."""
        out = []
        for c in (0, 1):
            dim = np.shape(self.scatter[c])[0] if self.n[c] else 0
            if self.n[c] < per_class or dim < per_class:
                raise ValueError(
                    f"prototype: {per_class} PCA axes per class need >= {per_class} rows of class {c} "
                    f"and embed_dim >= {per_class}; got {self.n[c]} rows, embed_dim {dim}"
                )
            values, vectors = np.linalg.eigh(self.scatter[c] / max(self.n[c] - 1, 1))
            axes = vectors[:, np.argsort(values)[::-1][:per_class]].T
            signs = np.sign(axes[np.arange(per_class), np.abs(axes).argmax(1)])
            out.append(axes * signs[:, None])
        protos = np.concatenate(out).astype(np.float32)
        return protos / np.linalg.norm(protos, axis=1, keepdims=True)


def pca_prototypes(emb: np.ndarray, y: np.ndarray, per_class: int) -> np.ndarray:
    """GAPL's prototypes: top `per_class` PCA axes of the real rows' embeddings, then of the fake rows', stacked
    [2 * per_class, d] and L2-normalised row-wise, computed as GAPL's script does (sklearn `PCA(n_components)` with
    its default solver on float32 rows, float32 components, torch's normalize)."""
    from sklearn.decomposition import PCA

    out = []
    for c in (0, 1):
        rows = emb[y == c]
        if len(rows) < per_class or emb.shape[1] < per_class:
            raise ValueError(
                f"prototype: {per_class} PCA axes per class need >= {per_class} rows of class {c} "
                f"and embed_dim >= {per_class}; got {len(rows)} rows, embed_dim {emb.shape[1]}"
            )
        # GAPL's solver ("auto": covariance eigendecomposition for >= 10 rows per dimension); the seed only
        # matters when "auto" picks the randomized solver, which GAPL leaves unseeded
        pca = PCA(n_components=per_class, random_state=0).fit(rows.astype(np.float32, copy=False))
        out.append(torch.tensor(pca.components_, dtype=torch.float32))
    # joined through numpy as GAPL does: that keeps sklearn's column-major layout, which sets the rounding of the
    # row norms (a contiguous copy normalises up to 6e-8 differently)
    return F.normalize(torch.tensor(np.concatenate(out, axis=0)), dim=1).numpy()


def _projected(attn: nn.MultiheadAttention, protos: Tensor, e: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Queries [N, d] of the rows, keys and values [h, P, d/h] of the prototypes, as torch's packed in-projection
    computes them (query weights, then the key/value weights in one product)."""
    d, h, p = e.shape[1], attn.num_heads, protos.shape[0]
    w_q, w_kv = attn.in_proj_weight.split([d, 2 * d])
    b_q, b_kv = attn.in_proj_bias.split([d, 2 * d])
    k, v = F.linear(protos, w_kv, b_kv).unflatten(-1, (2, d)).unbind(-2)
    return F.linear(e, w_q, b_q), k.reshape(p, h, d // h).transpose(0, 1), v.reshape(p, h, d // h).transpose(0, 1)


def _attend_rows(attn: nn.MultiheadAttention, protos: Tensor, e: Tensor) -> Tensor:
    """`attn(e.unsqueeze(1), kv, kv)` with kv the prototypes expanded to each row (GAPL's call, need_weights
    path), the same operations on the same shapes (so the same bits), the prototypes' keys and values computed
    once and expanded instead of projected once per row."""
    n, d, h = e.shape[0], e.shape[1], attn.num_heads
    q, k, v = _projected(attn, protos, e)
    p = k.shape[1]
    k = k.unsqueeze(0).expand(n, h, p, d // h).reshape(n * h, p, d // h)
    v = v.unsqueeze(0).expand(n, h, p, d // h).reshape(n * h, p, d // h)
    weights = torch.softmax(torch.bmm(q.view(n * h, 1, d // h) * math.sqrt(1.0 / (d // h)), k.transpose(1, 2)), -1)
    return F.linear(torch.bmm(weights, v).reshape(n, d), attn.out_proj.weight, attn.out_proj.bias)


def _attend_batched(attn: nn.MultiheadAttention, protos: Tensor, e: Tensor) -> Tensor:
    """The same attention as `_attend_rows` with all rows' queries of a head in one product against that head's
    keys (no per-row copy of the keys and values): the fit's path, equal up to float rounding."""
    n, d, h = e.shape[0], e.shape[1], attn.num_heads
    q, k, v = _projected(attn, protos, e)
    scores = torch.bmm(q.view(n, h, d // h).transpose(0, 1) * math.sqrt(1.0 / (d // h)), k.transpose(1, 2))
    out = torch.bmm(torch.softmax(scores, dim=-1), v).transpose(0, 1).reshape(n, d)
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias)


EXACT_PCA_BYTES = 256 << 20  # embeddings kept for GAPL's exact PCA; beyond, per-class moments (streaming)


@register_head("prototype")
class PrototypeHead(nn.Module):
    """GAPL on cached features.

    Math: `e = normalize(P x)` with `P = Linear(D, d, bias=False)`; stage 1 trains P and `Linear(d, 1, bias=False)`
    on e (GAPL's stage 1). The prototypes are the top `per_class` PCA axes of the training rows' e for real and for
    fake rows (unit rows, a frozen buffer). Stage 2: `a = MultiheadAttention(d, heads)(query=e, key=value=
    prototypes)` (with its in/out projections, no residual, no normalisation after it, as GAPL), then
    `logit = Linear(d, 1, bias=False)(a)`; P keeps training from stage 1, the stage-1 linear stays frozen.

    Exact: everything above. Adapted: GAPL's stage 2 also trains LoRA (r 16) on CLIP's q/k/v, impossible on
    pooled features; the stage-2 classifier and attention start fresh as in GAPL.
    """

    cfg_cls = PrototypeCfg

    def __init__(self, cfg: PrototypeCfg) -> None:
        super().__init__()
        self.cfg = cfg
        self.proj = nn.Linear(cfg.in_dim, cfg.embed_dim, bias=False)
        self.stage1_fc = nn.Linear(cfg.embed_dim, 1, bias=False)
        self.register_buffer("prototypes", torch.zeros(2 * cfg.per_class, cfg.embed_dim))
        self.attn = nn.MultiheadAttention(cfg.embed_dim, cfg.num_heads, batch_first=True)
        self.fc = nn.Linear(cfg.embed_dim, 1, bias=False)

    def embed(self, x: Mapping[str, Tensor]) -> Tensor:
        """The normalised embedding e [N, d]."""
        return F.normalize(self.proj(x[self.cfg.inputs[0]]), dim=-1)

    def attend(self, e: Tensor) -> Tensor:
        """Cross-attention of each embedding over the prototypes, [N, d]: GAPL's call of torch's
        MultiheadAttention (one query per row, the prototypes expanded to every row as keys and values, torch's
        defaults), bit for bit, with the prototypes projected once instead of once per row. While training, the
        same attention with the rows' queries batched per head (`_attend_batched`: float rounding apart)."""
        if self.training and torch.is_grad_enabled():
            return _attend_batched(self.attn, self.prototypes, e)
        return _attend_rows(self.attn, self.prototypes, e)

    def forward(self, x: Mapping[str, Tensor]) -> Tensor:
        return self.fc(self.attend(self.embed(x))).squeeze(-1)

    def _stage1(self, xb: Mapping[str, Tensor], aux: Mapping[str, Tensor]) -> Tensor:
        return self.stage1_fc(self.embed(xb)).squeeze(-1)

    def _start_stage2(self, batches: Callable[[], Iterator[tuple[dict[str, Tensor], Tensor]]]) -> None:
        """PCA prototypes of the stage-1 embeddings in one pass over the training rows: exactly as GAPL
        (`pca_prototypes`) while the embeddings fit EXACT_PCA_BYTES, else from per-class moments
        (`ClassMoments`: the same axes up to float rounding, memory bounded by one batch; merged from the kept
        batches, in order, once they pass EXACT_PCA_BYTES)."""
        if not self.cfg.fit_prototypes:
            return
        moments, kept, size = ClassMoments(), [], 0
        for xb, yb in batches():
            emb, y = self.embed(xb).cpu().numpy(), yb.cpu().numpy()
            if kept is None:
                moments.add(emb, y)
                continue
            kept.append((emb.copy(), y))
            size += emb.nbytes
            if size > EXACT_PCA_BYTES:
                for e, t in kept:
                    moments.add(e, t)
                kept = None
        if kept is not None:
            emb, y = np.concatenate([e for e, _ in kept]), np.concatenate([t for _, t in kept])
            protos = pca_prototypes(emb, y, self.cfg.per_class)
        else:
            protos = moments.prototypes(self.cfg.per_class)
        self.prototypes.copy_(torch.from_numpy(protos))

    def stages(self) -> list[Stage]:
        stage2 = Stage("stage2", trainable=("proj", "attn", "fc"), setup=self._start_stage2)
        if not self.cfg.train_stage1:
            return [stage2]
        stage1 = Stage("stage1", trainable=("proj", "stage1_fc"), forward=self._stage1, epochs=self.cfg.stage1_epochs)
        return [stage1, stage2]
