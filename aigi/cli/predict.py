"""`aigi predict`: score image files with a trained head, extracting features on the fly with its recorded backbone."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from aigi.cli._options import (
    REPORT_FILES,
    add_device_argument,
    add_out_argument,
    add_where_argument,
    cache_inputs,
    run_input,
)
from aigi.common import outputs
from aigi.pipeline.predict import PredictOptions, check_output, predict_cache, predict_images, write_table

SHOWN_CACHE_ROWS = 20


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `aigi predict`."""
    p = subparsers.add_parser(
        "predict",
        help="score images with a trained head (features extracted on the fly)",
        description="Score image files or folders with a head trained by `aigi train`. Features are extracted with "
        "the backbone and preprocessing the head's training cache recorded; the weights must reproduce its "
        "fingerprint. Prints the calibrated P(fake) per image and the verdict (real / fake, or unsure inside the "
        "head's abstain band; see `aigi calibrate`) and, for expert heads, the gates and per-expert scores. Unreadable "
        "files are reported and skipped (exit code 0; 2 when no file could be read).",
    )
    p.add_argument("head_dir", help="RUN_DIR written by `aigi train`, or a packed head (`aigi head pack`: HEAD.aigi)")
    p.add_argument("images", nargs="*", help="image files and/or folders (searched recursively)")
    p.add_argument(
        "--cache",
        action="append",
        default=[],
        metavar="PATH",
        help="score this cache's rows instead of images (features as cached; streamed when they exceed the budget)",
    )
    add_where_argument(p, "with --cache: row filters")
    p.add_argument(
        "--stream", default=PredictOptions.stream, help="with --cache: stream the features (true, false, auto)"
    )
    p.add_argument(
        "--memory-budget",
        help="with --cache: memory for features, e.g. 1.5GB (default: half of what the process may still take)",
    )
    p.add_argument(
        "--weights",
        action="append",
        default=[],
        metavar="[ALIAS=]PATH",
        help="backbone weights file or name, as for `aigi extract --weights` (ALIAS=PATH per backbone when the head "
        "reads several)",
    )
    p.add_argument(
        "--expert-weights",
        metavar="DOMAIN=W,...",
        help="router heads: manual semantic-expert weights, e.g. human=0.7,animal=0.3 (artifact gate stays 1)",
    )
    add_device_argument(p)
    p.add_argument("--batch-size", type=int, default=PredictOptions.batch_size)
    add_out_argument(p, metavar="FILE", text="write all rows (scores, gates, errors) to this .csv, .json or .parquet "
                     "file", required=False)  # fmt: skip
    p.add_argument("--json", action="store_true", help="print every row as JSON (a list of records) instead of a table")
    p.add_argument(
        "--report",
        metavar="DIR",
        help="also write DIR/report.html (a gallery of thumbnails sortable by P(fake), verdicts marked), report.md "
        "and scores.csv (an existing DIR needs --overwrite)",
    )
    p.set_defaults(func=run)
    return p


def options_from_args(args: argparse.Namespace) -> PredictOptions:
    """The predict options the arguments ask for."""
    return PredictOptions(
        weights=tuple(args.weights),
        expert_weights=args.expert_weights,
        device=args.device,
        batch_size=args.batch_size,
        where=tuple(args.where),
        stream=args.stream,
        memory_budget=args.memory_budget,
    )


def run(args: argparse.Namespace) -> int:
    """Entry point of `aigi predict`."""
    options = options_from_args(args)
    check_output(args.out)
    out, report = scores_output(args), report_output(args)
    if not args.images and not args.cache:
        raise ValueError("give image files/folders to score, or --cache PATH to score cached features")
    if args.cache:
        if report is not None:
            raise ValueError("--report draws a gallery of the scored image files; with --cache write the rows with "
                             "-o FILE.csv (or score the images themselves)")  # fmt: skip
        return report_cache(args, options, out)
    table = predict_images(args.head_dir, args.images, options)
    good, bad = table[table["error"] == ""], table[table["error"] != ""]
    if args.json:
        print(table.to_json(orient="records", indent=1))
    elif not (args.out or args.report):  # with a file to read, stdout keeps to the summary
        extra = [c for c in table.columns if c.startswith(("gate.", "expert."))]
        with pd.option_context("display.max_colwidth", 60, "display.width", 120):
            print(good[["path", "p_fake", "verdict", *extra]].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if out is not None:
        with outputs.committed(out):
            write_table(table, args.out)
        print(f"wrote {len(table)} rows to {args.out}", file=sys.stderr)
    if report is not None:
        from aigi.pipeline.report import write_predict_report

        with outputs.committed(report) as stage:
            write_predict_report(stage, table, head=str(args.head_dir))
        print(f"report: {Path(args.report) / 'report.html'}", file=sys.stderr)
    counts = good["verdict"].value_counts()
    verdicts = ", ".join(
        f"{int(counts.get(v, 0))} {v}" for v in ("fake", "real", "unsure") if v in counts or v != "unsure"
    )
    print(f"{len(good)} image(s) scored, {len(bad)} skipped ({verdicts})", file=sys.stderr)
    return 0


def scores_output(args: argparse.Namespace) -> outputs.Output | None:
    """The checked -o file of `aigi predict` (never the run's files, a cache or an image it scores), or None."""
    if not args.out:
        return None
    images = [outputs.Input(Path(i), "the image", reserved=()) for i in args.images]
    inputs = run_input(args.head_dir) + cache_inputs(args.cache) + images
    return outputs.check_output(args.out, kind="file", inputs=inputs, overwrite=args.overwrite)


def report_output(args: argparse.Namespace) -> outputs.Output | None:
    """The checked --report folder of `aigi predict` (never the run's files, a cache or an image it scores), or None."""
    if not args.report:
        return None
    images = [outputs.Input(Path(i), "the image", reserved=()) for i in args.images]
    inputs = run_input(args.head_dir) + cache_inputs(args.cache) + images
    return outputs.check_output(args.report, kind="folder", inputs=inputs, overwrite=args.overwrite, owned=REPORT_FILES,
                                option="--report")  # fmt: skip


def report_cache(args: argparse.Namespace, options: PredictOptions, out: outputs.Output | None) -> int:
    """`aigi predict --cache`: score the cache's rows, show the first of them, write them all to -o."""
    paths = [c.partition("=")[2] if "=" in c else c for c in args.cache]
    if len(paths) != 1:
        raise ValueError("--cache: give one cache (join several with `aigi eval`, which follows the run's config)")
    scored = predict_cache(args.head_dir, paths[0], options)
    table = scored.table
    print(f"data: {scored.rows:,} rows {scored.rows_held}", file=sys.stderr)
    if args.json:
        print(table.to_json(orient="records", indent=1))
    elif not args.out:
        cols = [c for c in ("image_id", "source", "label", "p_fake", "verdict") if c in table.columns]
        with pd.option_context("display.max_colwidth", 40, "display.width", 120):
            shown = table[cols].head(SHOWN_CACHE_ROWS)
            print(shown.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        if len(table) > SHOWN_CACHE_ROWS:
            print(f"... {len(table) - SHOWN_CACHE_ROWS:,} more rows (write them all with -o FILE.csv)")
    if out is not None:
        with outputs.committed(out):
            write_table(table, args.out)
        print(f"wrote {len(table)} rows to {args.out}", file=sys.stderr)
    not_scored = int((table["error"] != "").sum())
    print(f"{len(table) - not_scored:,} cached row(s) scored" + (f", {not_scored} not scored (NaN/inf features)"
          if not_scored else ""), file=sys.stderr)  # fmt: skip
    return 0
