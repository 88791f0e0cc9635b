"""The `aigi train` stage: run config + feature cache(s) -> a fitted head in RUN_DIR (rows: `pipeline.rows`)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aigi.cli._options import add_weights_argument  # TEMPORARY until the command line moves to aigi/cli

TRAIN_HELP = """\
Trains the head a run config names on the rows of its cache(s) with split == train and writes RUN_DIR/head.json +
head.safetensors (with the cache fingerprints, extractor spec, resolved config, training history and validation
metrics, the code's git revision or version) and RUN_DIR/config.yaml (the resolved config, headed by that revision;
`aigi train RUN_DIR/config.yaml` replays the run).

Validation: the rows with split == val when the cache has any; otherwise a seeded data.val_fraction (default 10%)
of the training pairs (pair_id, or image_id for unpaired rows), so a real and its aligned fakes stay together.
Paths in the config and on the command line are relative to the working directory.
"""


def check_run_dir(run_dir: Path, *, overwrite: bool) -> None:
    """Refuse to replace a trained head unless asked."""
    if run_dir.is_file():
        raise FileExistsError(f"-o {run_dir} is a file; RUN_DIR is the folder the head is written to")
    if not overwrite and any((run_dir / name).exists() for name in ("head.json", "head.safetensors")):
        raise FileExistsError(
            f"{run_dir} already holds a trained head; pass --overwrite to replace it, or choose another -o RUN_DIR"
        )


def initial_head(
    cfg: Any, dims: dict, *, seed: int, init: str | Path | None, frozen: Any = None
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
    cfg: Any, run_dir: str | Path, *, init: str | Path | None = None, stages: Any = None, weights: Sequence[str] = ()
) -> dict[str, Any]:
    """Fit the head of `cfg` (a `pipeline.config.RunConfig`) and save it with its metadata in `run_dir`.

    Rows stay in memory or are streamed from the cache as `data.stream` / `data.memory_budget` decide
    (`pipeline.rows.hold_choice`). In an ablation worker (`pipeline.streaming.REUSE`) the rows are loaded once per
    process and stages that heads share (the frozen experts of gating / concat / mean) are trained once.
    `weights` (`PATH` or `ALIAS=PATH` items): the backbone weights a `tail_*` head re-runs its last blocks with.

    Returns:
        A summary: head, rows, seconds, val metrics, run_dir, how the rows were held, stage seconds.
    """
    from aigi import heads
    from aigi.common.grammar import parse_aliased
    from aigi.pipeline import streaming
    from aigi.pipeline.config import save_config, to_dict
    from aigi.pipeline.metrics import binary_metrics
    from aigi.pipeline.rows import groups_of, open_caches, train_val_rows
    from aigi.pipeline.tail import frozen_tail
    from aigi.pipeline.timing import Stages

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
    frozen = frozen_tail(cfg.head.name, cfg.head.inputs, specs, parse_aliased(list(weights), list(caches)))
    head, started_from = initial_head(cfg, train.dims, seed=fit_cfg.seed, init=init, frozen=frozen)
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
    return {
        "head": cfg.head.name,
        "train_rows": len(train),
        "val_rows": meta["val_rows"],
        "seconds": seconds,
        "val_metrics": val_metrics,
        "run_dir": str(run_dir),
        "dims": train.dims,
        "held": meta["rows_held"],
        "stages": dict(stages.seconds),
    }


def _run_meta(
    cfg: Any,
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


def _fit_calibration(cfg: Any, head: Any, val: Any) -> Any:
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


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `aigi train CONFIG.yaml [--cache PATH ...] [--set key=value ...] -o RUN_DIR`."""
    p = subparsers.add_parser(
        "train",
        help="train a head on cached features from a YAML run config (configs/uar.yaml, configs/univfd.yaml, ...)",
        description=TRAIN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", type=Path, help="YAML run config (head, fit, data, eval sections) or a preset name (uar)")
    p.add_argument(
        "--cache",
        action="append",
        default=[],
        metavar="[ALIAS=]PATH",
        help="replace the config's cache(s): bare paths in order, ALIAS=PATH by name (repeatable)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value by dotted key, YAML-parsed: fit.lr=1e-4, head.inputs=[proj]",
    )
    add_weights_argument(p)
    p.add_argument("-o", "--out", type=Path, required=True, metavar="RUN_DIR", help="where to write the head")
    p.add_argument("--overwrite", action="store_true", help="replace the head already in RUN_DIR")
    p.add_argument(
        "--init",
        type=Path,
        metavar="HEAD_DIR",
        help="start from a saved head (its config and weights) instead of a new one, e.g. an imported GAPL head "
        "whose stage 2 is untrained; the config's head.name and inputs must match it",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of `aigi train`."""
    from aigi.pipeline.config import load_config
    from aigi.pipeline.timing import Stages

    stages = Stages()
    check_run_dir(args.out, overwrite=args.overwrite)
    cfg = load_config(args.config, overrides=args.overrides, caches=args.cache)
    stages.mark("config")
    s = train_run(cfg, args.out, init=args.init, stages=stages, weights=args.weights)
    dims = ", ".join(f"{k}: {'x'.join(map(str, v))}" for k, v in s["dims"].items())
    vm = s["val_metrics"]
    val = (
        "no validation"
        if vm is None
        else (
            f"val n={vm['n']} ACC {100 * vm['acc']:.2f} AP " + ("n/a" if vm["ap"] is None else f"{100 * vm['ap']:.2f}")
        )
    )
    print(f"data: {s['train_rows']} training rows {s['held']}")
    print(f"train: {s['head']} ({dims}) on {s['train_rows']} rows in {s['seconds']:.1f} s; {val} -> {args.out}")
    print(f"time: {stages.line()}")
    return 0
