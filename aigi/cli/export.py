"""`aigi export npy`: write a cache's vector feature as a UAR-style folder of `.npy` files."""

from __future__ import annotations

import argparse
from pathlib import Path

from aigi.cli._options import add_output_argument
from aigi.pipeline.importers import ExportOptions, export_npy


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `aigi export npy`."""
    exp = subparsers.add_parser("export", help="export cached features to other layouts")
    kinds = exp.add_subparsers(dest="kind", metavar="KIND", required=True)
    p = kinds.add_parser("npy", help="write <source>/0_real|1_fake/<stem>.npy, (1, D) float32 each")
    p.add_argument("cache", type=Path, help="a cache directory, compacted .h5 or Parquet dataset")
    add_output_argument(p, "folder to write")
    p.add_argument("--feature", help="feature to export (default: probe, else the first)")
    p.add_argument("--view", default=ExportOptions.view, help="view to export (default %(default)s)")
    p.set_defaults(func=run)
    return exp


def run(args: argparse.Namespace) -> int:
    """Entry point of `aigi export npy`."""
    n = export_npy(args.cache, args.output, ExportOptions(feature=args.feature, view=args.view))
    print(f"wrote {n} .npy files under {args.output}")
    return 0
