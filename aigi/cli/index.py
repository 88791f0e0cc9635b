"""`aigi index`: build a manifest (one row per image: sha256 id, label, source, split, size) from a folder layout."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aigi.cli._options import add_out_argument, add_split_arguments
from aigi.common.outputs import Input, check_output, committed
from aigi.pipeline.index import LAYOUTS, IndexOptions, IndexResult, index_images


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `aigi index`."""
    p = subparsers.add_parser(
        "index", help="build manifest.parquet from a folder of images", description=__doc__.split(":", 1)[1].strip()
    )
    p.add_argument("root", type=Path, help="the dataset folder")
    add_out_argument(p, metavar="MANIFEST", text="manifest file to write (.parquet)")
    p.add_argument(
        "--layout",
        choices=LAYOUTS,
        default=IndexOptions.layout,
        help="uar: <source>/0_real|1_fake; genimage: <gen>/train|val/ai|nature; flat: real/ + fake/; "
        "csv: --csv FILE with path,label[,source,domain,split,pair_id]; plain: every image is real "
        "(default: auto, plain when no other layout is found)",
    )
    p.add_argument("--csv", type=Path, help="the CSV of --layout csv (paths relative to ROOT)")
    p.add_argument("--source", help="source of rows not inside a generator folder (default: ROOT's name)")
    p.add_argument("--domain", help="semantic domain of every row without one (human, animal, object, ...)")
    p.add_argument(
        "--pair-by-stem",
        action="store_true",
        help="a fake whose file stem equals a real's in the same folder is that real's aligned fake",
    )
    p.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="also index files outside ROOT (CSV paths with .. or absolute, symlinks pointing out of ROOT)",
    )
    add_split_arguments(p)
    p.set_defaults(func=run)
    return p


def options_from_args(args: argparse.Namespace) -> IndexOptions:
    """The index options the arguments ask for."""
    return IndexOptions(
        layout=args.layout,
        csv=args.csv,
        source=args.source,
        domain=args.domain or "",
        pair_by_stem=args.pair_by_stem,
        allow_outside_root=args.allow_outside_root,
        split=args.split,
        split_ratio=args.split_ratio,
        seed=args.seed,
    )


def run(args: argparse.Namespace) -> int:
    """Entry point of `aigi index`."""
    inputs = [Input(args.root, "the image folder", reserved=())] + ([Input(args.csv, "the CSV")] if args.csv else [])
    out = check_output(args.out, kind="file", inputs=inputs, overwrite=args.overwrite)
    with committed(out):
        report(index_images(args.root, args.out, options_from_args(args)))
    return 0


def report(result: IndexResult) -> None:
    """The counts by label, source and split on standard output; duplicates and skipped files on standard error."""
    df = result.manifest
    real, fake = int((df["label"] == 0).sum()), int((df["label"] == 1).sum())
    print(f"wrote {result.path}: {len(df)} images ({real} real, {fake} fake)")
    print("by source: " + ", ".join(f"{k}={v}" for k, v in df["source"].value_counts().sort_index().items()))
    if (df["split"] != "").any():
        print("by split: " + ", ".join(f"{k or '-'}={v}" for k, v in df["split"].value_counts().sort_index().items()))
    if result.duplicates:
        print(f"dropped {result.duplicates} duplicate file(s) (same bytes as an earlier image)", file=sys.stderr)
    if result.skipped:
        shown = "; ".join(f"{p} ({r})" for p, r in result.skipped[:5])
        print(f"skipped {len(result.skipped)} file(s) that are not readable images, e.g. {shown}", file=sys.stderr)
