"""The `aigi` command line: one sub-command per pipeline stage, each registered by its own module."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys

from aigi.common.extras import MissingExtra
from aigi.common.provenance import package_version
from aigi.common.registry import Registry

# One lazy entry per sub-command: "module:function", the function adding that sub-command to the parser (with
# `set_defaults(func=...)`). `aigi CMD ...` imports only CMD's module (start-up time); `aigi --help` and unknown
# commands build the full parser. Modules keep heavy imports (torch, sklearn, diffusers, ...) inside functions.
COMMANDS: Registry = Registry("command")
for _name, _target in {
    "index": "aigi.cli.index:add_parser",
    "cache": "aigi.cli.cache:add_parser",
    "import": "aigi.cli.import_:add_parser",
    "export": "aigi.cli.export:add_parser",
    "fakes": "aigi.cli.fakes:add_parser",
    "extract": "aigi.cli.extract:add_parser",
    "train": "aigi.cli.train:add_parser",
    "eval": "aigi.cli.eval:add_parser",
    "calibrate": "aigi.cli.calibrate:add_parser",
    "robustness": "aigi.cli.robustness:add_parser",
    "head": "aigi.cli.head:add_parser",
    "domains": "aigi.cli.domains:add_parser",
    "ablate": "aigi.cli.ablate:add_parser",
    "predict": "aigi.cli.predict:add_parser",
    "zoo": "aigi.cli.zoo:add_parser",
    "demo": "aigi.cli.demo:add_parser",
}.items():
    COMMANDS.register_lazy(_name, _target)

# Errors a user can fix: printed as one line (set AIGI_DEBUG=1 for the traceback), exit code 2. Every OSError (a
# missing file, disk full, permissions, a damaged file) is one; so are errors of file-format libraries (a YAML tag,
# a damaged safetensors or pickle file), recognised by their module. A KeyError or any other exception is a bug and
# keeps its traceback: code that meets a user mistake raises one of these with a message. A missing optional package
# (`MissingExtra`) names the extra that installs it.
USER_ERRORS = (ValueError, OSError, MissingExtra)
FORMAT_ERROR_MODULES = ("yaml", "safetensors", "safetensors_rust", "_pickle", "pickle", "h5py", "pyarrow")
OS_HINTS = {
    errno.ENOSPC: "the disk is full: free space and re-run (finished parts are kept)",
    errno.EDQUOT: "the disk quota is exceeded: free space and re-run",
    errno.EACCES: "permission denied: check its permissions, or choose a path you may read and write",
    errno.EPERM: "operation not permitted: check its permissions, or choose another path",
    errno.EROFS: "the file system is read-only",
}
# Commands that keep their finished work when interrupted and resume it when re-run: what they keep.
RESUMABLE = {
    "extract": "finished shards",
    "import": "imported shards",
    "fakes": "finished fakes",
    "ablate": "finished runs",
    "demo": "finished steps",
}
# Commands that write their output only at the end (atomically): interrupted, they leave nothing behind.
WRITE_AT_END = ("index", "train", "predict")
MAX_MESSAGE = 600


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full `aigi` parser with every sub-command, or with command `only` alone (its module alone imported)."""
    parser = argparse.ArgumentParser(
        prog="aigi",
        description="Detect AI-generated images: cache frozen-backbone features once, train light heads on them.",
    )
    parser.add_argument("--version", action="version", version=f"aigi {package_version()}")
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="only results, warnings and errors: no progress or notes (anywhere on the line)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in [only] if only in COMMANDS else COMMANDS.names():
        COMMANDS.get(name)(sub)
    return parser


