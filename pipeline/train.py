"""The `aigi train` stage: run config + feature cache(s) -> a fitted head in RUN_DIR; also the row loading eval uses."""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

TRAIN_HELP = """\
Trains the head a run config names on the rows of its cache(s) with split == train and writes RUN_DIR/head.json +
head.safetensors (with the cache fingerprints, extractor spec, resolved config, training history and validation
metrics) and RUN_DIR/config.yaml (the resolved config; `aigi train RUN_DIR/config.yaml` replays the run).

Validation: the rows with split == val when the cache has any; otherwise a seeded data.val_fraction (default 10%)
of the training pairs (pair_id, or image_id for unpaired rows), so a real and its aligned fakes stay together.
Paths in the config and on the command line are relative to the working directory.
"""

GROUP_COLUMNS = ("source", "domain")


# ----------------------------------------------------------------------------------------------------------------
# rows: shared by train and eval


def open_caches(paths: Mapping[str, str]) -> dict[str, Any]:
    """Open every cache of a run: alias -> `cache.Cache`."""
    import cache

    if not paths:
        raise ValueError("the run names no cache: set data.caches in the config or pass --cache PATH")
    return {alias: cache.open(path) for alias, path in paths.items()}


def feature_plan(caches: Mapping[str, Any], inputs: Sequence[str]) -> dict[str, list[str]]:
    """Which features to read from which cache: `alias/name` picks a cache, a bare name must be in exactly one."""
    plan: dict[str, list[str]] = {alias: [] for alias in caches}
    for name in inputs:
        alias, sep, feat = name.partition("/")
        if sep and alias in caches:
            owners = [alias] if feat in caches[alias].features else []
        else:
            feat, owners = name, [a for a, c in caches.items() if name in c.features]
        if len(owners) != 1:
            have = {a: sorted(c.features) for a, c in caches.items()}
            what = "is in no cache" if not owners else f"is in several caches ({owners}); name it ALIAS/{feat}"
            raise ValueError(f"head input {name!r} {what}; the caches hold {have}")
        plan[owners[0]].append(feat)
    return {alias: feats for alias, feats in plan.items() if feats}


def load_rows(caches: Mapping[str, Any], *, inputs: Sequence[str], where: Mapping[str, Any], domains: str = "") -> Any:
    """The rows matching `where` with the head's input features, joined across caches on (image_id, view).

    `domains` (data.domains) names an `aigi domains` table whose domain replaces each row's `domain` by image_id.
    """
    import cache

    plan = feature_plan(caches, inputs)
    sets = {alias: caches[alias].load(feats, where=dict(where)) for alias, feats in plan.items()}
    fs = next(iter(sets.values())) if len(sets) == 1 else cache.join(sets)
    missing = [name for name in inputs if name not in fs.features]
    if missing:
        raise ValueError(
            f"after joining {list(sets)} the features are {sorted(fs.features)}; inputs {missing} are "
            "missing (name them ALIAS/FEATURE when two caches share a name)"
        )
    if domains:
        from pipeline.domains import attach_domains

        fs = attach_domains(fs, domains)
    return fs


def train_val_rows(caches: Mapping[str, Any], data: Any, *, inputs: Sequence[str]) -> tuple[Any, Any, str]:
    """Training and validation FeatureSets of a run, following the validation policy (see TRAIN_HELP).

    Returns:
        (train, val or None, a sentence describing where val came from).
    """
    import cache

    col = data.split_column
    rows = load_rows(caches, inputs=inputs, where={**data.where, col: [data.train, data.val]}, domains=data.domains)
    split = rows.column(col).astype(str)
    train, val = rows.subset(split == data.train), rows.subset(split == data.val)
    if len(train) == 0:
        first = next(iter(caches.values()))
        present = sorted(first.meta()[col].astype(str).unique().tolist()) if col in first.meta().columns else []
        raise ValueError(
            f"no training rows: no row of {list(caches)} has {col} == {data.train!r} with "
            f"{dict(data.where)} (values present: {present}); assign splits at import/index time"
        )
    if len(val):
        return train, val, f"{len(val)} rows with {col} == {data.val!r}"
    if data.val_fraction <= 0:
        return train, None, "none (data.val_fraction is 0)"
    ratios = {"train": 1.0 - data.val_fraction, "val": data.val_fraction}
    cut = cache.assign_splits(train.meta, ratios, seed=data.val_seed)["split"].astype(str).to_numpy()
    if not (cut == "val").any() or not (cut == "train").any():
        return train, None, f"none (too few training pairs for a {data.val_fraction:g} validation share)"
    how = (
        f"{int((cut == 'val').sum())} rows: a seeded {data.val_fraction:g} of the training pairs (seed {data.val_seed})"
    )
    return train.subset(cut == "train"), train.subset(cut == "val"), how


