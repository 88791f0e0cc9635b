"""Fit settings and stages of every head, the rows as tensor batches (`Feed`), and scoring: predict / logits / explain.

The fit loop itself is `heads.bank` (one head is a bank of one).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from aigi.common.rows import ArrayRows, Rows, is_rows
from aigi.heads._fastlinear import Scratch

Groups = Mapping[str, np.ndarray] | None
StageForward = Callable[[dict[str, Tensor], dict[str, Tensor]], "Tensor | tuple[Tensor, Tensor]"]


@dataclass(frozen=True)
class FitConfig:
    """Training settings shared by every head and stage.

    Attributes:
        optimizer: "adam" or "adamw".
        lr: base learning rate.
        weight_decay: decoupled (adamw) or L2 (adam) weight decay.
        epochs: epochs per stage (a stage may override it).
        batch_size: rows per step.
        schedule: "constant" or "cosine" (per step, from lr down to lr * min_lr_ratio).
        min_lr_ratio: floor of the cosine schedule as a fraction of lr.
        balance: weight rows so that real and fake weigh the same in the loss.
        early_stop: patience in epochs on validation AP (0 = off); the best epoch's weights are restored.
        seed: seeds the permutation, dropout and any re-initialisation inside stages.
        device: "auto" (CUDA when available), "cpu" or "cuda".
        label_smoothing: targets become y (1 - e) + e / 2 (heads may set their own per stage).
        fused: fused optimizer step (None = when the device supports it).
        eval_batch_size: rows per forward when scoring validation data.
        threads: CPU threads while fitting (None = 1 when a batch is small: thread hand-offs then cost more than
            they save, and on a busy machine far more; else torch's setting).
    """

    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 5
    batch_size: int = 256
    schedule: str = "constant"
    min_lr_ratio: float = 0.0
    balance: bool = False
    early_stop: int = 0
    seed: int = 0
    device: str = "auto"
    label_smoothing: float = 0.0
    fused: bool | None = None
    eval_batch_size: int = 65536
    threads: int | None = None

    def __post_init__(self) -> None:
        checks = {  # field -> (valid?, what is valid)
            "optimizer": (self.optimizer in ("adam", "adamw"), "adam or adamw"),
            "schedule": (self.schedule in ("constant", "cosine"), "constant or cosine"),
            "device": (
                self.device in ("auto", "cpu", "cuda") or str(self.device).startswith("cuda:"),
                "auto, cpu, cuda or cuda:N",
            ),
            "lr": (_number(self.lr) and math.isfinite(self.lr) and self.lr > 0, "a finite number > 0"),
            "weight_decay": (
                _number(self.weight_decay) and math.isfinite(self.weight_decay) and self.weight_decay >= 0,
                "a finite number >= 0",
            ),
            "epochs": (_number(self.epochs) and self.epochs >= 0, "an integer >= 0"),
            "batch_size": (_number(self.batch_size) and self.batch_size >= 1, "an integer >= 1"),
            "early_stop": (_number(self.early_stop) and self.early_stop >= 0, "an integer >= 0"),
            "label_smoothing": (_number(self.label_smoothing) and 0 <= self.label_smoothing < 1, "in [0, 1)"),
        }
        bad = [f"fit.{k}={getattr(self, k)!r} (valid: {valid})" for k, (ok, valid) in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid value(s) of the config's `fit` section (FitConfig): {'; '.join(bad)}")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class Stage:
    """One training stage of a head, run by `fit`.

    Attributes:
        name: shown in the history.
        trainable: module-name prefixes of the parameters this stage trains ("" = all); the rest stay frozen.
        forward: `(x, aux) -> logits` or `(logits, extra_loss)`; default the head's forward.
        rows: `(groups, y) -> bool mask` of the training rows this stage uses (None = all).
        aux: `(groups, y) -> {name: per-row numeric array}` handed to `forward` batch by batch.
        setup: `(batches)` called before training (re-inits, PCA, ...); `batches()` iterates `(x, y)` tensor pairs
            over this stage's training rows in order, one bounded batch at a time (one pass each call).
        epochs / lr / label_smoothing: overrides of the FitConfig values for this stage.
        optional: skip the stage (noted in the history) instead of failing when its rows lack one class.
        share: a tag marking a stage whose result depends only on its trainable parameters' initial values (its
            forward reads no other parameter), its rows, the fit settings and the RNG state; `fit` then reuses
            a finished identical stage from `stage_store` (e.g. the same frozen experts of gating/concat/mean).
    """

    name: str
    trainable: tuple[str, ...] = ("",)
    forward: StageForward | None = None
    rows: Callable[[Groups, np.ndarray], np.ndarray] | None = None
    aux: Callable[[Groups, np.ndarray], dict[str, np.ndarray]] | None = None
    setup: Callable[[Callable[[], Iterator[tuple[dict[str, Tensor], Tensor]]]], None] | None = None
    epochs: int | None = None
    lr: float | None = None
    label_smoothing: float | None = None
    optional: bool = False
    share: str | None = None


def head_stages(head: nn.Module) -> list[Stage]:
    """The head's declared stages, or one stage training everything."""
    return list(head.stages()) if hasattr(head, "stages") else [Stage("main")]


