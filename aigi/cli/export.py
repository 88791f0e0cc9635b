"""`aigi export npy`: write a cache's vector feature as a UAR-style folder of `.npy` files."""

from __future__ import annotations

import argparse
from pathlib import Path

from aigi.cli._options import EXPORT_FILES, add_out_argument, cache_inputs
from aigi.common.outputs import check_output, committed
from aigi.pipeline.importers import ExportOptions, export_npy


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `aigi export npy`."""
    exp = subparsers.add_parser("export", help="export cached features to other layouts")
    kinds = exp.add_subparsers(dest="kind", metavar="KIND", required=True)
    p = kinds.add_parser("npy", help="write <source>/0_real|1_fake/<stem>.npy, (1, D) float32 each")
    p.add_argument("cache", type=Path, help="a cache directory, compacted .h5 or Parquet dataset")
    add_out_argument(p, metavar="DIR", text="folder to write (a new or empty one; --overwrite replaces an export)")
    p.add_argument("--feature", help="feature to export (default: probe, else the first)")
    p.add_argument("--view", default=ExportOptions.view, help="view to export (default %(default)s)")
    p.set_defaults(func=run)
    return exp


def run(args: argparse.Namespace) -> int:
    """Entry point of `aigi export npy`."""
    out = check_output(args.out, kind="folder", inputs=cache_inputs([args.cache]), overwrite=args.overwrite,
                       owned=EXPORT_FILES)  # fmt: skip
    with committed(out) as stage:
        n = export_npy(args.cache, stage, ExportOptions(feature=args.feature, view=args.view))
    print(f"wrote {n} .npy files under {args.out}")
    return 0
