"""The `aigi` command line: one sub-command per pipeline stage, each registered by its own module."""

from __future__ import annotations

import argparse
import errno
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

# Errors a user can fix: printed as one line (set AIGI_DEBUG=1 for the traceback), exit code 2. Every OSError
# (disk full, permissions, a damaged file) is one; so are errors of file-format libraries, recognised by module.
USER_ERRORS = (ValueError, OSError, KeyError)
FORMAT_ERROR_MODULES = ("yaml", "safetensors", "safetensors_rust", "_pickle", "pickle", "h5py", "pyarrow")
OS_HINTS = {
    errno.ENOSPC: "the disk is full: free space and re-run (finished parts are kept)",
    errno.EDQUOT: "the disk quota is exceeded: free space and re-run",
    errno.EACCES: "permission denied: choose a folder you may write to",
    errno.EROFS: "the file system is read-only",
}


def user_message(err: BaseException) -> str | None:
    """The one-line message for an error a user can fix, or None for a bug (shown with its traceback)."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        hint = OS_HINTS.get(err.errno, "")
        text = f"{err.filename}: {err.strerror}" + (f" ({hint})" if hint and "(" not in err.strerror else "")
    elif isinstance(err, KeyError) and err.args:
        text = str(err.args[0])
    elif isinstance(err, USER_ERRORS) or type(err).__module__.split(".")[0] in FORMAT_ERROR_MODULES:
        text = str(err) or type(err).__name__
        if not isinstance(err, USER_ERRORS):
            text = f"{type(err).__name__}: {text}"
    else:
        return None
    return " ".join(text.split())  # one line, whatever the library put in its message


def build_parser() -> argparse.ArgumentParser:
    """The full `aigi` parser with every available sub-command."""
    parser = argparse.ArgumentParser(
        prog="aigi",
        description="Detect AI-generated images: cache frozen-backbone features once, train light heads on them.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
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
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except Exception as err:
        msg = user_message(err)
        if msg is None or os.environ.get("AIGI_DEBUG"):
            raise
        print(f"aigi {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aigi: interrupted; finished shards and outputs are kept: re-run the command to resume.", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
