"""The train stage: run config(s) + feature cache(s) -> fitted heads in their run folders, several at once as a head
bank (`heads.fit_many`; rows: `pipeline.rows`)."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aigi.pipeline.config import RunConfig
from aigi.pipeline.rows import RowStore
from aigi.pipeline.timing import Stages

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOptions:
    """How `aigi train` fits a run config, beyond the config itself.

    Attributes:
        init: start from the saved head in this folder (its config and weights) instead of a new one; the config's
            head.name and inputs must match it.
        weights: `PATH` / `ALIAS=PATH` backbone weights a `tail_*` head re-runs its last blocks with.
    """

    init: Path | None = None
    weights: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "weights", tuple(self.weights))


@dataclass(frozen=True)
class TrainResult:
    """What `train_run` fitted and wrote.

    Attributes:
        head: the head's registry name.
        train_rows, val_rows: rows fitted on and validated on.
        seconds: the fit's wall time.
        val_metrics: ACC / AP / AUC ... on the validation rows at 0.5 (None without validation rows).
        run_dir: where head.json, head.safetensors and config.yaml were written.
        dims: feature name -> per-row shape.
        held: how the training rows were held (in memory as float32 / float16, or streamed), and why.
        stages: stage name -> seconds (open, load, fit, write; config when the caller marked it).
    """

    head: str
    train_rows: int
    val_rows: int
    seconds: float
    val_metrics: dict[str, Any] | None
    run_dir: Path
    dims: dict[str, Any]
    held: str
    stages: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The result as plain data (run_dir as a string), as the Python API returns it."""
        return {**dataclasses.asdict(self), "run_dir": str(self.run_dir)}


def check_run_dir(run_dir: Path, *, overwrite: bool) -> None:
    """Refuse to replace a trained head unless asked."""
    if run_dir.is_file():
        raise FileExistsError(f"-o {run_dir} is a file; RUN_DIR is the folder the head is written to")
    if not overwrite and any((run_dir / name).exists() for name in ("head.json", "head.safetensors")):
        raise FileExistsError(
            f"{run_dir} already holds a trained head; pass --overwrite to replace it, or choose another -o RUN_DIR"
        )


def initial_head(
    cfg: RunConfig, dims: dict, *, seed: int, init: str | Path | None, frozen: Any = None
) -> tuple[Any, dict | None]:
    """A new head built from the config, or the saved head at `init` (checked against the config and the rows)."""
    from aigi import heads

    if init is None:
        return heads.build(cfg.head.name, dims=dims, seed=seed, frozen=frozen, **cfg.head.params), None
    head, info = heads.load(init, frozen=frozen)
    if info["name"] != cfg.head.name or tuple(info["inputs"]) != tuple(cfg.head.inputs):
        raise ValueError(
            f"--init {init} holds a '{info['name']}' head on {list(info['inputs'])}, the config trains "
            f"'{cfg.head.name}' on {list(cfg.head.inputs)}; set head.name / head.inputs to match (--set)"
        )
    in_dim, first = getattr(head.cfg, "in_dim", None), dims.get(cfg.head.inputs[0])
    if in_dim is not None and first is not None and int(in_dim) != int(first[-1]):
        raise ValueError(
            f"--init {init} reads {in_dim}-d '{cfg.head.inputs[0]}' features, the cache holds {first[-1]}-d ones; "
            "train on features of the backbone the head was made for"
        )
    return head, {"from": str(init), "name": info["name"], "imported_from": info.get("imported_from")}


def train_run(
    cfg: RunConfig,
    run_dir: str | Path,
    options: TrainOptions = TrainOptions(),
    *,
    stages: Stages | None = None,
    rows: RowStore | None = None,
    stage_store: MutableMapping[str, dict] | None = None,
) -> TrainResult:
    """Fit the head of `cfg` (a `pipeline.config.RunConfig`) and save it with its metadata in `run_dir`: a bank of
    one (`train_bank`).

    Rows stay in memory or are streamed from the cache as `data.stream` / `data.memory_budget` decide
    (`pipeline.rows.hold_choice`).

    Args:
        cfg: the run config.
        run_dir: where head.json, head.safetensors and config.yaml are written (replaced).
        options: `--init` and `--weights` (`TrainOptions`).
        stages: a timer whose marks the caller started (`aigi train` times reading the config too).
        rows: caches and row selections kept by the caller for several runs (`pipeline.rows.RowStore`).
        stage_store: finished shareable stages kept by the caller for several runs (`heads.FolderStages`).
    """
    return train_bank([(cfg, run_dir)], options, stages=stages, rows=rows, stage_store=stage_store)[0]


