"""The sha256 of a file and the atomic write (temporary sibling + `os.replace`) used by every package."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

_HASH_CHUNK = 8 * 1024 * 1024
_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, streamed; remembered per (path, size, mtime) for this process.

    Raises:
        FileNotFoundError: naming the path when it is not a file.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(_HASH_CHUNK):
                digest.update(chunk)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


# A name longer than this (in bytes) is shortened in the names of its hidden siblings, so that `.NAME.TAG` stays
# within the 255 bytes a file name may have: its first bytes, `~` and 8 hex digits of its sha256.
LONG_NAME_BYTES = 150
KEPT_NAME_BYTES = 130


def sibling_prefix(path: str | Path) -> str:
    """The start of every hidden sibling name of `path`: `.NAME.` (a long NAME shortened, see LONG_NAME_BYTES)."""
    name = Path(path).name
    raw = os.fsencode(name)
    if len(raw) > LONG_NAME_BYTES:
        name = os.fsdecode(raw[:KEPT_NAME_BYTES]) + "~" + hashlib.sha256(raw).hexdigest()[:8]
    return f".{name}."


def sibling(path: str | Path, tag: str) -> Path:
    """A hidden sibling of `path` named `.NAME.TAG`, a valid file name whatever the length of NAME."""
    path = Path(path)
    return path.with_name(sibling_prefix(path) + tag)


def temp_name(path: str | Path) -> Path:
    """A hidden temporary sibling of `path`, unique per host and process (`.NAME.tmp-HOST-PID`; readers skip it)."""
    return sibling(path, f"tmp-{socket.gethostname()}-{os.getpid()}")


_HINTS = {
    errno.ENOSPC: "the disk is full: free space and re-run (finished parts are kept)",
    errno.EDQUOT: "the disk quota is exceeded: free space and re-run",
    errno.EFBIG: "the file size limit was reached",
    errno.EACCES: "choose a folder you may write to",
    errno.EROFS: "choose a writable folder",
}


@contextlib.contextmanager
def writing(path: str | Path, what: str = "writing") -> Iterator[None]:
    """Re-raise an OSError without a file name (disk full, permissions) as one naming `path`, with a hint."""
    try:
        yield
    except OSError as err:
        code = err.errno if err.errno is not None else _errno_in(err)
        if err.filename is not None or code is None:
            raise
        hint = _HINTS.get(code)
        text = f"{what} failed: {os.strerror(code)}" + (f" ({hint})" if hint else "")
        raise OSError(code, text, str(path)) from err


def _errno_in(err: OSError) -> int | None:
    """The errno named inside a library's message (HDF5 reports `errno = 28` as text)."""
    text = str(err)
    for code in _HINTS:
        if f"errno = {code}," in text or os.strerror(code) in text:
            return code
    return None


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling to write; on success it replaces `path`, on an error it is removed.

    Readers see the old file or the whole new one, never a half-written one. Writers that cannot infer a format
    from the name (the temporary one has no usual suffix) must name the format themselves. A disk-full or
    permission error names `path`.
    """
    path = Path(path)
    tmp = temp_name(path)
    try:
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, data: bytes | str, *, fsync: bool = False) -> Path:
    """Write `data` (bytes, or text as UTF-8) to `path` atomically; `fsync` flushes it to disk before the rename."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(raw)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


# Words of torch's weights-only loader when a file asks to run code (a pickled global), as opposed to bytes that are
# no pickle at all (random or damaged bytes: "invalid load key", "Unsupported operand", "truncated", ...).
_CODE_WORDS = ("Unsupported global", "not an allowed global", "Unsupported class")


def asks_to_run_code(err: BaseException) -> bool:
    """True when a weights-only `torch.load` refused `err`'s file because unpickling it would run code; False when
    the file is damaged or of another format."""
    return any(word in str(err) for word in _CODE_WORDS)
