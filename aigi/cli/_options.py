"""Options shared by several commands, each defined once: the same flag means the same thing everywhere."""

from __future__ import annotations

import argparse
from pathlib import Path

WEIGHTS_HELP = (
    "tail_* heads: the backbone weights file the token cache was extracted with (the same as `aigi extract "
    "--weights`; ALIAS=PATH per cache when the head reads several)"
)
SET_HELP = "override a config value by dotted key, YAML-parsed: fit.lr=1e-4, head.inputs=[proj]"


def add_weights_argument(p: argparse.ArgumentParser) -> None:
    """`--weights [ALIAS=]PATH` (repeatable): the same flag on every command that trains or loads a head."""
    p.add_argument("--weights", action="append", default=[], metavar="[ALIAS=]PATH", help=WEIGHTS_HELP)


def add_run_dir_argument(p: argparse.ArgumentParser) -> None:
    """RUN_DIR: the folder `aigi train` wrote (eval, calibrate, robustness)."""
    p.add_argument("run_dir", type=Path, help="directory written by `aigi train` (head.json + head.safetensors)")


def add_cache_argument(p: argparse.ArgumentParser, *, text: str = "cache replacing the recorded one") -> None:
    """`--cache [ALIAS=]PATH` (repeatable): a cache replacing the one a config or a head names; `text`: its help."""
    p.add_argument("--cache", action="append", default=[], metavar="[ALIAS=]PATH", help=text)


def add_set_argument(p: argparse.ArgumentParser, *, text: str = SET_HELP) -> None:
    """`--set KEY=VALUE` (repeatable, into `args.overrides`): a run config value by dotted key (train, ablate)."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=text)


def add_split_argument(p: argparse.ArgumentParser) -> None:
    """`--split NAME|all`: the rows a trained head scores (default: the config's test split)."""
    p.add_argument("--split", default=None, help="split to score, or `all` (default: the config's test split, `test`)")


def add_out_argument(p: argparse.ArgumentParser, *, metavar: str, text: str) -> None:
    """`-o/--out PATH` (required): where a command writes; `text`: its help."""
    p.add_argument("-o", "--out", type=Path, required=True, metavar=metavar, help=text)
