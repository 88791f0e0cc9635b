"""The one output rule of every command: check where it writes, hold the target's lock, commit its files together.

A command names its output with `-o PATH` (a file or a folder) and its inputs (a run, a cache, an import folder,
a config, ...). `check_output` refuses, each time with one line naming the path and the fix:

  - an empty or absurd target: `/`, a name with a NUL byte or longer than a file name may be, a folder where a file
    is expected and the reverse, a special file (a FIFO, a device), a parent folder that is a file or not writable;
  - a target that is one of the command's inputs or lies inside one (a report may go into a new sub-folder of the
    run it reads, never onto the run's own files), or that holds one and would be replaced;
  - an existing target without `--overwrite` (an empty folder is not "existing"), and a folder holding files that
    the command does not write (it would mix them with its own).

`committed` then holds the target's lock (one writer per output: a second command on the same target is refused
at once, not queued), and commits what the stage wrote:

  - a file: the stage writes the target itself through an atomic write (a temporary sibling renamed into place);
  - a folder: the stage writes into a hidden staging folder beside the target. A new target is the staging folder
    renamed into place (all files appear at once). An existing one (`--overwrite`) receives the new files, loses
    those of its own kind the command no longer writes, and keeps every other file; the staging folder is marked
    complete first, so a command killed while committing is finished by the next command on that target, and a
    command killed before is as if it never ran. On any error the staging folder is removed.

The stage functions stay unaware of all this: the command line checks, stages and commits around them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fnmatch import fnmatch
from glob import escape
from pathlib import Path

from aigi.common.files import atomic_write, sibling, sibling_prefix

try:
    import fcntl
except ImportError:  # not a POSIX system: outputs are still checked and committed together, not locked
    fcntl = None

MAX_NAME_BYTES = 255
COMPLETE = ".aigi-complete"  # in a staging folder: every file is written; the commit may be rolled forward
STAGE_TAG = "stage-"
LOCK_TAG = "lock"


class OutputBusy(ValueError):
    """Another process holds the lock of the output (it is writing it now)."""


@dataclass(frozen=True)
class Input:
    """A path a command reads, which its output may not replace or mix with.

    Attributes:
        path: the input (a file or a folder).
        what: what it is, for messages ("the run", "the cache", "the import folder").
        reserved: None: nothing may be written inside it. A tuple: an output may lie inside it, in a new place that
            is none of these names (the top-level entries the input itself consists of, e.g. a run's head.json).
    """

    path: Path
    what: str
    reserved: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Output:
    """A checked output target.

    Attributes:
        path: the target, absolute with links resolved.
        shown: the path as the user typed it (messages name it so).
        kind: "file" or "folder".
        overwrite: the existing target may be replaced.
        owned: for a folder, glob patterns of the relative paths of the files the command writes there: the ones
            it replaces (stale ones are removed); any other file in the folder is kept.
        option: the option that named it (`-o`, `--cache`).
    """

    path: Path
    shown: str
    kind: str
    overwrite: bool = False
    owned: tuple[str, ...] = ()
    option: str = "-o"


def check_output(
    path: str | Path,
    *,
    kind: str,
    inputs: Sequence[Input] = (),
    overwrite: bool = False,
    owned: Sequence[str] = (),
    resumable: bool = False,
    option: str = "-o",
) -> Output:
    """Check an output target against the rule (see the module doc) and return it.

    Args:
        path: the target as given.
        kind: "file" or "folder".
        inputs: what the command reads.
        overwrite: the user passed `--overwrite`.
        owned: for a folder, glob patterns of the relative paths of the files the command writes there.
        resumable: the command adds to an existing target and resumes there (a cache, an ablation folder): only
            the name, the place and the inputs are checked.
        option: the option that named the target.

    Raises:
        ValueError / FileExistsError / NotADirectoryError / IsADirectoryError / PermissionError: one line naming
            the target, what is wrong and what to do.
    """
    shown = os.fspath(path)
    target = _absolute(shown, option)
    _check_place(target, shown, option)
    for given in inputs:
        _check_input(target, shown, given, option, replaced=not resumable)
    out = Output(target, shown, kind, bool(overwrite), tuple(owned), option)
    if resumable:
        _check_kind(out)
    else:
        _check_existing(out)
    return out


def _absolute(shown: str, option: str) -> Path:
    """The target as an absolute path with links resolved; refuses names no file system takes."""
    if not shown.strip():
        raise ValueError(f"{option} is empty; give the path to write")
    if "\0" in shown:
        raise ValueError(f"{option} {shown!r} contains a NUL byte; give a plain path")
    long = [part for part in Path(shown).parts if len(os.fsencode(part)) > MAX_NAME_BYTES]
    if long:
        raise ValueError(
            f"{option} {shown}: the name {long[0][:40]}... is {len(os.fsencode(long[0]))} bytes; a file name may "
            f"have at most {MAX_NAME_BYTES}: choose a shorter one"
        )
    return Path(os.path.realpath(os.path.expanduser(shown)))


def _check_place(target: Path, shown: str, option: str) -> None:
    """Refuse the root of a file system, and a target whose nearest existing ancestor is a file or not writable."""
    if target.parent == target:
        raise ValueError(f"{option} {shown} is the root folder; name a new folder or file to write, e.g. {option} out")
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(
            errno.ENOTDIR, f"{parent} is a file, not a folder; choose {option} inside a folder", shown
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(
            errno.EACCES, f"cannot write in {parent} (permission denied); choose {option} in a folder you may write to",
            shown,
        )  # fmt: skip


def _check_input(target: Path, shown: str, given: Input, option: str, *, replaced: bool) -> None:
    """Refuse a target that is or lies inside one of the command's inputs (outside its allowed places), and one
    that holds an input when the target may be `replaced` (a resumed folder only ever gains files)."""
    source = Path(os.path.realpath(os.path.expanduser(os.fspath(given.path))))
    fix = f"choose {option} outside it"
    if target == source:
        raise ValueError(f"{option} {shown} is {given.what} this command reads ({given.path}); {fix}")
    if target.is_relative_to(source):
        first = target.relative_to(source).parts[0]
        if given.reserved is None or first in given.reserved or first.startswith("."):
            raise ValueError(f"{option} {shown} lies inside {given.what} this command reads ({given.path}); {fix}")
    elif replaced and source.is_relative_to(target):
        raise ValueError(
            f"{option} {shown} holds {given.what} this command reads ({given.path}); "
            f"choose a new {option} that does not"
        )


def _special(path: Path) -> bool:
    """True when `path` exists and is neither a regular file nor a folder (a FIFO, a socket, a device)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _check_kind(out: Output) -> None:
    """Refuse a special file, a folder where a file is expected and a file where a folder is."""
    target, shown, option = out.path, out.shown, out.option
    if _special(target):
        raise ValueError(f"{option} {shown} is not a regular file (a FIFO, socket or device); give a new path")
    if out.kind == "file" and target.is_dir():
        raise IsADirectoryError(
            errno.EISDIR, f"{option} names a folder; give a file name such as {Path(shown) / 'out'}", shown
        )
    if out.kind == "folder" and target.is_file():
        raise NotADirectoryError(errno.ENOTDIR, f"{option} names a file; give a folder", shown)


def _check_existing(out: Output) -> None:
    """Refuse a target of the other kind, a special file, and an existing target unless `--overwrite` applies."""
    _check_kind(out)
    target, shown, option = out.path, out.shown, out.option
    if out.kind == "file":
        if target.exists() and not out.overwrite:
            raise FileExistsError(
                errno.EEXIST, f"already exists; pass --overwrite to replace it, or choose another {option}", shown
            )
        return
    if not target.is_dir() or not any(target.iterdir()):
        return
    mine = owned_files(target, out.owned)
    if not mine:
        others = sorted(p.name for p in target.iterdir())
        raise FileExistsError(
            errno.EEXIST,
            f"already exists and holds other files ({', '.join(others[:4])}{', ...' if len(others) > 4 else ''}); "
            f"give a new or empty folder as {option}",
            shown,
        )
    if not out.overwrite:
        raise FileExistsError(
            errno.EEXIST,
            f"already exists and holds {', '.join(mine[:3])}; pass --overwrite to replace them, or choose another "
            f"{option}",
            shown,
        )


def owned_files(folder: Path, patterns: Sequence[str]) -> list[str]:
    """Relative paths (sorted, "/"-separated) of the files under `folder` matching one of `patterns`."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            rel = Path(dirpath, name).relative_to(folder).as_posix()
            if any(fnmatch(rel, p) for p in patterns):
                found.append(rel)
    return sorted(found)


# ---------------------------------------------------------------------------------------------------- the lock


class TargetLock:
    """An exclusive, non-blocking lock on an output target: the hidden file `.NAME.lock` beside it, removed when
    released (an OS lock, so a killed holder's lock is free at once; a file left by a killed holder is reused)."""

    def __init__(self, target: Path, shown: str, option: str = "-o") -> None:
        self.path, self.shown, self.option = sibling(target, LOCK_TAG), shown, option
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise `OutputBusy` naming the holder."""
        if fcntl is None or not self.path.parent.is_dir():  # no lock, or no folder to write in (the stage says so)
            return
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise OutputBusy(
                        f"{self.option} {self.shown} is being written by another aigi process ({holder}); wait for it "
                        f"to finish or choose another {self.option}"
                    ) from None
                raise
            if os.fstat(fd).st_nlink:  # not a file its last holder removed between our open and our lock
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        """Remove the lock file, then let go of the lock."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> TargetLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def target_lock(target: str | Path, *, option: str = "-o") -> TargetLock:
    """The lock of an output target that is changed in place (a run's head.json by `aigi calibrate`)."""
    shown = os.fspath(target)
    return TargetLock(Path(os.path.realpath(os.path.expanduser(shown))), shown, option)


# ---------------------------------------------------------------------------------------------------- commit


@contextlib.contextmanager
def committed(out: Output) -> Iterator[Path]:
    """Hold the target's lock and yield where the stage writes: the target itself for a file (written atomically
    by the stage), a hidden staging folder beside it for a folder, committed when the block ends without error.

    Raises:
        OutputBusy: another process writes the same target now.
        FileExistsError: the target appeared meanwhile and `--overwrite` was not given.
    """
    created = _make_parents(out.path.parent)
    try:
        with TargetLock(out.path, out.shown, out.option):
            recover(out.path)
            _check_existing(out)
            if out.kind == "file":
                yield out.path
                return
            stage = sibling(out.path, f"{STAGE_TAG}{socket.gethostname()}-{os.getpid()}")
            shutil.rmtree(stage, ignore_errors=True)
            stage.mkdir()
            try:
                try:
                    yield stage
                except OSError as err:
                    _name_target(err, stage, out.path)
                    raise
                _commit(stage, out)
            finally:
                shutil.rmtree(stage, ignore_errors=True)
    except BaseException:
        for folder in reversed(created):  # folders made for this output only, still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _name_target(err: OSError, stage: Path, target: Path) -> None:
    """Make an error about a file in the staging folder name that file's place in the target the user gave."""
    for attr in ("filename", "filename2"):
        name = getattr(err, attr, None)
        if isinstance(name, str) and name.startswith(str(stage) + os.sep):
            setattr(err, attr, str(target) + name[len(str(stage)) :])


def _make_parents(folder: Path) -> list[Path]:
    """Create `folder` and its missing ancestors; return the ones created, outermost first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    made = []
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        made.append(folder)
    return made


def _commit(stage: Path, out: Output) -> None:
    """Put the staged folder's files in place: a rename for a new target, a marked roll-forward for an old one."""
    target = out.path
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        os.replace(stage, target)
        return
    new = set(owned_files(stage, ["*"]))
    stale = [rel for rel in owned_files(target, out.owned) if rel not in new]
    atomic_write(stage / COMPLETE, json.dumps({"remove": stale}), fsync=True)
    _roll_forward(stage, target)


def _roll_forward(stage: Path, target: Path) -> None:
    """Finish a marked commit (idempotent): remove the stale files, move every staged file into the target."""
    plan = json.loads((stage / COMPLETE).read_text(encoding="utf-8"))
    for rel in plan["remove"]:
        with contextlib.suppress(FileNotFoundError):
            (target / rel).unlink()
    for rel in owned_files(stage, ["*"]):
        if rel == COMPLETE:
            continue
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_dir():
            shutil.rmtree(dest)
        os.replace(stage / rel, dest)
    (stage / COMPLETE).unlink()


def recover(target: Path) -> list[Path]:
    """Finish or undo the commits of writers of `target` that died (call it holding the target's lock): a staging
    folder marked complete is rolled forward, any other is removed. Returns the staging folders handled."""
    found = sorted(target.parent.glob(escape(sibling_prefix(target)) + STAGE_TAG + "*"))
    for stage in found:
        if (stage / COMPLETE).is_file():
            _roll_forward(stage, target)
        shutil.rmtree(stage, ignore_errors=True)
    return found
