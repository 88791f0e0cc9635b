"""CacheWriter: create or reopen a cache directory and add immutable, atomically written shards to it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from aigi.cache.fingerprint import fingerprint, spec_diff
from aigi.cache.kinds import count_rows, shard_kind
from aigi.cache.layout import (
    CACHE_JSON,
    CLAIM_GLOB,
    CLAIM_RE,
    INDEX_JSON,
    JOBS_DIR,
    SHARD_DIR,
    SHARD_RE,
    TEMP_GLOB,
    errors_file,
    read_cache_json,
    read_index,
    write_index,
)
from aigi.cache.locking import folder_lock, owner_dead, owner_tag, remove_dead, temp_name, writing
from aigi.cache.shards import (
    DIGEST,
    DTYPES,
    ERROR_FIELDS,
    FORMATS,
    SCHEMA_VERSION,
    bytes_digest,
    check_features,
    file_digest,
    prepare_meta,
    write_bytes,
)
from aigi.common.files import atomic_write

# the layout names stay importable from here (`from aigi.cache.writer import CACHE_JSON, read_index`)
__all__ = [
    "CACHE_JSON",
    "CLAIM_GLOB",
    "CLAIM_RE",
    "INDEX_JSON",
    "JOBS_DIR",
    "SHARD_DIR",
    "SHARD_RE",
    "TEMP_GLOB",
    "CacheWriter",
    "check_compatible",
    "drop_shards",
    "job_plan",
    "make_header",
    "next_free_index",
    "read_cache_json",
    "read_index",
    "remove_dead_files",
    "shard_record",
    "taken_indices",
    "write_index",
]


def shard_record(file: Path, fmt: str | None = None) -> dict:
    """What the index records of a shard file: its row count, size and digest."""
    return {"rows": count_rows(file, fmt), "bytes": file.stat().st_size, DIGEST: file_digest(file)}


def taken_indices(path: Path) -> set[int]:
    """Shard numbers in use: indexed, present on disk, claimed by a writer, or reserved by a job plan."""
    path = Path(path)
    taken = {int(SHARD_RE.match(n).group(1)) for n in (read_index(path) or {}) if SHARD_RE.match(n)}
    shard_dir = path / SHARD_DIR
    for p in shard_dir.iterdir() if shard_dir.is_dir() else ():
        m = SHARD_RE.match(p.name) or CLAIM_RE.match(p.name)
        if m:
            taken.add(int(m.group(1)))
    for plan in (path / JOBS_DIR).glob("*.json") if (path / JOBS_DIR).is_dir() else ():
        info = json.loads(plan.read_text(encoding="utf-8"))
        taken.update(range(info["first_shard"], info["first_shard"] + info["n_shards"]))
    return taken


def next_free_index(path: Path) -> int:
    """The first shard number after every taken one (callers hold the cache lock)."""
    return max(taken_indices(path), default=-1) + 1


def job_plan(path: Path, key: str, make: Callable[[int], dict]) -> dict:
    """The job plan `jobs/<key>.json` of the cache at `path`, made once under the cache lock.

    When the plan exists it is read; otherwise `make(first)` builds it, with `first` the first shard number no
    shard, claim or other plan uses, and it is written atomically. Two writers starting one job get one plan.
    """
    path = Path(path)
    file = path / JOBS_DIR / f"{key}.json"
    with folder_lock(path):
        if file.is_file():
            return json.loads(file.read_text(encoding="utf-8"))
        plan = make(next_free_index(path))
        with writing(file):
            file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(file, json.dumps(plan, indent=1))
        return plan


def drop_shards(path: Path, indices: Iterable[int]) -> dict[str, dict]:
    """Delete shards (files, errors files and index entries) under the cache lock; return the index left."""
    path = Path(path)
    with folder_lock(path):
        shards = dict(read_index(path) or {})
        for index in indices:
            for file in (path / SHARD_DIR).glob(f"{int(index):05d}.*"):
                file.unlink(missing_ok=True)
                shards.pop(file.name, None)
        write_index(path, shards)
    return shards


def remove_dead_files(path: Path) -> list[Path]:
    """Delete temporary and claim files of writers of this host that died (never a live writer's)."""
    path = Path(path)
    removed = remove_dead(path, TEMP_GLOB) + remove_dead(path / JOBS_DIR, TEMP_GLOB)
    return removed + remove_dead(path / SHARD_DIR, TEMP_GLOB) + remove_dead(path / SHARD_DIR, CLAIM_GLOB)


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

    `append` buffers rows and writes full shards of `shard_size` rows at shard numbers it claims (`close` flushes
    the rest); `write_shard` writes one shard at an index fixed by the caller (the extract driver's plan). Every
    shard is written to a temporary name owned by this process, then committed under the cache lock: renamed into
    place and recorded in the shard index with its row count and digest. A crash leaves whole shards or none,
    several writers never take the same number, and a shard committed by another writer is never replaced.
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
        self.kind = shard_kind(fmt)  # the storage class of this cache's shards: suffix and encoding
        with writing(self.path, "creating the cache"):
            (self.path / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        self.lock = folder_lock(self.path)
        with self.lock:
            if (self.path / CACHE_JSON).exists():
                check_compatible(read_cache_json(self.path), self.header, where=str(self.path / CACHE_JSON))
            else:
                atomic_write(self.path / CACHE_JSON, json.dumps(self.header, indent=2))
            remove_dead_files(self.path)
            if read_index(self.path) is None:  # a new cache, or one written before shard indexes: record its shards
                write_index(self.path, {p.name: shard_record(p) for p in self._shard_files()})
        self._meta: list[pd.DataFrame] = []
        self._feats: list[dict[str, np.ndarray]] = []
        self._errors: list[dict] = []
        self._buffered = 0

    @property
    def fingerprint(self) -> str:
        """The cache's fingerprint."""
        return self.header["fingerprint"]

    def shard_path(self, index: int) -> Path:
        """Final path of shard `index`."""
        return self.path / SHARD_DIR / f"{int(index):05d}{self.kind.suffix}"

    def errors_path(self, index: int) -> Path:
        """Path of the error records of shard `index`."""
        return errors_file(self.shard_path(index))

    def _shard_files(self) -> list[Path]:
        return sorted(p for p in (self.path / SHARD_DIR).iterdir() if SHARD_RE.match(p.name))

    def shard_done(self, index: int) -> bool:
        """True when shard `index` was committed (resume skips it)."""
        return self.shard_path(index).name in (read_index(self.path) or {})

    def done_indices(self) -> list[int]:
        """Indices of the committed shards, sorted."""
        found = (SHARD_RE.match(name) for name in read_index(self.path) or {})
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
        tmp = temp_name(path)
        try:
            with writing(path):
                # the errors file goes first: a committed shard always has its errors beside it
                atomic_write(self.errors_path(index), json.dumps(errors, indent=1))
                data = self.kind.encode(header=self.header, meta=meta, feats=feats)
                write_bytes(tmp, data, shown=path)
                record = {"rows": len(meta), "bytes": len(data), DIGEST: bytes_digest(data)}
                with self.lock:
                    shards = read_index(self.path) or {}
                    if path.name not in shards:  # another writer of the same plan may have committed it first
                        os.replace(tmp, path)
                        shards[path.name] = record
                        write_index(self.path, shards)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def claim_shard(self, index: int) -> Path | None:
        """Claim planned shard `index` for this process (a create-exclusive claim file; delete it when done).

        Returns None when the shard is committed or another live writer holds it; a dead writer's claim is taken
        over. Two processes running one plan thus split its shards instead of both extracting every one.
        """
        mine = self.path / SHARD_DIR / f".{index:05d}.claim-{owner_tag()}"
        with self.lock:
            if self.shard_done(index):
                return None
            for other in (self.path / SHARD_DIR).glob(f".{index:05d}.claim-*"):
                if other != mine and not owner_dead(other.name):
                    return None
                other.unlink(missing_ok=True)
            with writing(mine):
                mine.open("x").close()
            return mine

    def _claim(self) -> tuple[int, Path]:
        """Claim the next free shard number with a create-exclusive claim file owned by this process."""
        with self.lock:
            while True:
                index = next_free_index(self.path)
                claim = self.path / SHARD_DIR / f".{index:05d}.claim-{owner_tag()}"
                try:
                    with writing(claim):
                        claim.open("x").close()
                    return index, claim
                except FileExistsError:
                    continue

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
        index, claim = self._claim()
        try:
            self._write(index, meta.iloc[:n].reset_index(drop=True), {k: v[:n] for k, v in feats.items()}, self._errors)
        finally:
            claim.unlink(missing_ok=True)
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
