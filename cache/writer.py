"""CacheWriter: create or reopen a cache directory and add immutable, atomically written shards to it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from cache.fingerprint import fingerprint, spec_diff
from cache.shards import (
    DTYPES,
    ERROR_FIELDS,
    FORMATS,
    SCHEMA_VERSION,
    SUFFIX,
    check_features,
    prepare_meta,
    write_h5,
    write_parquet,
)
from common.files import atomic_write

CACHE_JSON = "cache.json"
SHARD_DIR = "shards"
SHARD_RE = re.compile(r"^(\d{5,})\.(h5|parquet)$")


def make_header(*, spec: dict, features: dict[str, tuple[int, ...]], fmt: str, dtype: str) -> dict:
    """The content of cache.json for these settings."""
    return {
        "schema_version": SCHEMA_VERSION,
        "format": fmt,
        "spec": spec,
        "fingerprint": fingerprint(spec),
        "features": {name: [int(d) for d in shape] for name, shape in features.items()},
        "dtype": dtype,
    }


def read_cache_json(path: Path) -> dict:
    """Read `path/cache.json`, raising a clear error when it is missing or not valid JSON."""
    file = Path(path) / CACHE_JSON
    try:
        header = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{file} does not exist: {path} is not a feature cache directory") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON ({err}); restore it or rebuild the cache") from None
    missing = [k for k in ("schema_version", "format", "spec", "fingerprint", "features", "dtype") if k not in header]
    if missing:
        raise ValueError(f"{file} lacks key(s) {missing}; it was not written by this version of aigi")
    return header


def check_compatible(old: dict, new: dict, *, where: str) -> None:
    """Raise a ValueError naming what differs when `new` settings do not fit an existing cache header `old`."""
    if old["fingerprint"] != new["fingerprint"]:
        diff = "; ".join(spec_diff(old["spec"], new["spec"])) or "spec differs"
        raise ValueError(
            f"{where}: fingerprint mismatch (cache {old['fingerprint'][:12]}, new {new['fingerprint'][:12]}); "
            f"differing spec fields: {diff}. Write to a new cache directory instead."
        )
    for key in ("format", "features", "dtype", "schema_version"):
        if old[key] != new[key]:
            raise ValueError(f"{where}: {key} is {old[key]!r} in the cache but {new[key]!r} was requested")


def _check_settings(features: dict, fmt: str, dtype: str, shard_size: int) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown cache format {fmt!r}; choose one of {FORMATS}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown cache dtype {dtype!r}; choose one of {DTYPES}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if not features:
        raise ValueError("a cache needs at least one feature")
    bad = [n for n in features if not n or "/" in n]
    if bad:
        raise ValueError(f"feature names {bad} are invalid: names must be non-empty and contain no '/'")


class CacheWriter:
    """Writes shards into a cache directory; reopening an existing directory checks it has the same fingerprint.

    `append` buffers rows and writes full shards of `shard_size` rows at the next free index (`close` flushes the
    rest); `write_shard` writes one shard at an index fixed by the caller (the extract driver). Every shard is
    written to a temporary name and `os.replace`d, so a crash leaves whole shards or none.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        spec: dict,
        features: dict[str, tuple[int, ...]],
        fmt: str = "h5",
        shard_size: int = 4096,
        dtype: str = "float16",
    ) -> None:
        _check_settings(features, fmt, dtype, shard_size)
        self.path = Path(path)
        self.shard_size = int(shard_size)
        self.header = make_header(spec=spec, features=features, fmt=fmt, dtype=dtype)
        self.features = {n: tuple(int(d) for d in s) for n, s in features.items()}
        self.fmt, self.dtype = fmt, dtype
        (self.path / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        if (self.path / CACHE_JSON).exists():
            check_compatible(read_cache_json(self.path), self.header, where=str(self.path / CACHE_JSON))
        else:
            atomic_write(self.path / CACHE_JSON, json.dumps(self.header, indent=2))
        self._meta: list[pd.DataFrame] = []
        self._feats: list[dict[str, np.ndarray]] = []
        self._errors: list[dict] = []
        self._buffered = 0
        self._next = max(self.done_indices(), default=-1) + 1

    @property
    def fingerprint(self) -> str:
        """The cache's fingerprint."""
        return self.header["fingerprint"]

    def shard_path(self, index: int) -> Path:
        """Final path of shard `index`."""
        return self.path / SHARD_DIR / f"{int(index):05d}{SUFFIX[self.fmt]}"

    def errors_path(self, index: int) -> Path:
        """Path of the error records of shard `index`."""
        return self.path / SHARD_DIR / f"{int(index):05d}.errors.json"

    def shard_done(self, index: int) -> bool:
        """True when shard `index` was already written completely (resume skips it)."""
        return self.shard_path(index).exists()

    def done_indices(self) -> list[int]:
        """Indices of the finished shards, sorted."""
        found = (SHARD_RE.match(p.name) for p in (self.path / SHARD_DIR).iterdir())
        return sorted(int(m.group(1)) for m in found if m and m.group(2) == self.fmt)

    def _validate(self, meta: pd.DataFrame, feats: dict, errors: Iterable[dict], where: str):
        meta = prepare_meta(meta, where=where)
        feats = check_features(feats, shapes=self.features, n=len(meta), dtype=self.dtype, where=where)
        errors = [_error_record(e, where=where) for e in errors]
        return meta, feats, errors

    def write_shard(
        self, index: int, meta: pd.DataFrame, feats: dict[str, np.ndarray], errors: Iterable[dict] = ()
    ) -> Path:
        """Validate and atomically write shard `index` (0 rows is allowed) and its errors file; return its path."""
        meta, feats, errors = self._validate(meta, feats, errors, where=f"shard {self.shard_path(index)}")
        return self._write(index, meta, feats, errors)

    def _write(self, index: int, meta: pd.DataFrame, feats: dict[str, np.ndarray], errors: list[dict]) -> Path:
        path = self.shard_path(index)
        for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a killed writer of this very shard
            stale.unlink(missing_ok=True)
        # the errors file goes first: a finished shard always has its errors beside it
        atomic_write(self.errors_path(index), json.dumps(errors, indent=1))
        if self.fmt == "h5":
            write_h5(path, header=self.header, meta=meta, feats=feats)
        else:
            write_parquet(path, header=self.header, meta=meta, feats=feats)
        return path

    def append(self, meta: pd.DataFrame, feats: dict[str, np.ndarray], errors: Iterable[dict] = ()) -> None:
        """Buffer rows (validated now) and write every full shard of `shard_size` rows."""
        meta, feats, errors = self._validate(meta, feats, errors, where=f"append to {self.path}")
        self._meta.append(meta)
        self._feats.append(feats)
        self._errors.extend(errors)
        self._buffered += len(meta)
        while self._buffered >= self.shard_size:
            self._flush(self.shard_size)

    def _flush(self, n: int) -> None:
        meta = pd.concat(self._meta, ignore_index=True) if len(self._meta) > 1 else self._meta[0]
        feats = {
            k: np.concatenate([f[k] for f in self._feats]) if len(self._feats) > 1 else self._feats[0][k]
            for k in self.features
        }
        # failed images have no rows: their records go with the next shard written
        self._write(
            self._next, meta.iloc[:n].reset_index(drop=True), {k: v[:n] for k, v in feats.items()}, self._errors
        )
        self._next += 1
        rest = meta.iloc[n:].reset_index(drop=True)
        self._meta = [rest] if len(rest) else []
        self._feats = [{k: v[n:] for k, v in feats.items()}] if len(rest) else []
        self._errors = []
        self._buffered = len(rest)

    def close(self) -> None:
        """Write the buffered rows (and buffered errors) as a last, shorter shard."""
        if self._buffered or self._errors:
            if not self._buffered:
                empty = {k: np.zeros((0, *s), dtype=self.dtype) for k, s in self.features.items()}
                self._meta = [prepare_meta(pd.DataFrame(columns=["image_id", "path", "label", "source"]), where="")]
                self._feats = [empty]
            self._flush(self._buffered)

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()  # on an exception the buffer is dropped: only whole shards written so far remain


def _error_record(err: dict, *, where: str) -> dict:
    missing = [k for k in ("image_id", "path", "reason") if k not in err]
    if missing:
        raise ValueError(f"{where}: error record {err!r} lacks {missing}; expected keys {ERROR_FIELDS}")
    return {
        "image_id": str(err["image_id"]),
        "path": str(err["path"]),
        "view": str(err.get("view", "orig")),
        "reason": str(err["reason"]),
    }
