"""Whole-cache operations: compact into one self-describing .h5, verify integrity, summarise."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from cache.reader import Cache, open_cache
from cache.shards import ERRORS_KEY, HEADER_KEY, meta_columns_h5, read_header
from cache.writer import SHARD_DIR
from common.files import atomic_path


def compact(src: str | Path, out_h5: str | Path) -> Path:
    """Write every row of `src` (anything `cache.open` reads) into one self-describing HDF5 file, atomically."""
    cache = open_cache(src)
    out = Path(out_h5)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = cache.meta()
    header = {**cache.header, "format": "h5"}  # whatever the source was (Parquet, a UAR folder), this is HDF5
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        f.attrs[HEADER_KEY] = json.dumps(header)
        f.attrs["n_rows"] = len(meta)
        f.attrs[ERRORS_KEY] = json.dumps(cache.errors())
        group = f.create_group("meta")
        for col, values in meta_columns_h5(meta).items():
            group.create_dataset(col, data=values)
        feats = f.create_group("features")
        for name, shape in cache.features.items():
            feats.create_dataset(name, shape=(len(meta), *shape), dtype=cache.dtype)
        offset = 0
        for batch in cache.iter_batches(65536, dtype=cache.dtype):
            for name, arr in batch.features.items():
                feats[name][offset : offset + len(batch)] = arr
            offset += len(batch)
    return out


def _check_part(part, cache: Cache) -> tuple[list[str], int]:
    """Problems found in one shard/file, and its row count."""
    problems: list[str] = []
    try:
        meta = part.meta()
        feats = part.features(list(cache.features))
    except Exception as err:  # any unreadable shard is a problem to list, not a crash
        return [f"{part.path}: unreadable ({type(err).__name__}: {err})"], 0
    for name, arr in feats.items():
        if arr.shape != (len(meta), *cache.features[name]):
            problems.append(f"{part.path}: feature {name!r} has shape {arr.shape}, meta has {len(meta)} rows")
        elif not np.isfinite(arr).all():
            problems.append(f"{part.path}: feature {name!r} holds NaN/inf values")
    if len(meta) != part.n:
        problems.append(f"{part.path}: row count {part.n} in the header but {len(meta)} meta rows")
    if isinstance(part.path, Path) and part.path.suffix in (".h5", ".parquet"):
        own = read_header(part.path)
        if own is not None and own["fingerprint"] != cache.fingerprint:
            problems.append(f"{part.path}: fingerprint {own['fingerprint'][:12]} differs from the cache's")
    return problems, len(meta)


def verify(path: str | Path) -> dict:
    """Check that every shard is readable, row counts agree, features are finite, one fingerprint, unique keys.

    Returns:
        A summary dict (rows, shards, fingerprint, errors, stale temporary files).

    Raises:
        ValueError: listing every problem found.
    """
    cache = open_cache(path)
    problems: list[str] = []
    rows = 0
    for part in cache.parts:
        found, n = _check_part(part, cache)
        problems += found
        rows += n
    if not problems:
        meta = cache.meta()
        dup = meta.duplicated(subset=["image_id", "view"], keep=False)
        if dup.any():
            keys = meta.loc[dup, ["image_id", "view", "path"]].drop_duplicates(["image_id", "view"])
            example = keys.head(2).to_dict("records")
            problems.append(
                f"{path}: {len(keys)} (image_id, view) key(s) occur on several rows ({int(dup.sum())} "
                f"rows), e.g. {example}; rebuild the cache or drop the repeated shard"
            )
    stale = []
    if cache.kind == "dir":
        stale = sorted(p.name for p in (Path(path) / SHARD_DIR).glob(".*.tmp-*"))
    if problems:
        raise ValueError(f"{path}: {len(problems)} problem(s): " + " | ".join(problems))
    return {
        "path": str(path),
        "ok": True,
        "rows": rows,
        "shards": len(cache.parts),
        "fingerprint": cache.fingerprint,
        "errors": len(cache.errors()),
        "stale_temp_files": stale,
    }


def info(path: str | Path) -> dict:
    """`cache.open(path).info()`: rows, features and dims, sources, splits, views, bytes on disk, fingerprint."""
    return open_cache(path).info()
