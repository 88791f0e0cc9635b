"""`aigi train CONFIG -o RUN_DIR`: fit the head of a run config on cached features (`pipeline.train`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from aigi.cli._options import (
    RUN_FILES,
    add_cache_argument,
    add_out_argument,
    add_set_argument,
    add_weights_argument,
    cache_inputs,
    run_input,
)
from aigi.common.outputs import Input, check_output, committed

TRAIN_HELP = """\
Trains the head a run config names on the rows of its cache(s) with split == train and writes RUN_DIR/head.json +
head.safetensors (with the cache fingerprints, extractor spec, resolved config, training history and validation
metrics, the code's git revision or version) and RUN_DIR/config.yaml (the resolved config, headed by that revision;
`aigi train RUN_DIR/config.yaml` replays the run).

Validation: the rows with split == val when the cache has any; otherwise a seeded data.val_fraction (default 10%)
of the training pairs (pair_id, or image_id for unpaired rows), so a real and its aligned fakes stay together.
Paths in the config and on the command line are relative to the working directory.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `aigi train CONFIG.yaml [--cache PATH ...] [--set key=value ...] -o RUN_DIR`."""
    p = subparsers.add_parser(
        "train",
        help="train a head on cached features from a YAML run config (configs/uar.yaml, configs/univfd.yaml, ...)",
        description=TRAIN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", type=Path, help="YAML run config (head, fit, data, eval sections) or a preset name (uar)")
    add_cache_argument(p, text="replace the config's cache(s): bare paths in order, ALIAS=PATH by name (repeatable)")
    add_set_argument(p)
    add_weights_argument(p)
    add_out_argument(p, metavar="RUN_DIR", text="where to write the head")
    p.add_argument(
        "--init",
        type=Path,
        metavar="HEAD_DIR",
        help="start from a saved head (its config and weights) instead of a new one, e.g. an imported GAPL head "
        "whose stage 2 is untrained; the config's head.name and inputs must match it",
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Entry point of `aigi train`."""
    from aigi.pipeline.config import load_config
    from aigi.pipeline.timing import Stages
    from aigi.pipeline.train import TrainOptions, train_run

    stages = Stages(start=not getattr(args, "nested", False))  # a nested command's process started long ago
    cfg = load_config(args.config, overrides=args.overrides, caches=args.cache)
    inputs = cache_inputs(cfg.data.caches.values()) + ([Input(Path(cfg.data.domains), "the domains table")]
                                                       if cfg.data.domains else [])  # fmt: skip
    inputs += run_input(args.init) if args.init else []
    out = check_output(args.out, kind="folder", inputs=inputs, overwrite=args.overwrite, owned=RUN_FILES)
    stages.mark("config")
    with committed(out) as stage:
        s = train_run(cfg, stage, TrainOptions(init=args.init, weights=tuple(args.weights)), stages=stages)
    dims = ", ".join(f"{k}: {'x'.join(map(str, v))}" for k, v in s.dims.items())
    vm = s.val_metrics
    val = (
        "no validation"
        if vm is None
        else (
            f"val n={vm['n']} ACC {100 * vm['acc']:.2f} AP " + ("n/a" if vm["ap"] is None else f"{100 * vm['ap']:.2f}")
        )
    )
    print(f"data: {s.train_rows} training rows {s.held}")
    print(f"train: {s.head} ({dims}) on {s.train_rows} rows in {s.seconds:.1f} s; {val} -> {args.out}")
    print(f"time: {stages.line()}")
    return 0
