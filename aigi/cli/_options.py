"""Options shared by several commands, each defined once: the same flag means the same thing everywhere."""

from __future__ import annotations

import argparse
import errno
import json
from collections.abc import Sequence
from pathlib import Path

from aigi.common.grammar import SPLIT_NAMES
from aigi.common.outputs import Input, check_output

# The files a command writes into its output folder (glob patterns of relative paths): an existing folder of that
# kind is replaced with --overwrite (stale files of the kind removed, other files kept).
RUN_FILES = ("head.json", "head.safetensors", "config.yaml")  # a run or head folder (train, head import-*)
REPORT_FILES = ("*.md", "*.html", "*.json", "*.csv", "*.parquet", "*.png")  # a report folder (eval, predict)
EXPORT_FILES = ("*/0_real/*.npy", "*/1_fake/*.npy")  # an exported .npy folder
OVERWRITE_HELP = (
    "replace an existing -o (atomically; in a folder, files of other kinds are kept); an output inside one of the "
    "command's inputs is refused even so"
)

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


def add_out_argument(
    p: argparse.ArgumentParser,
    *,
    metavar: str,
    text: str,
    required: bool = True,
    overwrite: bool = True,
    default: str | None = None,
) -> None:
    """`-o/--out PATH` (also spelled `--output`) and `--overwrite`: the one output option of every command.

    The value is kept as typed (a string) into `args.out`; `aigi.common.outputs.check_output` checks it.

    Args:
        p: the command's parser.
        metavar: what the path is (RUN_DIR, REPORT_DIR, FILE.csv, ...).
        text: its help.
        required: whether the command needs it.
        overwrite: also add `--overwrite` (replace an existing output); False for commands that resume in place.
        default: the value when not given.
    """
    p.add_argument("-o", "--out", "--output", dest="out", required=required, default=default, metavar=metavar,
                   help=text)  # fmt: skip
    if overwrite:
        p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)


def aliased_path(item: str) -> str:
    """The PATH of an `[ALIAS=]PATH` option value (`--cache syn=c` -> `c`; a path holding `=` stays whole)."""
    alias, sep, path = str(item).partition("=")
    return path if sep and alias and "/" not in alias and not Path(item).exists() else str(item)


def cache_inputs(items: Sequence[str | Path]) -> list[Input]:
    """The caches a command reads (`--cache [ALIAS=]PATH` values, config paths): nothing may be written inside."""
    return [Input(Path(aliased_path(str(item))), "the cache") for item in items if str(item)]


def run_input(run_dir: str | Path) -> list[Input]:
    """A run folder a command reads, and the caches its head.json records: a report may go into a new sub-folder
    of the run, never onto its own files or into its caches."""
    run = Path(run_dir)
    found = [Input(run, "the run", reserved=RUN_FILES)]
    try:
        recorded = json.loads((run / "head.json").read_text(encoding="utf-8")).get("caches") or {}
        paths = [c["path"] for c in recorded.values() if isinstance(c, dict) and isinstance(c.get("path"), str)]
    except (OSError, ValueError, AttributeError):  # no or a damaged head.json: the stage says what is wrong
        paths = []
    return found + cache_inputs(paths)


def cache_output(path: str | Path, inputs: Sequence[Input] = (), *, option: str = "--cache") -> Path:
    """A cache a command creates or adds to (`import`, `extract`): a new or empty folder, or an existing cache; never
    inside one of the command's inputs, never a folder of other files (it would mix a cache into them)."""
    out = check_output(path, kind="folder", inputs=inputs, resumable=True, option=option)
    if out.path.is_dir() and not (out.path / "cache.json").exists() and any(out.path.iterdir()):
        raise FileExistsError(
            errno.EEXIST, f"holds other files and is not a feature cache (no cache.json); give a new folder or an "
            f"existing cache as {option}", str(path),
        )  # fmt: skip
    return out.path


def folder_output(path: str | Path, inputs: Sequence[Input] = (), *, option: str = "-o") -> Path:
    """A folder a command fills and resumes in (`ablate`, `demo`, `fakes`): its name, place and inputs are checked."""
    return check_output(path, kind="folder", inputs=inputs, resumable=True, option=option).path
