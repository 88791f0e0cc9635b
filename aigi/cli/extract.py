"""`aigi extract`: extract frozen-backbone features of a manifest's images into a feature cache."""

from __future__ import annotations

import argparse

from aigi.cli._options import EXTRACT_WEIGHTS_HELP, add_device_argument, cache_output
from aigi.common.grammar import VIEW_FORMS
from aigi.common.outputs import Input
from aigi.pipeline.extract import (
    DECODES,
    DTYPES,
    FORMATS,
    STORE_DTYPES,
    ExtractOptions,
    ExtractResult,
    extract_features,
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `aigi extract`."""
    p = subparsers.add_parser(
        "extract",
        help="extract backbone features of a manifest's images into a cache",
        description="Extract frozen-backbone features into a feature cache. Batched, resumable (finished shards are "
        "skipped), fingerprinted; unreadable images are recorded in shards/*.errors.json and the run goes on.",
    )
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `aigi extract`, their defaults those of `ExtractOptions`."""
    p.add_argument("--manifest", required=True, help="manifest.parquet from `aigi index` (or `aigi fakes`)")
    p.add_argument("--root", help="folder the manifest's paths are relative to (default: the manifest's folder)")
    p.add_argument("--backbone", required=True, help="extractor, e.g. clip-l14, aim-v1-3b, timm:vit_base_patch16_224")
    p.add_argument("--weights", help=EXTRACT_WEIGHTS_HELP)
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="extract with a randomly initialised backbone on purpose (tests, benchmarks); without it --weights is "
        "required",
    )
    p.add_argument("--features", help="comma-separated feature names, e.g. l23.cls,proj (default: the backbone's)")
    p.add_argument("--preprocess", help="resize | center_crop | rich_patch (default: the backbone's)")
    p.add_argument(
        "--views",
        default=",".join(ExtractOptions.views),
        help=f"comma-separated views: {VIEW_FORMS} (e.g. orig,jpeg:75)",
    )
    p.add_argument("--cache", required=True, help="cache directory to create or extend")
    p.add_argument("--format", default=ExtractOptions.fmt, choices=FORMATS, help="shard format")
    p.add_argument(
        "--shard-size",
        type=int,
        default=ExtractOptions.shard_size,
        help="rows per shard (the unit of resume and distribution)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=ExtractOptions.batch_size,
        help="images per forward (on a GPU as many as memory allows; a forward that runs out of memory is halved)",
    )
    p.add_argument(
        "--num-workers",
        default=ExtractOptions.num_workers,
        help="processes decoding images beside the forward: auto (this device's share of the cores: all of them on "
        "a CPU, one fewer on a GPU, at most 32) or a count (0: decode between forwards)",
    )
    add_device_argument(p)
    p.add_argument(
        "--devices",
        help="one worker per device on a local dask cluster, splitting the shards: all (every visible GPU) or a "
        "list, e.g. cuda:0,cuda:1",
    )
    p.add_argument(
        "--decode",
        default=ExtractOptions.decode,
        choices=DECODES,
        help="where JPEGs are decoded: device (batched nvjpeg on a GPU), cpu (Pillow in the workers), auto (device "
        "on a GPU); other files, views and JPEGs the device refuses use Pillow",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the backbone (pays off on long GPU runs)")
    p.add_argument("--dtype", default=ExtractOptions.dtype, choices=DTYPES, help="compute dtype")
    p.add_argument(
        "--store-dtype",
        default=ExtractOptions.store_dtype,
        choices=STORE_DTYPES,
        help="dtype the cache stores (recorded in the fingerprint); float32 keeps the forward's values bit for bit",
    )
    p.add_argument("--workers", type=int, default=0, help="run shards on a local dask cluster of N processes")
    p.add_argument("--scheduler", help="run shards on an existing dask cluster, e.g. tcp://host:8786")


def options_from_args(args: argparse.Namespace) -> ExtractOptions:
    """The extract options the arguments ask for."""
    return ExtractOptions(
        manifest=args.manifest,
        backbone=args.backbone,
        cache=args.cache,
        root=args.root,
        weights=args.weights,
        random_weights=args.random_weights,
        features=tuple(f.strip() for f in args.features.split(",") if f.strip()) if args.features else None,
        preprocess=args.preprocess,
        views=tuple(args.views.split(",")),
        fmt=args.format,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
        dtype=args.dtype,
        store_dtype=args.store_dtype,
        workers=args.workers,
        scheduler=args.scheduler,
        decode=args.decode,
        compile=args.compile,
        devices=args.devices,
    )


def run(args: argparse.Namespace) -> int:
    """Entry point of `aigi extract`."""
    inputs = [Input(f, "the file") for f in (args.manifest, args.weights) if f]
    cache_output(args.cache, inputs)
    print(summary_line(extract_features(options_from_args(args))))
    return 0


def summary_line(result: ExtractResult) -> str:
    """The one line `aigi extract` prints at the end: rows, shards, failures, speed."""
    other = f", {result.elsewhere} being extracted by another running process" if result.elsewhere else ""
    return (
        f"extracted {result.rows} rows into {len(result.done)} shard(s) ({result.already_done} already done{other}), "
        f"{result.errors} image(s) failed (see shards/*.errors.json), {result.rate:.1f} img/s "
        f"({result.extract_rate:.1f} img/s after {result.startup_seconds:.1f} s of start-up); cache: {result.cache}"
    )
