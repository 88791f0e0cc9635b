"""`aigi import uar`: import a shipped `.npy` feature folder (UAR layout) into a cache."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aigi.cli._options import add_split_arguments, cache_output
from aigi.common.outputs import Input
from aigi.pipeline.importers import DTYPES, FORMATS, ImportOptions, import_uar


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `aigi import uar`."""
    imp = subparsers.add_parser("import", help="import shipped feature sets into a cache")
    kinds = imp.add_subparsers(dest="kind", metavar="KIND", required=True)
    p = kinds.add_parser(
        "uar",
        help="UAR layout: **/0_real/*.npy, **/1_fake/*.npy, each (1, D) or (D,)",
        description="Import a UAR-style folder of .npy features. The first folder under DIR is the "
        "source of its rows (reals and fakes alike); a real and a fake with the same file stem in "
        "one folder share a pair_id. Appends to an existing cache; re-running resumes.",
    )
    p.add_argument("folder", type=Path, help="the folder to import")
    p.add_argument("--cache", type=Path, required=True, help="cache directory to create or append to")
    p.add_argument("--source", help="source when 0_real/1_fake sit directly in FOLDER (default: uar)")
    add_split_arguments(p)
    p.add_argument("--format", choices=FORMATS, help="shard format of a new cache (default h5)")
    p.add_argument(
        "--shard-size", type=int, default=ImportOptions.shard_size, help="rows per shard (default %(default)s)"
    )
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        help="stored dtype of a new cache (default float32: values stay exactly those of the .npy files)",
    )
    p.add_argument("--extractor", help="extractor name recorded in the spec (default: aim-v1-3b for 3072-d)")
    p.set_defaults(func=run)
    return imp


def run(args: argparse.Namespace) -> int:
    """Entry point of `aigi import uar`."""
    options = ImportOptions(
        source=args.source,
        split=args.split,
        split_ratio=args.split_ratio,
        seed=args.seed,
        fmt=args.format,
        shard_size=args.shard_size,
        dtype=args.dtype,
        extractor=args.extractor,
    )
    cache = cache_output(args.cache, [Input(args.folder, "the import folder")])
    stats = import_uar(args.folder, cache, options)
    print(
        f"imported {stats['written']} of {stats['files']} files ({stats['dim']}-d) into {args.cache}"
        + (f"; {stats['skipped_present']} already present" if stats["skipped_present"] else "")
    )
    if stats["failed"]:
        shown = "; ".join(e["reason"] for e in stats["failed"][:5])
        print(
            f"skipped {len(stats['failed'])} file(s) that could not be imported (recorded in the cache's "
            f"shards/*.errors.json): {shown}",
            file=sys.stderr,
        )
    return 0
