"""The train stage: run config + feature cache(s) -> a fitted head in RUN_DIR (rows: `pipeline.rows`)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aigi.pipeline.config import RunConfig
from aigi.pipeline.timing import Stages


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
    cfg: RunConfig, run_dir: str | Path, options: TrainOptions = TrainOptions(), *, stages: Stages | None = None
) -> TrainResult:
    """Fit the head of `cfg` (a `pipeline.config.RunConfig`) and save it with its metadata in `run_dir`.

    Rows stay in memory or are streamed from the cache as `data.stream` / `data.memory_budget` decide
    (`pipeline.rows.hold_choice`). In an ablation worker (`pipeline.streaming.REUSE`) the rows are loaded once per
    process and stages that heads share (the frozen experts of gating / concat / mean) are trained once.

    Args:
        cfg: the run config.
        run_dir: where head.json, head.safetensors and config.yaml are written (replaced).
        options: `--init` and `--weights` (`TrainOptions`).
        stages: a timer whose marks the caller started (`aigi train` times reading the config too).
    """
    from aigi import heads
    from aigi.common.grammar import parse_aliased
    from aigi.pipeline import streaming
    from aigi.pipeline.config import save_config, to_dict
    from aigi.pipeline.metrics import binary_metrics
    from aigi.pipeline.rows import groups_of, open_caches, train_val_rows
    from aigi.pipeline.tail import frozen_tail

    stages = stages or Stages(start=False)
    resolved = to_dict(cfg)
    caches = open_caches(cfg.data.caches)
    stages.mark("open")
    train, val, val_how = train_val_rows(caches, cfg.data, inputs=cfg.head.inputs)
    if cfg.calibration and val is None:
        raise ValueError(
            f"the config asks for calibration but the run has no validation rows ({val_how}); set "
            "data.val_fraction (e.g. --set data.val_fraction=0.1) or give the cache rows with split == val"
        )
    val = _val_in_memory(val, cfg.data.memory_budget)
    stages.mark("load")
    fit_cfg = heads.FitConfig(**cfg.fit)
    specs = {a: c.spec for a, c in caches.items()}
    frozen = frozen_tail(cfg.head.name, cfg.head.inputs, specs, parse_aliased(list(options.weights), list(caches)))
    head, started_from = initial_head(cfg, train.dims, seed=fit_cfg.seed, init=options.init, frozen=frozen)
    share = {}
    if streaming.REUSE:
        share = {"stage_store": streaming.stage_store(), "data_key": repr((streaming.cache_key(caches), cfg.data))}
    start = time.perf_counter()
    history = heads.fit(
        head,
        train.features,
        train.labels,
        cfg=fit_cfg,
        X_val=None if val is None else val.features,
        y_val=None if val is None else val.labels,
        groups=groups_of(train),
        groups_val=None if val is None else groups_of(val),
        **share,
    )
    seconds = time.perf_counter() - start
    val_metrics = None
    if val is not None:
        val_metrics = binary_metrics(val.labels, heads.predict(head, val.features), threshold=0.5)
    stages.mark("fit")
    meta = _run_meta(cfg, caches, resolved, history=history, train=train, val=val, val_how=val_how,
                     val_metrics=val_metrics, started_from=started_from)  # fmt: skip
    calibration = _fit_calibration(cfg, head, val)
    run_dir = Path(run_dir)
    heads.save(head, run_dir, meta=meta, calibration=calibration)
    save_config(resolved, run_dir)
    stages.mark("write")
    return TrainResult(
        head=cfg.head.name,
        train_rows=len(train),
        val_rows=meta["val_rows"],
        seconds=seconds,
        val_metrics=val_metrics,
        run_dir=run_dir,
        dims=train.dims,
        held=meta["rows_held"],
        stages=dict(stages.seconds),
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
    return heads.fit_calibration(heads.logits(head, val.features), val.labels, **spec.fit_kwargs())


def _val_in_memory(val: Any, budget: Any) -> Any:
    """Streamed validation rows small enough for a quarter of the budget, loaded (scored every epoch)."""
    from aigi.pipeline.streaming import StreamedSet, parse_budget

    if not isinstance(val, StreamedSet) or val.stream.nbytes("float32") * 4 > parse_budget(budget):
        return val
    from aigi import cache

    return cache.FeatureSet(val.stream.load("float32"), val.meta)
