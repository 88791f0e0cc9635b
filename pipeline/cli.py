"""The `aigi` command line: one sub-command per pipeline stage, each registered by its own module."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Each module defines `register(subparsers) -> None`, adding its sub-command(s) with `set_defaults(func=...)`.
# Modules keep heavy imports (torch, sklearn, diffusers, ...) inside functions so that `aigi --help` stays fast.
COMMAND_MODULES = [
    "pipeline.index",
    "pipeline.cache_cmd",
    "pipeline.importers",
    "pipeline.fakes",
    "pipeline.extract",
    "pipeline.train",
    "pipeline.evaluate",
    "pipeline.head_cmd",
    "pipeline.domains",
    "pipeline.ablate",
    "pipeline.predict",
    "pipeline.demo",
]

# Which module registers each sub-command: `aigi CMD ...` imports only that module (start-up time); `aigi --help`
# and unknown commands build the full parser. tests/pipeline/test_cli_lazy.py keeps this in step with the modules.
COMMANDS = {
    "index": "pipeline.index",
    "cache": "pipeline.cache_cmd",
    "import": "pipeline.importers",
    "export": "pipeline.importers",
    "fakes": "pipeline.fakes",
    "extract": "pipeline.extract",
    "train": "pipeline.train",
    "eval": "pipeline.evaluate",
    "head": "pipeline.head_cmd",
    "domains": "pipeline.domains",
    "ablate": "pipeline.ablate",
    "predict": "pipeline.predict",
    "demo": "pipeline.demo",
}

# Errors a user can fix: printed as one line (set AIGI_DEBUG=1 for the traceback), exit code 2.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError, KeyError)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full `aigi` parser with every available sub-command, or only the module providing command `only`."""
    parser = argparse.ArgumentParser(
        prog="aigi",
        description="Detect AI-generated images: cache frozen-backbone features once, train light heads on them.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in [COMMANDS[only]] if only in COMMANDS else COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # stage not written yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `aigi` console script; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    try:
        code = args.func(args)
    except USER_ERRORS as err:
        if os.environ.get("AIGI_DEBUG"):
            raise
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"aigi {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aigi: interrupted; finished shards and outputs are kept: re-run the command to resume.", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
