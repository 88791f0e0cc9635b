"""The layout of a cache directory: its file names, `cache.json`, and the shard index `index.json`."""

from __future__ import annotations

import json
import re
from pathlib import Path

from aigi.cache.shards import DIGEST
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


def errors_file(shard: Path) -> Path:
    """The error records written beside a shard: `NNNNN.errors.json` for `NNNNN.h5` or `NNNNN.parquet`."""
    return shard.with_name(shard.name.split(".")[0] + ".errors.json")


def read_index(path: Path) -> dict[str, dict] | None:
    """The shard index of the cache at `path` (shard file name -> rows, bytes, digest), None when it has none."""
    file = Path(path) / INDEX_JSON
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{file} is damaged ({err}); run `aigi cache repair {path}` to rebuild it") from None
    if not isinstance(data, dict) or not isinstance(data.get("shards"), dict):
        raise ValueError(f"{file} has no 'shards' mapping; run `aigi cache repair {path}` to rebuild it")
    return data["shards"]


def write_index(path: Path, shards: dict[str, dict]) -> None:
    """Write the shard index atomically (callers hold the cache lock)."""
    body = {"version": 1, "digest": DIGEST, "shards": dict(sorted(shards.items()))}
    atomic_write(Path(path) / INDEX_JSON, json.dumps(body, indent=1))


def read_cache_json(path: Path) -> dict:
    """Read `path/cache.json`, raising a clear error when it is missing or not valid JSON."""
    file = Path(path) / CACHE_JSON
    try:
        header = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{file} does not exist: {path} is not a feature cache directory") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON ({err}); restore it or rebuild the cache") from None
    missing = [k for k in HEADER_KEYS if k not in header]
    if missing:
        raise ValueError(f"{file} lacks key(s) {missing}; it was not written by this version of aigi")
    return header
