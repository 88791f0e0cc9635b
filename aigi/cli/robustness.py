"""`aigi robustness RUN_DIR --views V1,V2,... -o REPORT_DIR`: an alias of `aigi eval RUN_DIR --views ...` (one
implementation, `pipeline.robustness`)."""

from __future__ import annotations

import argparse

from aigi.cli._options import (
    add_cache_argument,
    add_out_argument,
    add_run_dir_argument,
    add_split_argument,
    add_weights_argument,
)
from aigi.cli.eval import VIEWS_HELP, run_views


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `aigi robustness RUN_DIR --views V1,V2,... -o REPORT_DIR`, the same as `aigi eval ... --views ...`."""
    p = subparsers.add_parser(
        "robustness",
        help="alias of `aigi eval RUN_DIR --views V1,V2,...`: per-view metrics, verdict flips, strength plot",
        description="The same command as `aigi eval RUN_DIR --views V1,V2,... -o REPORT_DIR`.\n\n" + VIEWS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_dir_argument(p)
    p.add_argument("--views", required=True, help="comma-separated cached views, e.g. orig,jpeg:75,resize:0.5")
    add_split_argument(p)
    add_cache_argument(p)
    add_weights_argument(p)
    add_out_argument(p, metavar="REPORT_DIR", text="where to write the report")
    p.set_defaults(func=run_views)
    return p