def groups_of(fs: Any) -> dict[str, np.ndarray]:
    """Per-row string columns multi-stage heads select rows by."""
    return {c: fs.column(c).astype(str) for c in GROUP_COLUMNS if c in fs.meta.columns}


# ----------------------------------------------------------------------------------------------------------------
# training


def train_run(cfg: Any, run_dir: str | Path) -> dict[str, Any]:
    """Fit the head of `cfg` (a `pipeline.config.RunConfig`) and save it with its metadata in `run_dir`.

    Returns:
        A summary: head, rows, seconds, val metrics, run_dir.
    """
    import heads
    from pipeline.config import save_config, to_dict
    from pipeline.evaluate import binary_metrics

    caches = open_caches(cfg.data.caches)
    train, val, val_how = train_val_rows(caches, cfg.data, inputs=cfg.head.inputs)
    fit_cfg = heads.FitConfig(**cfg.fit)
    head = heads.build(cfg.head.name, dims=train.dims, seed=fit_cfg.seed, **cfg.head.params)
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
    )
    seconds = time.perf_counter() - start
    val_metrics = None
    if val is not None:
        val_metrics = binary_metrics(val.labels, heads.predict(head, val.features), threshold=0.5)
    meta = {
        "caches": {
            a: {"path": str(c.path), "fingerprint": c.fingerprint, "format": c.format} for a, c in caches.items()
        },
        "fingerprints": {a: c.fingerprint for a, c in caches.items()},
        "extractor_spec": {a: c.spec for a, c in caches.items()},
        "run_config": to_dict(cfg),
        "fit": dict(cfg.fit),
        "history": history,
        "train_rows": len(train),
        "val_rows": 0 if val is None else len(val),
        "val_policy": val_how,
        "val_metrics": val_metrics,
    }
    run_dir = Path(run_dir)
    heads.save(head, run_dir, meta=meta)
    save_config(cfg, run_dir)
    return {
        "head": cfg.head.name,
        "train_rows": len(train),
        "val_rows": meta["val_rows"],
        "seconds": seconds,
        "val_metrics": val_metrics,
        "run_dir": str(run_dir),
        "dims": train.dims,
    }


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `aigi train CONFIG.yaml [--cache PATH ...] [--set key=value ...] -o RUN_DIR`."""
    p = subparsers.add_parser(
        "train",
        help="train a head on cached features from a YAML run config (configs/uar.yaml, configs/univfd.yaml, ...)",
        description=TRAIN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", type=Path, help="YAML run config (head, fit, data, eval sections)")
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
    p.add_argument("-o", "--out", type=Path, required=True, metavar="RUN_DIR", help="where to write the head")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of `aigi train`."""
    from pipeline.config import load_config

    cfg = load_config(args.config, overrides=args.overrides, caches=args.cache)
    s = train_run(cfg, args.out)
    dims = ", ".join(f"{k}: {'x'.join(map(str, v))}" for k, v in s["dims"].items())
    vm = s["val_metrics"]
    val = (
        "no validation"
        if vm is None
        else (
            f"val n={vm['n']} ACC {100 * vm['acc']:.2f} AP " + ("n/a" if vm["ap"] is None else f"{100 * vm['ap']:.2f}")
        )
    )
    print(f"train: {s['head']} ({dims}) on {s['train_rows']} rows in {s['seconds']:.1f} s; {val} -> {args.out}")
    return 0