def train_bank(
    runs: Sequence[tuple[RunConfig, str | Path]],
    options: TrainOptions = TrainOptions(),
    *,
    stages: Stages | None = None,
    rows: RowStore | None = None,
    stage_store: MutableMapping[str, dict] | None = None,
    errors: str = "raise",
) -> list[TrainResult | Exception]:
    """Fit the heads of several run configs as banks (`heads.fit_many`): the rows of a bank are read once, each
    batch fed to every head, shared stages trained once; each head is saved in its run directory as `train_run`
    saves it, and trained exactly as alone (see docs/HEAD_BANK.md). Runs needing different caches or rows (another
    data section) go to separate banks, said in one line.

    Args:
        runs: (run config, run directory) pairs.
        options: `--init` and `--weights`, for every run.
        stages: a timer (its marks: open, load, fit, write).
        rows: caches and row selections kept by the caller (`pipeline.rows.RowStore`).
        stage_store: finished shareable stages kept by the caller (default: the bank's own).
        errors: "raise" (the first failing run ends the call) or "keep" (a failing run's entry is its exception).

    Returns:
        One entry per run, in order: its `TrainResult`, or with errors="keep" the exception it failed with.
    """
    from aigi.pipeline.rows import same_rows

    banks: dict[str, list[int]] = {}
    for i, (cfg, _) in enumerate(runs):
        banks.setdefault(same_rows(cfg), []).append(i)
    if len(banks) > 1:
        LOG.info(f"train: {len(runs)} heads in {len(banks)} banks (their runs read different caches or rows)")
    out: list[TrainResult | Exception | None] = [None] * len(runs)
    for idx in banks.values():
        done = _train_bank([runs[i] for i in idx], options, stages or Stages(start=False), rows, stage_store, errors)
        for i, result in zip(idx, done, strict=True):
            out[i] = result
    return out


def _train_bank(
    runs: Sequence[tuple[RunConfig, str | Path]],
    options: TrainOptions,
    stages: Stages,
    rows: RowStore | None,
    stage_store: MutableMapping[str, dict] | None,
    errors: str,
) -> list[TrainResult | Exception]:
    """`train_bank` for runs of one data section."""
    from aigi import heads
    from aigi.pipeline.rows import cache_key, groups_of, open_caches, train_val_rows, val_in_memory

    data = runs[0][0].data
    caches = open_caches(data.caches, store=rows)
    stages.mark("open")
    inputs = list(dict.fromkeys(name for cfg, _ in runs for name in cfg.head.inputs))
    train, val, val_how = train_val_rows(caches, data, inputs=inputs, store=rows)
    val = val_in_memory(val, data.memory_budget)
    stages.mark("load")
    built = [_guard(errors, _member, cfg, Path(run_dir), caches, train, val, val_how, options) for cfg, run_dir in runs]
    members = [b for b in built if not isinstance(b, Exception)]
    store = {} if stage_store is None else stage_store
    start = time.perf_counter()
    rows_kw = {"X_val": val, "y_val": None if val is None else val.labels, "groups": groups_of(train),
               "groups_val": None if val is None else groups_of(val), "stage_store": store,
               "data_key": repr((cache_key(caches), data))}  # fmt: skip
    if len(members) == 1 and errors == "raise":  # one head: a bank of one
        m = members[0].member
        histories = [heads.fit(m.head, train, train.labels, cfg=m.cfg, **rows_kw)]
    else:
        histories = heads.fit_many([m.member for m in members], train, train.labels, errors=errors, **rows_kw)
    fit_seconds = time.perf_counter() - start
    stages.mark("fit")
    for m, history in zip(members, histories, strict=True):
        m.history = history
    out = []
    for b in built:
        if isinstance(b, Exception) or isinstance(b.history, Exception):
            out.append(b if isinstance(b, Exception) else b.history)
        else:
            out.append(_guard(errors, _save, b, caches, train, val, val_how, dict(stages.seconds)))
    stages.mark("write")
    LOG.debug(f"bank of {len(members)} heads fitted in {fit_seconds:.1f} s")
    return out


