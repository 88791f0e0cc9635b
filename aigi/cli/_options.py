"""Options shared by several commands, each defined once: the same flag means the same thing everywhere."""

from __future__ import annotations

import argparse
from pathlib import Path

from aigi.common.grammar import SPLIT_NAMES

# What every `--weights` of a backbone takes (resolved by `aigi.extractors.weights.resolve_weights`).
WEIGHTS_NAMES = (
    "a local file (never looked up on the network), or a name downloaded through huggingface_hub's cache "
    "(HF_HOME, HF_HUB_OFFLINE, HF_ENDPOINT): hf-hub:ORG/REPO[:FILE][@REVISION], or the backbone's alias: openai "
    "(clip-l14, clip-l14-336), apple or apple-last (aim-v1-*), timm or timm:TAG (timm:*); see docs/WEIGHTS.md"
)
EXTRACT_WEIGHTS_HELP = f"the backbone's weights: {WEIGHTS_NAMES}"
WEIGHTS_HELP = (
    "tail_* heads: the backbone weights the token cache was extracted with (the same as `aigi extract "
    f"--weights`: {WEIGHTS_NAMES}; ALIAS=VALUE per cache when the head reads several)"
)
DEVICE_HELP = "auto (CUDA when present), cpu, cuda, cuda:1, ..."
SET_HELP = "override a config value by dotted key, YAML-parsed: fit.lr=1e-4, head.inputs=[proj]"


def add_weights_argument(p: argparse.ArgumentParser) -> None:
    """`--weights [ALIAS=]PATH` (repeatable): the same flag on every command that trains or loads a head."""
    p.add_argument("--weights", action="append", default=[], metavar="[ALIAS=]WEIGHTS", help=WEIGHTS_HELP)


def add_output_argument(
    p: argparse.ArgumentParser, help_text: str, *, long: str = "--output", required: bool = True, as_path: bool = True
) -> None:
    """`-o/--output` (or `-o/--out`): the file or folder a command writes.

    Args:
        p: the command's parser.
        help_text: what is written there.
        long: the long spelling (`--output` for files and folders of data, `--out` for head and report folders).
        required: whether the command needs it.
        as_path: give a `Path` (False: the text as typed, e.g. to see a trailing `/`).
    """
    p.add_argument("-o", long, type=Path if as_path else str, required=required, help=help_text)


def add_split_arguments(p: argparse.ArgumentParser) -> None:
    """`--split S` or `--split-ratio train=0.8,test=0.2 [--seed N]`: the splits given to new rows."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--split", choices=SPLIT_NAMES, help="give every row this split")
    group.add_argument(
        "--split-ratio",
        metavar="RATIOS",
        help="assign splits by pair_id, e.g. train=0.8,test=0.2 (a real and its fakes stay together)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --split-ratio (default 0)")


def add_device_argument(p: argparse.ArgumentParser) -> None:
    """`--device` (default auto): where a backbone or a head runs."""
    p.add_argument("--device", default="auto", help=DEVICE_HELP)


def add_where_argument(p: argparse.ArgumentParser, help_text: str) -> None:
    """`--where COLUMN=VALUE` (repeatable): row filters on the cache's meta columns."""
    p.add_argument("--where", action="append", default=[], metavar="COLUMN=VALUE", help=help_text)


def add_json_argument(p: argparse.ArgumentParser) -> None:
    """`--json`: print the result as JSON instead of text."""
    p.add_argument("--json", action="store_true", help="print JSON")


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
