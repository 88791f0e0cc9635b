"""Cooperation between writers of one folder: a lock file, owner-tagged temporary names, cleanup of dead owners' files.

A temporary or claim file carries its owner as `<host>-<pid>` at the end of its name. Cleanup removes only files
whose owner ran on this host and is no longer alive, so a writer never deletes another live writer's file.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import threading
from pathlib import Path

from filelock import FileLock

from aigi.common.files import temp_name, writing

__all__ = ["folder_lock", "owner_dead", "owner_tag", "pid_alive", "remove_dead", "temp_name", "writing"]

LOCK_NAME = ".lock"
HOST = socket.gethostname()
_GUARD = threading.Lock()


def owner_tag() -> str:
    """`<host>-<pid>` of this process (the suffix of its temporary and claim file names)."""
    return f"{HOST}-{os.getpid()}"


def pid_alive(pid: int) -> bool:
    """True when a process with this id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def owner_dead(name: str) -> bool:
    """True when the file name ends in `-<host>-<pid>` of a process of this host that no longer runs.

    Files of other hosts (a shared file system) or without an owner tag are never called dead.
    """
    head, sep, pid = name.rpartition("-")
    if not sep or not pid.isdigit() or not head.endswith(f"-{HOST}"):
        return False
    return not pid_alive(int(pid))


def remove_dead(folder: Path, pattern: str) -> list[Path]:
    """Delete the files of `folder` matching `pattern` whose owner is dead; return what was removed."""
    removed = []
    if not folder.is_dir():
        return removed
    for file in folder.glob(pattern):
        if owner_dead(file.name):
            with contextlib.suppress(FileNotFoundError):
                file.unlink()
                removed.append(file)
    return removed


def folder_lock(folder: Path, name: str = LOCK_NAME) -> FileLock:
    """The inter-process lock `name` of `folder` (an OS file lock, released when its holder dies).

    One object per file and process, so holding it again in the same process nests instead of deadlocking.
    """
    key = str(Path(folder).resolve() / name)
    with _GUARD:
        with writing(Path(folder), "creating the folder"):
            Path(folder).mkdir(parents=True, exist_ok=True)
        return _file_lock(key)


@functools.cache
def _file_lock(path: str) -> FileLock:
    """One lock object per lock file and process (memoised by the file's path)."""
    return FileLock(path, thread_local=False)