def _guard(errors: str, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as err:
        if errors == "raise":
            raise
        return err


@dataclass
class _Built:
    """A run of a bank: its config, folder, head and member, the head it started from, its fit history."""

    cfg: RunConfig
    run_dir: Path
    member: Any
    started_from: dict | None
    resolved: dict
    history: Any = None


def _member(
    cfg: RunConfig, run_dir: Path, caches: dict, train: Any, val: Any, val_how: str, options: TrainOptions
) -> _Built:
    """A run's head, built (or loaded with --init) and checked, as a bank member."""
    from aigi import heads
    from aigi.common.grammar import parse_aliased
    from aigi.pipeline.config import to_dict
    from aigi.pipeline.tail import frozen_tail

    if cfg.calibration and val is None:
        raise ValueError(
            f"the config asks for calibration but the run has no validation rows ({val_how}); set "
            "data.val_fraction (e.g. --set data.val_fraction=0.1) or give the cache rows with split == val"
        )
    fit_cfg = heads.FitConfig(**cfg.fit)
    specs = {a: c.spec for a, c in caches.items()}
    frozen = frozen_tail(cfg.head.name, cfg.head.inputs, specs, parse_aliased(list(options.weights), list(caches)))
    dims = {k: v for k, v in train.dims.items() if k in cfg.head.inputs}
    head, started_from = initial_head(cfg, dims, seed=fit_cfg.seed, init=options.init, frozen=frozen)
    member = heads.Member(head, fit_cfg, name=f"{cfg.head.name} ({run_dir.name})")
    return _Built(cfg, run_dir, member, started_from, to_dict(cfg))


def _save(b: _Built, caches: dict, train: Any, val: Any, val_how: str, seconds: dict) -> TrainResult:
    """Validation metrics, calibration, head.json + weights and config.yaml of one fitted run."""
    from aigi import heads
    from aigi.pipeline.config import save_config
    from aigi.pipeline.metrics import binary_metrics

    start = time.perf_counter()
    cfg, head = b.cfg, b.member.head
    val_metrics = None
    if val is not None:
        val_metrics = binary_metrics(val.labels, heads.predict(head, val), threshold=0.5)
    meta = _run_meta(cfg, caches, b.resolved, history=b.history, train=train, val=val, val_how=val_how,
                     val_metrics=val_metrics, started_from=b.started_from)  # fmt: skip
    calibration = _fit_calibration(cfg, head, val)
    heads.save(head, b.run_dir, meta=meta, calibration=calibration)
    save_config(b.resolved, b.run_dir)
    return TrainResult(
        head=cfg.head.name,
        train_rows=len(train),
        val_rows=meta["val_rows"],
        seconds=b.history["seconds"],
        val_metrics=val_metrics,
        run_dir=b.run_dir,
        dims={k: v for k, v in train.dims.items() if k in cfg.head.inputs},
        held=meta["rows_held"],
        stages={**seconds, "fit": b.history["seconds"], "write": time.perf_counter() - start},
    )


def _run_meta(
    cfg: RunConfig,
    caches: dict,
    resolved: dict,
    *,
    history: dict,
    train: Any,
    val: Any,
    val_how: str,
    val_metrics: dict | None,
    started_from: dict | None,
) -> dict[str, Any]:
    """head.json's record of a run: its caches, config, code revision, history, rows and validation."""
    from aigi.common.provenance import code_revision

    return {
        "caches": {
            a: {"path": str(c.path), "fingerprint": c.fingerprint, "format": c.format} for a, c in caches.items()
        },
        "fingerprints": {a: c.fingerprint for a, c in caches.items()},
        "extractor_spec": {a: c.spec for a, c in caches.items()},
        "run_config": resolved,
        "code_revision": code_revision(),
        "fit": dict(cfg.fit),
        "history": history,
        "train_rows": len(train),
        "val_rows": 0 if val is None else len(val),
        "val_policy": val_how,
        "val_metrics": val_metrics,
        "rows_held": getattr(train, "held", ""),
        **({"init": started_from} if started_from else {}),
    }  # fmt: skip


def _fit_calibration(cfg: RunConfig, head: Any, val: Any) -> Any:
    """The calibration the config asks for, fitted on the validation rows (None when it asks for none)."""
    if not cfg.calibration:
        return None
    from aigi import heads
    from aigi.pipeline.config import CalibrationSpec

    spec = CalibrationSpec(**cfg.calibration)
    return heads.fit_calibration(heads.logits(head, val), val.labels, **spec.fit_kwargs())
