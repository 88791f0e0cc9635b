"""The one fit loop for every head (minibatches from tensors in memory or a batch source), plus predict/explain."""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aigi.common.device import resolve_device
from aigi.common.metrics import average_precision
from aigi.heads._rows import MemoryRows, StreamRows, is_source, memory_tensors

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
            "lr": (_number(self.lr) and self.lr > 0, "a number > 0"),
            "epochs": (_number(self.epochs) and self.epochs >= 0, "an integer >= 0"),
            "batch_size": (_number(self.batch_size) and self.batch_size >= 1, "an integer >= 1"),
            "early_stop": (_number(self.early_stop) and self.early_stop >= 0, "an integer >= 0"),
            "label_smoothing": (_number(self.label_smoothing) and 0 <= self.label_smoothing < 1, "in [0, 1)"),
        }
        bad = [f"{k}={getattr(self, k)!r} (valid: {valid})" for k, (ok, valid) in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid FitConfig (the config's `fit` section) value(s): {'; '.join(bad)}")


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


def rows_of(head: nn.Module, X: Any, y: Any, device: torch.device) -> MemoryRows | StreamRows:
    """The head's input rows from arrays in memory or a batch source, with `y` checked (None = zeros)."""
    inputs = list(head.cfg.inputs)
    if is_source(X):
        missing = [k for k in inputs if k not in X.dims]
        if missing:
            raise ValueError(f"head '{head.head_name}' needs feature(s) {missing}; the source has {sorted(X.dims)}")
        return StreamRows(X, inputs, _labels(np.zeros(len(X)) if y is None else y, len(X)), device)
    X = as_inputs(head, X)
    n = len(next(iter(X.values())))
    return MemoryRows(memory_tensors(X, device), _labels(np.zeros(n) if y is None else y, n))


def _standardize(head: nn.Module, rows: MemoryRows | StreamRows, others: list, *, fit_stats: bool, size: int) -> None:
    """Fit the head's input standardisation on `rows` in one pass (when asked), then apply it to every row set."""
    norm = getattr(head, "input_norm", None)
    if norm is None:
        return
    if fit_stats:
        norm.to(rows.device)
        norm.fit_batches(xb for xb, _ in rows.batches(size))
    for r in [rows, *others]:
        if r is not None:
            r.prep = norm.apply_tensors


def fit(
    head: nn.Module,
    X: Mapping[str, np.ndarray] | np.ndarray | Any,
    y: np.ndarray,
    *,
    cfg: FitConfig | None = None,
    X_val: Mapping[str, np.ndarray] | np.ndarray | Any | None = None,
    y_val: np.ndarray | None = None,
    groups: Groups = None,
    groups_val: Groups = None,
    on_stage_end: Callable[[str], None] | None = None,
    stage_store: MutableMapping[str, dict] | None = None,
    data_key: str = "",
) -> dict[str, Any]:
    """Train `head` on features in memory or streamed from a batch source, running each of its stages in turn.

    Args:
        head: a head from `heads.build`.
        X: feature name -> [N, D] array (or one array for one-input heads; float16 stays float16 in memory and is
            widened per batch), or a batch source (see `heads._rows`), e.g. a `cache.FeatureStream`.
        y: labels [N], 0 real / 1 fake.
        cfg: training settings (default `FitConfig()`).
        X_val: validation features (arrays or a batch source) for AP per epoch and early stopping.
        y_val: validation labels.
        groups: per-row string columns multi-stage heads select rows by ("source", "domain").
        groups_val: the same for the validation rows.
        on_stage_end: called with each stage's name when it finishes.
        stage_store: finished shareable stages (see `Stage.share`) by key; a stage found there is restored (its
            parameters, RNG states and history: the same numbers as training it) instead of trained again.
        data_key: names the training and validation rows for `stage_store` keys (the caller's promise that two
            fits with the same key see the same rows).

    Returns:
        The history: {"stages": [{"name", "trainable", "rows", "epochs": [...], "best_epoch", "best_val_ap"}],
        "device", "seconds", "val_ap", "streamed"}.
    """
    cfg = cfg or FitConfig()
    device = resolve_device(cfg.device)
    head.to(device)
    rows = rows_of(head, X, y, device)
    val = None
    if X_val is not None and y_val is not None:
        val = rows_of(head, X_val, y_val, device)
    _standardize(head, rows, [val], fit_stats=True, size=cfg.eval_batch_size)
    data = _Data(rows, groups)
    val_data = None if val is None else _Data(val, groups_val)
    start, history = time.perf_counter(), {"stages": [], "device": str(device), "streamed": is_source(X)}
    devices = [device.index or 0] if device.type == "cuda" else []
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(_fit_threads(cfg, device, head, is_source(X)))
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(cfg.seed)
            gen = torch.Generator().manual_seed(cfg.seed)
            for stage in head_stages(head):
                run = lambda st=stage: _run_stage(head, st, data=data, val=val_data, cfg=cfg, gen=gen)  # noqa: E731
                if stage.share and stage_store is not None:
                    history["stages"].append(_shared(head, stage, run, stage_store, data, cfg, gen, data_key))
                else:
                    history["stages"].append(run())
                if on_stage_end is not None:
                    on_stage_end(stage.name)
    finally:
        torch.set_num_threads(threads)
        for p in head.parameters():
            p.requires_grad_(True)
        head.eval()
    history["seconds"] = time.perf_counter() - start
    history["val_ap"] = history["stages"][-1]["best_val_ap"] if history["stages"] else None
    return history


def _shared(head, stage, run, store, data, cfg, gen, data_key) -> dict[str, Any]:
    """Run a shareable stage, or restore it from `store` when an identical one has run (bit-identical result)."""
    params = stage_parameters(head, stage)
    h = hashlib.sha256()
    for part in (stage.share, stage.name, repr(cfg), repr((stage.epochs, stage.lr, stage.label_smoothing)), data_key):
        h.update(str(part).encode())
    for name, p in sorted(params.items()):
        h.update(name.encode() + p.detach().cpu().numpy().tobytes())
    norm = getattr(head, "input_norm", None)
    for t in [*(norm.buffers() if norm is not None else []), gen.get_state(), torch.get_rng_state()]:
        h.update(t.detach().cpu().numpy().tobytes())
    h.update(np.ascontiguousarray(data.y).tobytes())
    if stage.rows is not None and data.groups is not None:
        h.update(np.asarray(stage.rows(data.groups, data.y)).tobytes())
    key = h.hexdigest()
    if key in store:
        done = store[key]
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(done["params"][name])
        gen.set_state(done["gen"])
        torch.set_rng_state(done["rng"])
        return {**done["record"], "reused": True}
    record = run()
    store[key] = {
        "params": {k: p.detach().cpu().clone() for k, p in params.items()},
        "gen": gen.get_state(),
        "rng": torch.get_rng_state(),
        "record": record,
    }
    return record


SMALL_BATCH = 1 << 20  # floats per batch below which one CPU thread is faster


def _fit_threads(cfg: FitConfig, device: torch.device, head: nn.Module, streamed: bool) -> int:
    """CPU threads for the fit: one for small batches, one core left to the reader thread when streaming."""
    if cfg.threads is not None:
        return cfg.threads
    if getattr(head, "needs_frozen", False):  # every row runs the tail's transformer blocks: never a small batch
        return max(1, torch.get_num_threads() - 1) if streamed else torch.get_num_threads()
    widths = getattr(head.cfg, "in_dims", None) or (head.cfg.in_dim,) * len(head.cfg.inputs)
    if device.type == "cpu" and cfg.batch_size * sum(widths) < SMALL_BATCH:
        return 1
    return max(1, torch.get_num_threads() - 1) if streamed else torch.get_num_threads()


@dataclass
class _Data:
    rows: MemoryRows | StreamRows
    groups: Groups

    @property
    def y(self) -> np.ndarray:
        return self.rows.y

    def select(self, stage: Stage, *, required: bool) -> tuple[MemoryRows | StreamRows, np.ndarray | None]:
        """This stage's rows and their indices (None = all rows)."""
        if stage.rows is None or (self.groups is None and not required):
            return self.rows, None
        idx = np.flatnonzero(stage.rows(self.groups, self.y))
        return self.rows.subset(idx), idx


def _skipped(stage: Stage, y: np.ndarray) -> dict[str, Any]:
    counts = np.bincount(y, minlength=2).tolist()
    return {
        "name": stage.name,
        "skipped": f"rows of one class only ({counts} real/fake)",
        "trainable": [],
        "rows": len(y),
        "epochs": [],
        "best_epoch": None,
        "best_val_ap": None,
    }


def _run_stage(
    head: nn.Module, stage: Stage, *, data: _Data, val: _Data | None, cfg: FitConfig, gen: torch.Generator
) -> dict[str, Any]:
    rows, idx = data.select(stage, required=True)
    y = rows.y
    if len(np.unique(y)) < 2 and stage.optional:
        return _skipped(stage, y)
    if len(np.unique(y)) < 2:
        sources = sorted({str(s) for s in (data.groups or {}).get("source", [])})
        present = f"; the training rows' sources are {sources[:8]}" if sources else ""
        raise ValueError(
            f"stage '{stage.name}' of head '{head.head_name}' has {len(y)} training rows of one class "
            f"only ({np.bincount(y, minlength=2).tolist()} real/fake){present}; make the head's source patterns "
            "name sources of the cache, or train on a cache that holds those fake types"
        )
    device = rows.device
    y_t = torch.as_tensor(y, dtype=torch.float32, device=device)
    if stage.setup is not None:
        with torch.no_grad():
            stage.setup(lambda: ((xb, y_t[i]) for xb, i in rows.batches(cfg.eval_batch_size)))
    params = stage_parameters(head, stage)
    for p in head.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    smooth = cfg.label_smoothing if stage.label_smoothing is None else stage.label_smoothing
    batch = _Batches(
        rows=rows,
        target=y_t * (1 - smooth) + 0.5 * smooth,
        weight=torch.as_tensor(class_weights(y), device=device) if cfg.balance else None,
        aux=_aux(stage, data.groups, data.y, idx, device),
    )
    lr = cfg.lr if stage.lr is None else stage.lr
    epochs = cfg.epochs if stage.epochs is None else stage.epochs
    opt = _fast_step(head, stage, params, cfg, lr) or _optimizer(list(params.values()), cfg, lr, device)
    forward = stage.forward or (lambda xb, aux: head(xb))
    val_rows = val.select(stage, required=False)[0] if val is not None else None
    record = {"name": stage.name, "trainable": sorted(params), "rows": len(y), "epochs": []}
    _epochs(
        head,
        record,
        forward=forward,
        batch=batch,
        opt=opt,
        val=val_rows,
        params=params,
        cfg=cfg,
        gen=gen,
        lr=lr,
        epochs=epochs,
    )
    return record


def _epochs(head, record, *, forward, batch, opt, val, params, cfg, gen, lr, epochs) -> None:
    """Run the epochs of a stage, tracking validation AP, early stopping and the best weights."""
    best_ap, best_epoch, best_state = -1.0, None, None
    steps_per_epoch = math.ceil(len(batch.target) / cfg.batch_size)
    for epoch in range(epochs):
        t0 = time.perf_counter()
        head.train()
        loss = _epoch(
            forward, batch, opt, gen=gen, cfg=cfg, lr=lr, step0=epoch * steps_per_epoch, total=epochs * steps_per_epoch
        )
        row = {"epoch": epoch, "loss": loss, "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
        if val is not None:
            row["val_ap"] = _val_ap(head, forward, val, cfg)
            if row["val_ap"] > best_ap:
                best_ap, best_epoch = row["val_ap"], epoch
                best_state = {k: p.detach().clone() for k, p in params.items()} if cfg.early_stop else None
        record["epochs"].append(row)
        if cfg.early_stop and best_epoch is not None and epoch - best_epoch >= cfg.early_stop:
            break
    if best_state is not None:
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(best_state[k])
    record["best_epoch"] = best_epoch
    record["best_val_ap"] = best_ap if best_epoch is not None else None


def _aux(stage: Stage, groups: Groups, y: np.ndarray, idx: np.ndarray | None, device: torch.device) -> dict:
    if stage.aux is None:
        return {}
    out = {}
    for k, v in stage.aux(groups, y).items():
        v = np.asarray(v)
        out[k] = torch.as_tensor(v if idx is None else v[idx], device=device)
    return out


@dataclass
class _Batches:
    rows: MemoryRows | StreamRows
    target: Tensor
    weight: Tensor | None
    aux: dict[str, Tensor]


FAST_LINEAR = True  # use a head's no-autograd step when it offers one (tests compare it with the autograd path)


def _fast_step(head: nn.Module, stage: Stage, params: dict, cfg: FitConfig, lr: float) -> Any:
    """The head's own fast training step for a plain stage (`head.fast_step`), or None."""
    maker = getattr(head, "fast_step", None)
    if not (FAST_LINEAR and maker is not None and stage.forward is None and stage.aux is None):
        return None
    return maker(tuple(params), lr=lr, weight_decay=cfg.weight_decay, decoupled=cfg.optimizer == "adamw")


def _optimizer(params: list[Tensor], cfg: FitConfig, lr: float, device: torch.device) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    fused = cfg.fused
    if fused is None:
        fused = device.type == "cuda"  # on the CPU the fused step is slower than foreach for small heads
    kwargs = {"fused": True} if fused else {"foreach": True}
    return cls(params, lr=lr, weight_decay=cfg.weight_decay, **kwargs)


def _epoch(
    forward: StageForward,
    batch: _Batches,
    opt: Any,
    *,
    gen: torch.Generator,
    cfg: FitConfig,
    lr: float,
    step0: int,
    total: int,
) -> float:
    """One pass over the rows in a seeded random order; returns the mean training loss."""
    cosine = cfg.schedule == "cosine"
    fast = not isinstance(opt, torch.optim.Optimizer)
    losses = []
    for step, (xb, index) in enumerate(batch.rows.batches(cfg.batch_size, gen=gen, raw=fast)):
        if cosine:
            for group in opt.param_groups:
                group["lr"] = lr_at(step0 + step, total, lr=lr, schedule="cosine", min_lr_ratio=cfg.min_lr_ratio)
        target = batch.target.index_select(0, index)
        weight = None if batch.weight is None else batch.weight.index_select(0, index)
        if fast:
            losses.append(opt(xb, target, weight))
            continue
        aux = {k: v.index_select(0, index) for k, v in batch.aux.items()}
        out = forward(xb, aux)
        logits, extra = out if isinstance(out, tuple) else (out, None)
        # BCE-with-logits as softplus(z) - z t: same math; the fused kernel stalls for ms on a busy multi-core CPU
        per_row = F.softplus(logits) - logits * target
        loss = per_row.mean() if weight is None else (per_row * weight).mean()
        if extra is not None:
            loss = loss + extra
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return float(torch.stack(losses).mean()) if losses else float("nan")


SCORE_BYTES = 8 << 20  # input bytes per scoring forward: a wide head's temporaries on more rows spill the CPU caches


def _forward_rows(xb: Mapping[str, Tensor]) -> int:
    """Rows per scoring forward for a batch `xb`: as many as fit SCORE_BYTES of float32 inputs (at least 64)."""
    per_row = sum(int(np.prod(v.shape[1:])) for v in xb.values()) * 4
    return max(64, SCORE_BYTES // max(per_row, 1))


def _scores(rows: MemoryRows | StreamRows, batch_size: int, fn: Callable[[dict[str, Tensor]], Tensor]) -> Tensor:
    """`fn` (one value per row) over every row, in row order, as a float64 CPU tensor. Rows are read `batch_size`
    at a time and scored in slices of `_forward_rows` rows (a row's score does not depend on its slice but for float
    rounding; for wide heads several times faster than one forward over tens of thousands of rows)."""
    out = torch.empty(len(rows), dtype=torch.float64)
    for xb, index in rows.batches(batch_size):
        step = _forward_rows(xb)
        for lo in range(0, len(index), step):
            part = {k: v[lo : lo + step] for k, v in xb.items()}
            out[index[lo : lo + step].cpu()] = fn(part).double().cpu()
    return out


def _val_ap(head: nn.Module, forward: StageForward, rows: MemoryRows | StreamRows, cfg: FitConfig) -> float:
    """Validation AP of the current weights (the one AP of `common.metrics`, as `aigi eval` reports it)."""
    if len(np.unique(rows.y)) < 2:
        return float("nan")
    head.eval()

    def logits(xb: dict[str, Tensor]) -> Tensor:
        out = forward(xb, {})
        return out[0] if isinstance(out, tuple) else out

    with torch.inference_mode():
        scores = _scores(rows, _rows_per_call(head, cfg.eval_batch_size), logits)
    head.train()
    return average_precision(rows.y, scores.numpy())


def _rows_per_call(head: nn.Module, batch_size: int) -> int:
    """Rows per scoring forward: at most the head's `batch_rows` (tail heads run transformer blocks per row)."""
    return min(batch_size, getattr(head, "batch_rows", batch_size))


def _prepared(head: nn.Module, X: Any) -> MemoryRows | StreamRows:
    rows = rows_of(head, X, None, next(iter(head.parameters())).device)
    _standardize(head, rows, [], fit_stats=False, size=0)
    head.eval()
    return rows


def logits(head: nn.Module, X: Mapping[str, np.ndarray] | np.ndarray | Any, *, batch_size: int = 65536) -> np.ndarray:
    """The raw logit of every row, float64 [N] (what calibration rescales; `predict` is its sigmoid)."""
    rows = _prepared(head, X)
    with torch.inference_mode():
        return _scores(rows, _rows_per_call(head, batch_size), lambda xb: head(xb).double()).numpy()


def predict(head: nn.Module, X: Mapping[str, np.ndarray] | np.ndarray | Any, *, batch_size: int = 65536) -> np.ndarray:
    """P(fake) = sigmoid(logit) for every row (arrays in memory or a batch source, in its order), float64 [N]."""
    rows = _prepared(head, X)
    with torch.inference_mode():
        return _scores(rows, _rows_per_call(head, batch_size), lambda xb: torch.sigmoid(head(xb).double())).numpy()


def explain(head: nn.Module, X: Mapping[str, np.ndarray] | np.ndarray | Any, *, batch_size: int = 65536) -> dict:
    """A mixing head's per-row gates and per-expert scores as numpy arrays, plus "expert_names" and "score"."""
    if not hasattr(head, "explain"):
        raise ValueError(f"head '{head.head_name}' does not mix experts; explain works for gating/router-like heads")
    rows = _prepared(head, X)
    if len(rows) == 0:
        raise ValueError("explain needs at least one row")
    out: dict[str, Any] = {}
    with torch.inference_mode():
        for xb, index in rows.batches(_rows_per_call(head, batch_size)):
            part = head.explain(xb)
            for key, value in part.items():
                if not isinstance(value, Tensor):
                    out[key] = value
                    continue
                if key not in out:
                    out[key] = torch.empty((len(rows), *value.shape[1:]), dtype=torch.float64)
                out[key][index.cpu()] = value.double().cpu()
    return {k: v.numpy() if isinstance(v, Tensor) else v for k, v in out.items()}
