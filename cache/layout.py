"""The layout of a cache directory: its file names, `cache.json`, and the shard index `index.json`."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

from aigi.cache.shards import DIGEST, DTYPES, FORMATS
from aigi.common.files import atomic_write

CACHE_JSON = "cache.json"
INDEX_JSON = "index.json"  # the shard index: name -> rows, bytes, digest of every committed shard
SHARD_DIR = "shards"
JOBS_DIR = "jobs"  # job plans (`<key>.json` with first_shard, n_shards) reserve a range of shard numbers
SHARD_RE = re.compile(r"^(\d{5,})\.(h5|parquet)$")
CLAIM_RE = re.compile(r"^\.(\d{5,})\.claim-")
TEMP_GLOB = ".*.tmp-*"
CLAIM_GLOB = ".*.claim-*"
HEADER_KEYS = ("schema_version", "format", "spec", "fingerprint", "features", "dtype")
QUARANTINE_DIR = "quarantine"  # what `aigi cache repair` takes out of the cache: quarantine/<when>/...
PENDING = "next"  # an index entry's record of the shard's rewrite in progress (`aigi cache repair`), then its own


def errors_file(shard: Path) -> Path:
    """The error records written beside a shard: `NNNNN.errors.json` for `NNNNN.h5` or `NNNNN.parquet`."""
    return shard.with_name(shard.name.split(".")[0] + ".errors.json")


def _regular_text(file: Path) -> str:
    """The text of `file`; refuses what is not a regular file (a folder, a FIFO that would block, a device).

    Raises:
        FileNotFoundError: when it does not exist.
        ValueError: when it is not a regular file or not UTF-8 text.
    """
    mode = file.stat().st_mode  # FileNotFoundError when missing
    if not stat.S_ISREG(mode):
        raise ValueError(f"{file} is not a regular file")
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{file} is not UTF-8 text ({err.reason} at byte {err.start})") from None


def record_problem(name: object, record: object) -> str:
    """Why a shard index entry cannot be trusted ("" when it can): a name that is not a shard file's, a record that
    is not a mapping of rows, bytes and digest (non-negative integers and 64 hex digits), a bad pending record."""
    if not isinstance(name, str) or not SHARD_RE.match(name):
        return f"{name!r} is not a shard file name (NNNNN.h5 or NNNNN.parquet)"
    if not isinstance(record, dict):
        return f"its record is {type(record).__name__} {str(record)[:40]!r}, not a mapping of rows, bytes, {DIGEST}"
    for key in ("rows", "bytes"):
        value = record.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return f"its {key!r} is {value!r}, not a count"
    digest = record.get(DIGEST)
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        return f"its {DIGEST!r} is {str(digest)[:20]!r}, not 64 hex digits"
    if PENDING in record:
        why = record_problem(name, record[PENDING])
        return f"its pending rewrite: {why}" if why else ""
    return ""


def load_index(path: Path) -> tuple[dict[str, dict] | None, str, dict[str, str]]:
    """The shard index as far as it can be trusted, for `aigi cache repair`.

    Returns:
        The valid entries (None when there is no index: a cache written before shard indexes; {} when the file
        cannot be read as an index at all), why the whole file cannot be used ("" when it can), and the damaged
        entries left out (name -> why).
    """
    file = Path(path) / INDEX_JSON
    try:
        data = json.loads(_regular_text(file))
    except FileNotFoundError:
        return None, "", {}
    except (OSError, ValueError, RecursionError) as err:
        return {}, f"{file} cannot be read ({' '.join(str(err).split())[:120]})", {}
    if not isinstance(data, dict) or not isinstance(data.get("shards"), dict):
        return {}, f"{file} has no 'shards' mapping", {}
    entries, bad = {}, {}
    for name, record in data["shards"].items():
        why = record_problem(name, record)
        if why:
            bad[str(name)] = why
        else:
            entries[name] = record
    return entries, "", bad


def read_index(path: Path) -> dict[str, dict] | None:
    """The shard index of the cache at `path` (shard file name -> rows, bytes, digest), None when it has none.

    Raises:
        ValueError: when it is damaged (unreadable, not a mapping, an entry that is not a shard's record), naming
            the problem and `aigi cache repair`.
    """
    entries, whole, bad = load_index(path)
    if whole or bad:
        problem = whole or next(f"{Path(path) / INDEX_JSON}: entry {n[:80]!r}: {why}" for n, why in bad.items())
        raise ValueError(f"{problem}; run `aigi cache repair {path}` to rebuild it from the shards")
    return entries


def write_index(path: Path, shards: dict[str, dict]) -> None:
    """Write the shard index atomically (callers hold the cache lock)."""
    body = {"version": 1, "digest": DIGEST, "shards": dict(sorted(shards.items()))}
    atomic_write(Path(path) / INDEX_JSON, json.dumps(body, indent=1))


def header_problem(header: object) -> str:
    """Why a cache header (cache.json, or the copy a shard stores) cannot be used ("" when it can)."""
    if not isinstance(header, dict):
        return f"it is {type(header).__name__}, not a mapping"
    missing = [k for k in HEADER_KEYS if k not in header]
    if missing:
        return f"it lacks key(s) {missing}; it was not written by this version of aigi"
    features = header["features"]
    if not isinstance(features, dict) or not features:
        return f"'features' is {type(features).__name__}, not a mapping NAME: SHAPE"
    for name, shape in features.items():
        ok = isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
        if not name or "/" in name or not ok:
            return f"feature {name!r} has shape {shape!r}, not a list of positive integers"
    if header["format"] not in FORMATS or header["dtype"] not in DTYPES:
        return f"format {header['format']!r} / dtype {header['dtype']!r} is not one of {FORMATS} / {DTYPES}"
    if not isinstance(header["fingerprint"], str) or not isinstance(header["spec"], dict):
        return "'fingerprint' is not a string or 'spec' not a mapping"
    return ""


def read_cache_json(path: Path) -> dict:
    """Read `path/cache.json`, raising a clear error when it is missing, not valid JSON or not a cache header."""
    file = Path(path) / CACHE_JSON
    try:
        header = json.loads(_regular_text(file))
    except FileNotFoundError:
        raise FileNotFoundError(f"{file} does not exist: {path} is not a feature cache directory") from None
    except (json.JSONDecodeError, ValueError, RecursionError) as err:
        raise ValueError(
            f"{file} is not valid JSON ({' '.join(str(err).split())[:120]}); run `aigi cache repair {path}` to "
            "rebuild it from the shards, or restore it"
        ) from None
    why = header_problem(header)
    if why:
        raise ValueError(f"{file} is damaged: {why}; run `aigi cache repair {path}` to rebuild it from the shards")
    return header
