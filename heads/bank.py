"""The head bank: many heads (variants x seeds x learning rates) trained together over one set of rows.

`fit_many(members, X, y, ...)` trains every member as it would be trained alone (`fit` is a bank of one): its own
seed makes its initialisation (at `heads.build`), its data order (a generator seeded with `fit.seed`) and its RNG
stream (dropout); the bank changes no number of a head that is not vectorised, and a vectorised linear head only by
float rounding. What the bank shares:

- passes: the heads advance stage by stage, one epoch per round; members whose next epoch reads the same rows in
  the same order (same rows of the stage, batch size and generator state: e.g. the learning rates of one seed) make
  one pass, each batch read (gathered, or streamed from disk) once and fed to each of them;
- steps: the plain linear heads of one pass step as one batched matmul (`LinearStack`) instead of one by one;
- stages: a stage marked `Stage.share` (the frozen experts of gating / concat / mean) whose parameters, rows,
  settings and RNG state equal one trained already is restored from `stage_store`, bit for bit, instead of trained
  again; members that reach it meanwhile wait for it;
- failures: a member that fails (one-class stage rows, a NaN loss) fails alone with its reason; the others go on
  (`errors="keep"`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aigi.common.device import resolve_device
from aigi.common.metrics import average_precision
from aigi.heads._fastlinear import BLOCK_BYTES, LinearAdamStep, Scratch
from aigi.heads.train import (
    Feed,
    FitConfig,
    Groups,
    Stage,
    _labels,
    class_weights,
    fit_threads,
    head_stages,
    lr_at,
    prep_of,
    rows_of,
    rows_per_call,
    scores,
    stage_parameters,
)

FAST_LINEAR = True  # use a head's no-autograd step when it offers one (tests compare it with the autograd path)


@dataclass
class Member:
    """One head of a bank and its fit settings.

    Attributes:
        head: a head from `heads.build`.
        cfg: its training settings (`FitConfig`: seed, lr, epochs, ...).
        name: how messages name it (default the head's registry name).
    """

    head: nn.Module
    cfg: FitConfig = field(default_factory=FitConfig)
    name: str = ""


def fit(
    head: nn.Module,
    X: Any,
    y: np.ndarray,
    *,
    cfg: FitConfig | None = None,
    X_val: Any = None,
    y_val: np.ndarray | None = None,
    groups: Groups = None,
    groups_val: Groups = None,
    on_stage_end: Callable[[str], None] | None = None,
    stage_store: MutableMapping[str, dict] | None = None,
    data_key: str = "",
) -> dict[str, Any]:
    """Train `head` on features in memory or streamed from disk, running each of its stages in turn (a bank of one).

    Args:
        head: a head from `heads.build`.
        X: feature name -> [N, D] array (or one array for one-input heads; float16 stays float16 in memory and is
            widened per batch), or a `common.rows.Rows` (e.g. a `cache.FeatureSet` or a `cache.FeatureStream`).
        y: labels [N], 0 real / 1 fake.
        cfg: training settings (default `FitConfig()`).
        X_val: validation features (arrays or a `Rows`) for AP per epoch and early stopping.
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

    Raises:
        ValueError: bad inputs (NaN / inf features, labels other than 0 / 1, missing features), a stage whose rows
            hold one class, or a training loss that becomes NaN / inf.
    """
    done = None if on_stage_end is None else (lambda _i, name: on_stage_end(name))
    return fit_many(
        [Member(head, cfg or FitConfig())], X, y, X_val=X_val, y_val=y_val, groups=groups, groups_val=groups_val,
        stage_store=stage_store, data_key=data_key, on_stage_end=done,
    )[0]  # fmt: skip


def fit_many(
    members: Sequence[Member],
    X: Any,
    y: np.ndarray,
    *,
    X_val: Any = None,
    y_val: np.ndarray | None = None,
    groups: Groups = None,
    groups_val: Groups = None,
    stage_store: MutableMapping[str, dict] | None = None,
    data_key: str = "",
    on_stage_end: Callable[[int, str], None] | None = None,
    errors: str = "raise",
) -> list[dict[str, Any] | Exception]:
    """Train every member's head on the same rows (see the module docstring for what is shared).

    Args:
        members: the heads and their settings (`Member`); every member's `cfg.device` must resolve to one device.
        X, y, X_val, y_val, groups, groups_val, stage_store, data_key: as `fit`, for every member (a bank keeps its
            own stage store when none is given: its members share stages among themselves).
        on_stage_end: called with (member index, stage name) when a member finishes a stage.
        errors: "raise" (the first failure ends the bank) or "keep" (a failing member's entry is its exception).

    Returns:
        One entry per member, in order: its history (as `fit` returns it), or with errors="keep" the exception it
        failed with.
    """
    if errors not in ("raise", "keep"):
        raise ValueError(f"errors must be 'raise' or 'keep', got {errors!r}")
    members = list(members)
    if not members:
        raise ValueError("fit_many needs at least one member")
    device = _one_device(members)
    heads = [m.head for m in members]
    names = list(dict.fromkeys(n for h in heads for n in h.cfg.inputs))
    rows = rows_of(heads, X, what="X")
    ctx = _Context(
        feed=Feed(rows, names, device), y=_labels(y, len(rows)), groups=groups,
        store={} if stage_store is None else stage_store, data_key=data_key, on_stage_end=on_stage_end,
        errors=errors,
    )  # fmt: skip
    if X_val is not None and y_val is not None:
        val = rows_of(heads, X_val, what="X_val")
        ctx.val, ctx.y_val, ctx.groups_val = Feed(val, names, device), _labels(y_val, len(val)), groups_val
    runs = [_Run(i, m, ctx) for i, m in enumerate(members)]
    threads = torch.get_num_threads()
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        torch.set_num_threads(max(fit_threads(m.cfg, device, m.head, ctx.feed.streamed) for m in members))
        with torch.random.fork_rng(devices=devices):
            for run in runs:
                _guarded(run, run.begin)
            _train(runs, ctx)
    finally:
        torch.set_num_threads(threads)
        for m in members:
            for p in m.head.parameters():
                p.requires_grad_(True)
            m.head.eval()
    return [run.result() for run in runs]


def _one_device(members: Sequence[Member]) -> torch.device:
    devices = {str(resolve_device(m.cfg.device)) for m in members}
    if len(devices) > 1:
        raise ValueError(f"a bank trains on one device; its members ask for {sorted(devices)} (fit.device)")
    device = resolve_device(members[0].cfg.device)
    for m in members:
        m.head.to(device)
    return device


@dataclass
class _Context:
    """What every member of a bank shares: the rows, labels and groups, the stage store, the callbacks."""

    feed: Feed
    y: np.ndarray
    groups: Groups
    store: MutableMapping[str, dict]
    data_key: str
    on_stage_end: Callable[[int, str], None] | None
    errors: str
    val: Feed | None = None
    y_val: np.ndarray | None = None
    groups_val: Groups = None
    in_flight: dict[str, int] = field(default_factory=dict)  # share key -> the member training that stage now


def _guarded(run: _Run, fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)`; with errors="keep" a failure marks `run` failed instead of ending the bank."""
    if run.error is not None:
        return None
    try:
        return fn(*args)
    except Exception as err:
        if run.ctx.errors == "raise":
            raise
        run.fail(err)
        return None


def _train(runs: list[_Run], ctx: _Context) -> None:
    """Rounds until every member is done or failed: each ready member runs one epoch, in shared passes."""
    while True:
        for run in runs:
            if not run.done:
                _guarded(run, run.advance)
        active = [r for r in runs if not r.done and r.error is None]
        if not active:
            return
        ready = [r for r in active if r.stage is not None]
        if not ready:
            raise RuntimeError(f"bank: members {[r.name for r in active]} all wait for a shared stage")
        passes: dict[tuple, list[_Run]] = {}
        for run in ready:
            passes.setdefault(run.stage.pass_key(), []).append(run)
        for group in passes.values():
            _pass(group, ctx)
        for run in ready:
            if _guarded(run, run.stage.end_epoch):
                _guarded(run, run.end_stage)


def _pass(group: list[_Run], ctx: _Context) -> None:
    """One epoch of every member of `group` over the same batches: each batch read once, fed to each member (the
    plain linear heads among them stepped together by a `LinearStack`)."""
    lead = group[0].stage
    fast = [r for r in group if r.stage.fast]
    stack = LinearStack([r.stage.opt for r in fast]) if len(fast) > 1 and _one_feature(fast) else None
    others = [r for r in group if stack is None or not r.stage.fast]
    raw = all(r.stage.fast and r.stage.raw_ok for r in group)
    start = time.perf_counter()
    stepped = 0.0
    for step, (xb, local) in enumerate(ctx.feed.epoch(lead.batch_size, gen=group[0].gen, sub=lead.sub, raw=raw)):
        before = time.perf_counter()
        for run in others:
            _guarded(run, run.stage.step, xb, local, step)
        if stack is not None:
            _stack_step(stack, fast, xb, local, step)
        stepped += time.perf_counter() - before
    if stack is not None:
        stack.finish()
    reading = time.perf_counter() - start - stepped  # the batches' reading and gathering, shared by the group
    state = group[0].gen.get_state()
    for run in group:
        run.gen.set_state(state)
        run.stage.seconds += reading / len(group)


def _stack_step(stack: LinearStack, runs: list[_Run], xb: dict[str, Tensor], local: Tensor, step: int) -> None:
    """One step of the stacked linear members on a batch."""
    start = time.perf_counter()
    for run in runs:
        run.stage.schedule(step)
    targets = torch.stack([r.stage.target.index_select(0, local) for r in runs], dim=1)
    weights = None
    if any(r.stage.weight is not None for r in runs):
        ones = torch.ones(len(local), device=local.device)
        weights = torch.stack(
            [ones if r.stage.weight is None else r.stage.weight.index_select(0, local) for r in runs], 1
        )
    for run, loss in zip(runs, stack(xb, targets, weights).unbind(0), strict=True):
        run.stage.losses.append(loss)
        run.stage.seconds += (time.perf_counter() - start) / len(runs)


def _one_feature(runs: list[_Run]) -> bool:
    return len({r.stage.opt.name for r in runs}) == 1


class _Run:
    """One member's way through its stages: its generator, RNG state, history and the stage it is in."""

    def __init__(self, index: int, member: Member, ctx: _Context) -> None:
        self.i, self.head, self.cfg, self.ctx = index, member.head, member.cfg, ctx
        self.name = member.name or member.head.head_name
        self.stages = head_stages(member.head)
        self.next = 0
        self.gen = torch.Generator().manual_seed(member.cfg.seed)
        self.device = ctx.feed.device
        self.rng: Tensor | None = None
        self.cuda_rng: Tensor | None = None
        self.prep = prep_of(member.head)
        self.history: dict[str, Any] = {"stages": [], "device": str(self.device), "streamed": ctx.feed.streamed}
        self.seconds = 0.0
        self.stage: _StageRun | None = None
        self.error: Exception | None = None
        self.done = False

    def begin(self) -> None:
        """Seed this member's RNG stream and fit its input standardisation (when it has one)."""
        torch.manual_seed(self.cfg.seed)
        self.rng = torch.get_rng_state()
        if self.device.type == "cuda":
            self.cuda_rng = torch.cuda.get_rng_state(self.device)
        norm = getattr(self.head, "input_norm", None)
        if norm is not None:
            norm.to(self.device)
            norm.fit_batches(xb for xb, _ in self.ctx.feed.ordered(self.cfg.eval_batch_size))

    @contextlib.contextmanager
    def own_rng(self) -> Iterator[None]:
        """Run with this member's RNG state in place (dropout draws from its own stream), then keep the new state."""
        torch.set_rng_state(self.rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng, self.device)
        try:
            yield
        finally:
            self.rng = torch.get_rng_state()
            if self.cuda_rng is not None:
                self.cuda_rng = torch.cuda.get_rng_state(self.device)

    def fail(self, err: Exception) -> None:
        """Mark this member failed; a shared stage it was training is left to the next member that needs it."""
        self.error = err
        for key, owner in list(self.ctx.in_flight.items()):
            if owner == self.i:
                del self.ctx.in_flight[key]

    def advance(self) -> None:
        """Start the next stage when none is running: skipped, restored from the store, waiting, or started."""
        while self.stage is None and not self.done:
            if self.next >= len(self.stages):
                self.done = True
                self.history["seconds"] = self.seconds
                self.history["val_ap"] = self.history["stages"][-1]["best_val_ap"] if self.history["stages"] else None
                return
            stage = self.stages[self.next]
            outcome = self._start(stage)
            if outcome is None:  # another member is training this shared stage: wait for it
                return
            if isinstance(outcome, dict):
                self._record(stage, outcome)
            else:
                self.stage = outcome

    def _record(self, stage: Stage, record: dict[str, Any]) -> None:
        self.history["stages"].append(record)
        self.next += 1
        if self.ctx.on_stage_end is not None:
            self.ctx.on_stage_end(self.i, stage.name)

    def rows(self, stage: Stage, *, val: bool) -> np.ndarray | None:
        """The positions of the stage's training (or validation) rows; None = all."""
        groups, y = (self.ctx.groups_val, self.ctx.y_val) if val else (self.ctx.groups, self.ctx.y)
        if stage.rows is None or (val and groups is None):
            return None
        return np.flatnonzero(stage.rows(groups, y))

    def _start(self, stage: Stage) -> _StageRun | dict[str, Any] | None:
        sub = self.rows(stage, val=False)
        y = self.ctx.y if sub is None else self.ctx.y[sub]
        if len(np.unique(y)) < 2:
            if stage.optional:
                return _skipped(stage, y)
            sources = sorted({str(s) for s in (self.ctx.groups or {}).get("source", [])})
            present = f"; the training rows' sources are {sources[:8]}" if sources else ""
            raise ValueError(
                f"stage '{stage.name}' of head '{self.head.head_name}' has {len(y)} training rows of one class "
                f"only ({np.bincount(y, minlength=2).tolist()} real/fake){present}; make the head's source patterns "
                "name sources of the cache, or train on a cache that holds those fake types"
            )
        key = self._share_key(stage, sub) if stage.share else None
        if key is not None and key in self.ctx.store:
            return self._restore(stage, key)
        if key is not None and self.ctx.in_flight.get(key, self.i) != self.i:
            return None
        if key is not None:
            self.ctx.in_flight[key] = self.i
        return _StageRun(self, stage, sub, y, key)

    def _share_key(self, stage: Stage, sub: np.ndarray | None) -> str:
        """What a shareable stage's result depends on: its parameters, rows, settings and RNG states."""
        h = hashlib.sha256()
        parts = (stage.share, stage.name, repr(self.cfg), repr((stage.epochs, stage.lr, stage.label_smoothing)))
        for part in (*parts, self.ctx.data_key):
            h.update(str(part).encode())
        for name, p in sorted(stage_parameters(self.head, stage).items()):
            h.update(name.encode() + p.detach().cpu().numpy().tobytes())
        norm = getattr(self.head, "input_norm", None)
        for t in [*(norm.buffers() if norm is not None else []), self.gen.get_state(), self.rng]:
            h.update(t.detach().cpu().numpy().tobytes())
        h.update(np.ascontiguousarray(self.ctx.y).tobytes())
        h.update(b"all" if sub is None else sub.tobytes())
        return h.hexdigest()

    def _restore(self, stage: Stage, key: str) -> dict[str, Any]:
        done = self.ctx.store[key]
        with torch.no_grad():
            for name, p in stage_parameters(self.head, stage).items():
                p.copy_(done["params"][name])
        self.gen.set_state(done["gen"])
        self.rng = done["rng"].clone()
        return {**done["record"], "reused": True}

    def end_stage(self) -> None:
        """Finish the running stage: best weights back, the record kept, a shareable stage stored."""
        run, self.stage = self.stage, None
        record = run.finish()
        if run.key is not None:
            params = stage_parameters(self.head, run.stage)
            self.ctx.store[run.key] = {
                "params": {k: p.detach().cpu().clone() for k, p in params.items()},
                "gen": self.gen.get_state(),
                "rng": self.rng.clone(),
                "record": record,
            }
            self.ctx.in_flight.pop(run.key, None)
        self.seconds += run.seconds
        self._record(run.stage, record)

    def result(self) -> dict[str, Any] | Exception:
        return self.error if self.error is not None else self.history


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


class _StageRun:
    """One member training one stage: its rows, targets, optimizer or fast step, epochs and validation."""

    def __init__(self, run: _Run, stage: Stage, sub: np.ndarray | None, y: np.ndarray, key: str | None) -> None:
        ctx, cfg, head, device = run.ctx, run.cfg, run.head, run.device
        self.run, self.stage, self.sub, self.key, self.cfg = run, stage, sub, key, cfg
        self.seconds, start = 0.0, time.perf_counter()
        y_t = torch.as_tensor(y, dtype=torch.float32, device=device)
        head.train()
        if stage.setup is not None:
            with torch.no_grad(), run.own_rng():
                feed, prep = ctx.feed, run.prep
                stage.setup(lambda: ((prep(xb), y_t[i]) for xb, i in feed.ordered(cfg.eval_batch_size, sub=sub)))
        self.params = stage_parameters(head, stage)
        for p in head.parameters():
            p.requires_grad_(False)
        for p in self.params.values():
            p.requires_grad_(True)
        smooth = cfg.label_smoothing if stage.label_smoothing is None else stage.label_smoothing
        self.target = y_t * (1 - smooth) + 0.5 * smooth
        self.weight = torch.as_tensor(class_weights(y), device=device) if cfg.balance else None
        self.aux = _aux(stage, ctx.groups, ctx.y, sub, device)
        self.lr = cfg.lr if stage.lr is None else stage.lr
        self.epochs = cfg.epochs if stage.epochs is None else stage.epochs
        self.batch_size = cfg.batch_size
        self.opt = _fast_step(head, stage, self.params, cfg, self.lr)
        self.fast = self.opt is not None
        self.raw_ok = getattr(head, "input_norm", None) is None
        self.opt = self.opt or _optimizer(list(self.params.values()), cfg, self.lr, device)
        self.forward = stage.forward or (lambda xb, aux: head(xb))
        self.val_sub = run.rows(stage, val=True) if ctx.val is not None else None
        self.record = {"name": stage.name, "trainable": sorted(self.params), "rows": len(y), "epochs": []}
        self.steps_per_epoch = math.ceil(len(y) / cfg.batch_size)
        self.epoch, self.best_ap, self.best_epoch, self.best_state = 0, -1.0, None, None
        self.losses: list[Tensor] = []
        self.sub_key = None if sub is None else hashlib.sha256(sub.tobytes()).hexdigest()
        self.seconds += time.perf_counter() - start
        self.epoch_start = self.seconds
        head.train()

    def pass_key(self) -> tuple:
        """Members with equal keys read the same batches this epoch: same rows, batch size and generator state."""
        state = hashlib.sha256(self.run.gen.get_state().numpy().tobytes()).hexdigest()
        return self.sub_key, self.batch_size, state

    def schedule(self, step: int) -> None:
        """Set the learning rate of this step (cosine schedule; constant: unchanged)."""
        if self.cfg.schedule == "cosine":
            total = self.epochs * self.steps_per_epoch
            lr = lr_at(self.epoch * self.steps_per_epoch + step, total, lr=self.lr, schedule="cosine",
                       min_lr_ratio=self.cfg.min_lr_ratio)  # fmt: skip
            for group in self.opt.param_groups:
                group["lr"] = lr

    def step(self, xb: dict[str, Tensor], local: Tensor, step: int) -> None:
        """One training step of this member on a batch (`local`: the rows' index within the stage's rows)."""
        start = time.perf_counter()
        self.schedule(step)
        target = self.target.index_select(0, local)
        weight = None if self.weight is None else self.weight.index_select(0, local)
        xb = self.run.prep(xb)
        if self.fast:
            self.losses.append(self.opt(xb, target, weight))
            self.seconds += time.perf_counter() - start
            return
        with self.run.own_rng():
            aux = {k: v.index_select(0, local) for k, v in self.aux.items()}
            out = self.forward(xb, aux)
            logits, extra = out if isinstance(out, tuple) else (out, None)
            # BCE-with-logits as softplus(z) - z t: same math; the fused kernel stalls for ms on a busy multi-core CPU
            per_row = F.softplus(logits) - logits * target
            loss = per_row.mean() if weight is None else (per_row * weight).mean()
            if extra is not None:
                loss = loss + extra
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        self.losses.append(loss.detach())
        self.seconds += time.perf_counter() - start

    def end_epoch(self) -> bool:
        """Close an epoch: its loss (a NaN / inf loss fails the member), validation AP, the best weights; True
        when the stage is finished (its epochs done, or early stopping)."""
        start = time.perf_counter()
        loss = float(torch.stack(self.losses).mean()) if self.losses else float("nan")
        if self.losses and not math.isfinite(loss) and (bad := self.run.ctx.feed.nonfinite()) is not None:
            raise ValueError(f"X: feature {bad!r} holds NaN or inf values (the training loss is {loss}); drop or "
                             "repair those rows before training")  # fmt: skip
        if self.losses and not math.isfinite(loss):
            raise ValueError(
                f"head '{self.run.name}', stage '{self.stage.name}': the training loss is {loss} at epoch "
                f"{self.epoch} (lr {self.lr:g}); lower fit.lr, or check the features for extreme values"
            )
        row = {"epoch": self.epoch, "loss": loss, "lr": self.opt.param_groups[0]["lr"], "seconds": 0.0}
        self.losses = []
        if self.run.ctx.val is not None:
            row["val_ap"] = self._val_ap()
            if row["val_ap"] > self.best_ap:
                self.best_ap, self.best_epoch = row["val_ap"], self.epoch
                if self.cfg.early_stop:
                    self.best_state = {k: p.detach().clone() for k, p in self.params.items()}
        self.seconds += time.perf_counter() - start
        row["seconds"], self.epoch_start = self.seconds - self.epoch_start, self.seconds
        self.record["epochs"].append(row)
        patience = self.cfg.early_stop
        stop = bool(patience) and self.best_epoch is not None and self.epoch - self.best_epoch >= patience
        self.epoch += 1
        self.run.head.train()
        return self.epoch >= self.epochs or stop

    def _val_ap(self) -> float:
        """Validation AP of the current weights (the one AP of `common.metrics`, as `aigi eval` reports it)."""
        ctx, head = self.run.ctx, self.run.head
        y = ctx.y_val if self.val_sub is None else ctx.y_val[self.val_sub]
        if len(np.unique(y)) < 2:
            return float("nan")
        head.eval()
        prep, forward = self.run.prep, self.forward

        def logits(xb: dict[str, Tensor]) -> Tensor:
            out = forward(prep(xb), {})
            return out[0] if isinstance(out, tuple) else out

        with torch.inference_mode():
            values = scores(ctx.val, rows_per_call(head, self.cfg.eval_batch_size), logits, sub=self.val_sub)
        head.train()
        return average_precision(y, values.numpy())

    def finish(self) -> dict[str, Any]:
        """The stage's record, with the best epoch's weights restored under early stopping."""
        if self.best_state is not None:
            with torch.no_grad():
                for k, p in self.params.items():
                    p.copy_(self.best_state[k])
        self.record["best_epoch"] = self.best_epoch
        self.record["best_val_ap"] = self.best_ap if self.best_epoch is not None else None
        return self.record


def _aux(stage: Stage, groups: Groups, y: np.ndarray, idx: np.ndarray | None, device: torch.device) -> dict:
    if stage.aux is None:
        return {}
    out = {}
    for k, v in stage.aux(groups, y).items():
        v = np.asarray(v)
        out[k] = torch.as_tensor(v if idx is None else v[idx], device=device)
    return out


def _fast_step(head: nn.Module, stage: Stage, params: dict, cfg: FitConfig, lr: float) -> Any:
    """The head's own fast training step for a plain stage (`head.fast_step`), or None."""
    maker = getattr(head, "fast_step", None)
    if not (FAST_LINEAR and maker is not None and stage.forward is None and stage.aux is None):
        return None
    return maker(tuple(params), lr=lr, weight_decay=cfg.weight_decay, decoupled=cfg.optimizer == "adamw")


def _optimizer(params: list[Tensor], cfg: FitConfig, lr: float, device: torch.device) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    fused = cfg.fused
    if fused is None:  # CPU and CUDA: the fused step (one kernel); on the CPU 2-4x faster than foreach from 100 to
        fused = device.type in ("cpu", "cuda")  # 786,432 parameters (torch 2.x, one thread)
    kwargs = {"fused": True} if fused else {"foreach": True}
    return cls(params, lr=lr, weight_decay=cfg.weight_decay, **kwargs)


class LinearStack:
    """Several `LinearAdamStep`s on the same feature stepped as one: the logits of every head in one matmul per
    block of rows and their gradients in another, then Adam / AdamW per head (its own learning rate, weight decay
    and step count). The same updates as stepping each alone, up to float rounding."""

    def __init__(self, steps: list[LinearAdamStep]) -> None:
        self.steps, self.name = steps, steps[0].name
        self.params = [torch.cat([s.params[j].detach() for s in steps]) for j in (0, 1)]
        self.m = [torch.cat([s.m[j] for s in steps]) for j in (0, 1)]
        self.v = [torch.cat([s.v[j] for s in steps]) for j in (0, 1)]
        self.t = torch.tensor([float(s.t) for s in steps], dtype=torch.float64)
        self.wd = torch.tensor([float(s.weight_decay) for s in steps])
        self.decoupled = torch.tensor([bool(s.decoupled) for s in steps])
        self._float = Scratch()

    @torch.no_grad()
    def __call__(self, x: dict[str, Tensor], targets: Tensor, weights: Tensor | None) -> Tensor:
        """One step of every head on a batch; targets / weights are [rows, heads]; returns each head's loss."""
        w, b = self.params
        xb, n = x[self.name], len(targets)
        z = torch.empty((n, len(self.steps)), dtype=w.dtype, device=w.device)
        gw, gb = torch.zeros_like(w), torch.zeros_like(b)
        rows = max(1, BLOCK_BYTES // (4 * max(1, w.shape[1])))
        for lo in range(0, n, rows):
            hi = min(n, lo + rows)
            xk = self._float(xb[lo:hi])
            torch.addmm(b, xk, w.T, out=z[lo:hi])
            r = torch.sigmoid(z[lo:hi]).sub_(targets[lo:hi])
            if weights is not None:
                r.mul_(weights[lo:hi])
            r.div_(n)
            gw.addmm_(r.T, xk)
            gb.add_(r.sum(0))
        per_row = F.softplus(z) - z * targets
        if weights is not None:
            per_row = per_row * weights
        self._adam([gw, gb])
        return per_row.mean(0)

    def _adam(self, grads: list[Tensor]) -> None:
        beta1, beta2 = self.steps[0].betas
        eps = self.steps[0].eps
        lr = torch.tensor([float(s.param_groups[0]["lr"]) for s in self.steps])
        self.t += 1
        step_size = (lr.double() / (1 - beta1**self.t)).float()
        root_bc2 = torch.sqrt(1 - beta2**self.t).float()
        for p, g, m, v in zip(self.params, grads, self.m, self.v, strict=True):
            shape = (-1,) + (1,) * (p.dim() - 1)
            decay = torch.where(self.decoupled, 1 - lr * self.wd, torch.ones_like(lr)).view(shape)
            p.mul_(decay)
            g = g + torch.where(self.decoupled, torch.zeros_like(self.wd), self.wd).view(shape) * p
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            p.sub_(step_size.view(shape) * m / (v.sqrt() / root_bc2.view(shape) + eps))

    def finish(self) -> None:
        """Write the stacked weights and Adam states back into each head's step (and so its parameters)."""
        with torch.no_grad():
            for i, s in enumerate(self.steps):
                for j in (0, 1):
                    s.params[j].copy_(self.params[j][i : i + 1])
                    s.m[j].copy_(self.m[j][i : i + 1])
                    s.v[j].copy_(self.v[j][i : i + 1])
                s.t = int(self.t[i])


class FolderStages:
    """A `stage_store` kept in memory and as files `KEY.safetensors` (parameters, RNG states) + `KEY.json` (the
    stage's history record, written last: its presence marks a complete entry), so that several processes (the
    ablation's parallel banks) share finished stages. No pickle."""

    def __init__(self, folder: str | Path) -> None:
        self.folder, self.memory = Path(folder), {}

    def __contains__(self, key: object) -> bool:
        return key in self.memory or (self.folder / f"{key}.json").is_file()

    def __getitem__(self, key: str) -> dict:
        if key not in self.memory:
            from safetensors.torch import load_file

            tensors = load_file(str(self.folder / f"{key}.safetensors"))
            record = json.loads((self.folder / f"{key}.json").read_text(encoding="utf-8"))
            params = {k[len("param.") :]: v for k, v in tensors.items() if k.startswith("param.")}
            self.memory[key] = {"params": params, "gen": tensors["gen"], "rng": tensors["rng"], "record": record}
        return self.memory[key]

    def __setitem__(self, key: str, value: dict) -> None:
        from safetensors.torch import save_file

        self.memory[key] = value
        self.folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"param.{k}": v.contiguous() for k, v in value["params"].items()}
        tensors.update(gen=value["gen"], rng=value["rng"])
        for suffix, write in (
            (".safetensors", lambda tmp: save_file(tensors, str(tmp))),
            (".json", lambda tmp: tmp.write_text(json.dumps(value["record"], default=float), encoding="utf-8")),
        ):
            final = self.folder / f"{key}{suffix}"
            tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
            write(tmp)
            os.replace(tmp, final)