def stage_parameters(head: nn.Module, stage: Stage) -> dict[str, nn.Parameter]:
    """Name -> parameter for the parameters `stage` trains."""
    out = {
        name: p
        for name, p in head.named_parameters()
        if any(pre == "" or name == pre or name.startswith(pre + ".") for pre in stage.trainable)
    }
    if not out:
        raise ValueError(f"stage '{stage.name}' of head '{head.head_name}' trains no parameter ({stage.trainable})")
    return out


def lr_at(step: int, total: int, *, lr: float, schedule: str, min_lr_ratio: float = 0.0) -> float:
    """Learning rate at `step` (0-based) of `total` steps: constant, or cosine from lr to lr * min_lr_ratio."""
    if schedule == "constant" or total <= 1:
        return lr
    progress = min(step / (total - 1), 1.0)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def class_weights(y: np.ndarray) -> np.ndarray:
    """Per-row weights making both classes weigh half of the loss (mean weight 1)."""
    y = np.asarray(y)
    out = np.empty(len(y), dtype=np.float32)
    for c in (0, 1):
        n_c = int((y == c).sum())
        out[y == c] = len(y) / (2 * n_c) if n_c else 0.0
    return out


def as_inputs(head: nn.Module, X: Mapping[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
    """Pick the head's input features from `X` (a dict, or one matrix for a one-input head)."""
    inputs = head.cfg.inputs
    if not isinstance(X, Mapping):
        if len(inputs) != 1:
            raise ValueError(f"head '{head.head_name}' reads {list(inputs)}: pass a dict of feature arrays")
        X = {inputs[0]: X}
    missing = [k for k in inputs if k not in X]
    if missing:
        raise ValueError(f"head '{head.head_name}' needs feature(s) {missing}; got {sorted(X)}")
    n = {k: len(X[k]) for k in inputs}
    if len(set(n.values())) != 1:
        raise ValueError(f"input features have different row counts: {n}")
    return {k: X[k] for k in inputs}


def _labels(y: Any, n: int) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0 (real) or 1 (fake); got values {np.unique(y)[:10].tolist()}")
    return y.astype(np.int64)


def all_finite(arr: np.ndarray) -> bool:
    """Whether every value of a float array is finite (float16: its exponent bits, far faster than isfinite)."""
    if arr.dtype == np.float16:
        return bool(((np.ascontiguousarray(arr).view(np.uint16) & 0x7C00) != 0x7C00).all())
    return bool(np.isfinite(arr).all())


def check_finite(X: Mapping[str, np.ndarray], *, what: str = "X") -> None:
    """A ValueError naming the first feature of `X` holding NaN or inf (checked in blocks: no full-size temporary)."""
    for name, arr in X.items():
        arr = np.asarray(arr)
        if not np.issubdtype(arr.dtype, np.floating):
            continue
        step = max(1, (16 << 20) // max(1, arr[:1].nbytes))
        for lo in range(0, len(arr), step):
            if not all_finite(arr[lo : lo + step]):
                rows = f"{lo}..{min(len(arr), lo + step) - 1}"
                raise ValueError(
                    f"{what}: feature {name!r} holds NaN or inf values (first in rows {rows}); "
                    "drop or repair those rows before training"
                )


class _Widen:
    """Copies each feature's batches into its own reused float32 buffer on the CPU (`_fastlinear.Scratch`); on a GPU
    a batch is moved and widened in one step."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.buffers, self.reuse = device, {}, device.type == "cpu"

    def __call__(self, name: str, x: Tensor) -> Tensor:
        if not self.reuse:
            return x.to(self.device, dtype=torch.float32)
        return self.buffers.setdefault(name, Scratch())(x)


def memory_tensors(X: Mapping[str, np.ndarray], device: torch.device) -> dict[str, Tensor]:
    """Features as tensors on the device: float16 kept as float16 (half the memory), anything else float32 (arrays
    already float32 and contiguous are shared, not copied)."""
    out = {}
    for k, v in X.items():
        arr = np.asarray(v)
        dtype = np.float16 if arr.dtype == np.float16 else np.float32
        out[k] = torch.as_tensor(np.ascontiguousarray(arr, dtype=dtype)).to(device)
    return out


Batch = tuple[dict[str, Tensor], Tensor]


class Feed:
    """A `common.rows.Rows` as tensor batches on the fit's device, for every head that reads it.

    Rows held in memory (`rows.arrays()`) become device tensors once (float16 kept, widened per batch into reused
    buffers); streamed rows are widened batch by batch as they arrive. A pass may cover a subset of the rows
    (`sub`: sorted positions); batches come with their local index (position within `sub`). Rows in memory are
    checked for NaN / inf before the fit; streamed rows only when a loss turns out NaN / inf (`nonfinite`): a
    check of every batch would cost a third of a linear head's epoch.
    """

    def __init__(self, rows: Rows, names: Sequence[str], device: torch.device) -> None:
        self.rows, self.names, self.device = rows, list(names), device
        arrays = rows.arrays()
        self.x = None if arrays is None else memory_tensors({k: arrays[k] for k in self.names}, device)
        self.n = len(rows)
        self._widen = _Widen(device)

    @property
    def streamed(self) -> bool:
        """Whether the rows are read from disk pass by pass."""
        return self.x is None

    def epoch(
        self, batch_size: int, *, gen: torch.Generator, sub: np.ndarray | None = None, raw: bool = False
    ) -> Iterator[Batch]:
        """One pass over the rows (or `sub`) in a seeded random order drawn from `gen`: in memory a permutation of
        the rows, streamed the source's seeded chunk order and shuffle buffer. `raw`: float16 features come as
        stored (the consumer widens them)."""
        if self.x is None:
            seed = int(torch.randint(0, 2**62, (1,), generator=gen))
            yield from self._stream(batch_size, sub=sub, shuffle=True, seed=seed, raw=raw)
            return
        n = self.n if sub is None else len(sub)
        index_of = None if sub is None else torch.from_numpy(np.asarray(sub, dtype=np.int64)).to(self.device)
        for local in torch.randperm(n, generator=gen).to(self.device).split(batch_size):
            index = local if index_of is None else index_of.index_select(0, local)
            yield self._take(lambda v, i=index: v.index_select(0, i), raw), local

    def ordered(self, batch_size: int, *, sub: np.ndarray | None = None) -> Iterator[Batch]:
        """One pass over the rows (or `sub`) in order, as float32."""
        if self.x is None:
            yield from self._stream(batch_size, sub=sub, shuffle=False, seed=0, raw=False)
            return
        n = self.n if sub is None else len(sub)
        index_of = None if sub is None else torch.from_numpy(np.asarray(sub, dtype=np.int64)).to(self.device)
        for lo in range(0, n, batch_size):
            local = torch.arange(lo, min(lo + batch_size, n), device=self.device)
            if index_of is None:
                yield self._take(lambda v, lo=lo: v[lo : lo + batch_size], False), local
            else:
                yield self._take(lambda v, i=index_of[lo : lo + batch_size]: v.index_select(0, i), False), local

    def _take(self, pick: Callable[[Tensor], Tensor], raw: bool) -> dict[str, Tensor]:
        xb = {}
        for k, v in self.x.items():
            part = pick(v)
            xb[k] = part if part.dtype == torch.float32 or raw else self._widen(k, part)
        return xb

    def _stream(
        self, batch_size: int, *, sub: np.ndarray | None, shuffle: bool, seed: int, raw: bool
    ) -> Iterator[Batch]:
        keep = raw and self.device.type == "cpu"
        for feats, pos in self.rows.batches(batch_size, rows=sub, shuffle=shuffle, seed=seed):
            local = pos if sub is None else np.searchsorted(sub, pos)
            xb = {}
            for k in self.names:
                x = torch.from_numpy(np.ascontiguousarray(feats[k]))
                xb[k] = x if keep and x.dtype in (torch.float16, torch.float32) else self._widen(k, x)
            yield xb, torch.from_numpy(np.asarray(local, dtype=np.int64)).to(self.device)

    def nonfinite(self) -> str | None:
        """The first feature holding NaN or inf values, or None (one pass over the rows, in blocks)."""
        arrays = self.rows.arrays()
        if arrays is not None:
            try:
                check_finite({k: arrays[k] for k in self.names})
            except ValueError:
                return next(k for k in self.names if not all_finite(np.asarray(arrays[k])))
            return None
        for feats, _ in self.rows.batches(65536):
            bad = next((k for k in self.names if not all_finite(np.asarray(feats[k]))), None)
            if bad is not None:
                return bad
        return None


def rows_of(heads: Sequence[nn.Module], X: Any, *, what: str = "X", check: bool = True) -> Rows:
    """The rows the heads read: `X` itself when it is a `common.rows.Rows` (its dims checked; its values are checked
    for NaN / inf only when a loss turns out non-finite, `Feed.nonfinite`), else the arrays in `X` (a dict, or one
    matrix for heads of one input) as `ArrayRows`, checked for NaN / inf here when `check`."""
    if is_rows(X):
        for head in heads:
            missing = [k for k in head.cfg.inputs if k not in X.dims]
            if missing:
                raise ValueError(f"head '{head.head_name}' needs feature(s) {missing}; the rows hold {sorted(X.dims)}")
        return X
    arrays = {}
    for head in heads:
        arrays.update(as_inputs(head, X))
    rows = ArrayRows(arrays)
    if check:
        check_finite(rows.features, what=what)
    return rows


SMALL_BATCH = 1 << 20  # floats per batch below which one CPU thread is faster


def fit_threads(cfg: FitConfig, device: torch.device, head: nn.Module, streamed: bool) -> int:
    """CPU threads for the fit: one for small batches, one core left to the reader thread when streaming."""
    if cfg.threads is not None:
        return cfg.threads
    if getattr(head, "needs_frozen", False):  # every row runs the tail's transformer blocks: never a small batch
        return max(1, torch.get_num_threads() - 1) if streamed else torch.get_num_threads()
    widths = getattr(head.cfg, "in_dims", None) or (head.cfg.in_dim,) * len(head.cfg.inputs)
    if device.type == "cpu" and cfg.batch_size * sum(widths) < SMALL_BATCH:
        return 1
    return max(1, torch.get_num_threads() - 1) if streamed else torch.get_num_threads()


SCORE_BYTES = 2 << 20  # input bytes per scoring forward: wider slices spill CPU caches (3,072-d gating: 8 MB 2x slower)


def _forward_rows(xb: Mapping[str, Tensor]) -> int:
    """Rows per scoring forward for a batch `xb`: as many as fit SCORE_BYTES of float32 inputs (at least 64)."""
    per_row = sum(int(np.prod(v.shape[1:])) for v in xb.values()) * 4
    return max(64, SCORE_BYTES // max(per_row, 1))


def scores(
    feed: Feed, batch_size: int, fn: Callable[[dict[str, Tensor]], Tensor], *, sub: np.ndarray | None = None
) -> Tensor:
    """`fn` (one value per row) over every row (or `sub`), in row order, as a float64 CPU tensor. Rows are read
    `batch_size` at a time and scored in slices of `_forward_rows` rows (a row's score does not depend on its slice
    but for float rounding; for wide heads several times faster than one forward over tens of thousands of rows)."""
    out = torch.empty(feed.n if sub is None else len(sub), dtype=torch.float64)
    for xb, index in feed.ordered(batch_size, sub=sub):
        step = _forward_rows(xb)
        for lo in range(0, len(index), step):
            part = {k: v[lo : lo + step] for k, v in xb.items()}
            out[index[lo : lo + step].cpu()] = fn(part).double().cpu()
    return out


def rows_per_call(head: nn.Module, batch_size: int) -> int:
    """Rows per scoring forward: at most the head's `batch_rows` (tail heads run transformer blocks per row)."""
    return min(batch_size, getattr(head, "batch_rows", batch_size))


def prep_of(head: nn.Module) -> Callable[[dict[str, Tensor]], dict[str, Tensor]]:
    """The head's input standardisation (`input_norm`), or the identity."""
    norm = getattr(head, "input_norm", None)
    return (lambda xb: xb) if norm is None else norm.apply_tensors


def _prepared(head: nn.Module, X: Any) -> tuple[Feed, Callable[[dict[str, Tensor]], dict[str, Tensor]]]:
    rows = rows_of([head], X, check=False)
    head.eval()
    return Feed(rows, list(head.cfg.inputs), next(iter(head.parameters())).device), prep_of(head)


def logits(head: nn.Module, X: Mapping[str, np.ndarray] | np.ndarray | Rows, *, batch_size: int = 65536) -> np.ndarray:
    """The raw logit of every row, float64 [N] (what calibration rescales; `predict` is its sigmoid)."""
    feed, prep = _prepared(head, X)
    with torch.inference_mode():
        return scores(feed, rows_per_call(head, batch_size), lambda xb: head(prep(xb)).double()).numpy()


def predict(head: nn.Module, X: Mapping[str, np.ndarray] | np.ndarray | Rows, *, batch_size: int = 65536) -> np.ndarray:
    """P(fake) = sigmoid(logit) for every row (arrays in memory or a `Rows`, in its order), float64 [N]."""
    feed, prep = _prepared(head, X)
    with torch.inference_mode():
        fn = lambda xb: torch.sigmoid(head(prep(xb)).double())  # noqa: E731
        return scores(feed, rows_per_call(head, batch_size), fn).numpy()


def explain(head: nn.Module, X: Mapping[str, np.ndarray] | np.ndarray | Rows, *, batch_size: int = 65536) -> dict:
    """A mixing head's per-row gates and per-expert scores as numpy arrays, plus "expert_names" and "score"."""
    if not hasattr(head, "explain"):
        raise ValueError(f"head '{head.head_name}' does not mix experts; explain works for gating/router-like heads")
    feed, prep = _prepared(head, X)
    if feed.n == 0:
        raise ValueError("explain needs at least one row")
    out: dict[str, Any] = {}
    with torch.inference_mode():
        for xb, index in feed.ordered(rows_per_call(head, batch_size)):
            part = head.explain(prep(xb))
            for key, value in part.items():
                if not isinstance(value, Tensor):
                    out[key] = value
                    continue
                if key not in out:
                    out[key] = torch.empty((feed.n, *value.shape[1:]), dtype=torch.float64)
                out[key][index.cpu()] = value.double().cpu()
    return {k: v.numpy() if isinstance(v, Tensor) else v for k, v in out.items()}