def one_line(message: object) -> str:
    """A message on one line (inner newlines folded), cut to MAX_MESSAGE characters."""
    text = " ".join(str(message).split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def user_message(err: BaseException) -> str | None:
    """The one-line message for an error a user can fix, or None for a bug (shown with its traceback)."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        hint = OS_HINTS.get(err.errno, "")
        text = f"{err.filename}: {err.strerror}" + (f" ({hint})" if hint and "(" not in err.strerror else "")
    elif isinstance(err, USER_ERRORS):
        text = str(err) or type(err).__name__
    elif type(err).__module__.split(".")[0] in FORMAT_ERROR_MODULES:
        text = f"{type(err).__name__}: {err}"
    else:
        return None
    return one_line(text)


def interrupted_message(command: str) -> str:
    """What an interrupted command leaves behind and what re-running it does."""
    kept = RESUMABLE.get(command)
    if kept:
        return f"aigi {command}: interrupted; {kept} are kept: re-run the same command to resume"
    if command in WRITE_AT_END:
        return f"aigi {command}: interrupted; nothing was saved: re-run the command to start again"
    return f"aigi {command}: interrupted; its outputs may be incomplete: re-run the command to start again"


def _quiet_stdout() -> None:
    """After a closed pipe (`aigi ... | head`), point stdout at /dev/null so the final flush stays silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout replaced by an object without a file descriptor
        pass


class _ConsoleHandler(logging.Handler):
    """Shows the library's log records as bare lines: progress and warnings on standard error, other notes on
    standard output. The streams are looked up at each record, so a replaced `sys.stdout` (a test, a pipe) is used."""

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr if record.levelno >= logging.WARNING or record.name == "aigi.progress" else sys.stdout
        try:
            print(self.format(record), file=stream, flush=stream is sys.stderr)
        except (BrokenPipeError, ValueError):
            pass


def configure_output(*, quiet: bool = False) -> None:
    """Send the `aigi` loggers' records to the console (once per process); `quiet` keeps only warnings."""
    logger = logging.getLogger("aigi")
    if not any(isinstance(h, _ConsoleHandler) for h in logger.handlers):
        logger.addHandler(_ConsoleHandler())
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The innermost sub-command parser `args` went through (`aigi head pack` -> the `pack` parser)."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        name = getattr(args, subs[0].dest, None) if subs else None
        if name not in (subs[0].choices if subs else {}):
            return parser
        parser = subs[0].choices[name]


def parse(argv: list[str]) -> argparse.Namespace:
    """The arguments; an unknown flag is refused by the sub-command's own parser (its usage, exit code 2)."""
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        command_parser(parser, args).error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def main(argv: list[str] | None = None, *, nested: bool = False) -> int:
    """Entry point of the `aigi` console script; returns the process exit code. `nested`: called by another command
    in the same process (`aigi demo`): its timings leave out the process's start-up."""
    argv = sys.argv[1:] if argv is None else list(argv)
    quiet = "--quiet" in argv
    argv = [a for a in argv if a != "--quiet"]
    configure_output(quiet=quiet)
    args = parse(argv)
    args.quiet, args.nested = quiet, nested
    try:
        code = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_stdout()
        return 141  # as a shell reports a command ended by SIGPIPE
    except Exception as err:
        msg = user_message(err)
        if msg is None or os.environ.get("AIGI_DEBUG"):
            raise
        print(f"aigi {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted_message(args.command), file=sys.stderr)
        return 130
    return int(code or 0)


# Commands that write only through closed files (atomic writes, safetensors, pandas, matplotlib) and start no worker
# processes: after they return, the interpreter's teardown (freeing every module of torch, pandas, ...; 0.3-0.9 s,
# more than the whole fit of a linear head on 16,000 rows) does nothing the user needs, so `run` skips it.
FAST_EXIT = frozenset({"train", "eval", "predict", "calibrate"})


def run(argv: list[str] | None = None) -> None:
    """The `aigi` console script: `main`, then exit; without the interpreter's teardown after a `FAST_EXIT` command
    whose output is flushed and that left no running non-daemon thread."""
    argv = sys.argv[1:] if argv is None else list(argv)
    code = main(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in FAST_EXIT and not any(t.is_alive() and not t.daemon for t in _other_threads()):
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (BrokenPipeError, ValueError):
            pass
        else:
            os._exit(code)
    sys.exit(code)


def _other_threads() -> list:
    import threading

    return [t for t in threading.enumerate() if t is not threading.main_thread()]


if __name__ == "__main__":
    run()
