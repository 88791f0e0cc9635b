"""Whole-cache operations: compact into one self-describing .h5, verify integrity, summarise."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from aigi.cache.hdf5 import CompactedH5
from aigi.cache.kinds import count_rows
from aigi.cache.layout import (
    CACHE_JSON,
    INDEX_JSON,
    SHARD_DIR,
    SHARD_RE,
    TEMP_GLOB,
    errors_file,
    read_index,
    write_index,
)
from aigi.cache.locking import folder_lock, remove_dead, temp_name, writing
from aigi.cache.reader import open_cache
from aigi.cache.shards import prepare_meta, write_bytes
from aigi.cache.storage import ShardFile
from aigi.cache.writer import remove_dead_files, shard_record


def compact(src: str | Path, out_h5: str | Path) -> Path:
    """Write every row of `src` (anything `cache.open` reads) into one self-describing HDF5 file, atomically."""
    cache = open_cache(src)
    out = Path(out_h5)
    with writing(out):
        out.parent.mkdir(parents=True, exist_ok=True)
    remove_dead(out.parent, f".{out.name}.tmp-*")  # left by a killed compact
    meta = cache.meta()
    header = {**cache.header, "format": "h5"}  # whatever the source was (Parquet, a UAR folder), this is HDF5
    batches = (batch.features for batch in cache.iter_batches(65536, dtype=cache.dtype))
    CompactedH5.write(out, header=header, meta=meta, errors=cache.errors(), batches=batches)
    return out


def _inspect(path: Path) -> dict:
    """Everything verify checks, kept apart so that repair can act on it."""
    store = open_cache(path, keep_duplicates=True)
    problems: list[str] = []
    bad, good = [], []
    for part in store.parts:
        found, meta = part.verify()
        problems += found
        (bad if found else good).append((part, meta))
    metas = [m.assign(_part=i) for i, (_, m) in enumerate(good)]
    keys = pd.concat(metas, ignore_index=True) if metas else pd.DataFrame(columns=["image_id", "view", "path"])
    dup = keys.duplicated(subset=["image_id", "view"], keep=False)
    if dup.any():
        first = keys.loc[dup, ["image_id", "view", "path"]].drop_duplicates(["image_id", "view"])
        problems.append(
            f"{path}: {len(first)} (image_id, view) key(s) occur on several rows ({int(dup.sum())} rows), "
            f"e.g. {first.head(2).to_dict('records')}"
        )
    orphans, stale, index = [], [], None
    if store.kind == "dir":
        shard_dir = Path(path) / SHARD_DIR
        index = read_index(Path(path))
        if index is None:
            problems.append(f"{path}: no {INDEX_JSON}, so shard digests were never recorded")
        else:
            orphans = sorted(p for p in shard_dir.iterdir() if SHARD_RE.match(p.name) and p.name not in index)
            problems += [f"{p}: not recorded in {INDEX_JSON} (an interrupted commit or a copied file)" for p in orphans]
        stale = sorted(p.name for p in shard_dir.glob(TEMP_GLOB))
    return {
        "store": store,
        "problems": problems,
        "bad": [p for p, _ in bad],
        "good": good,
        "orphans": orphans,
        "stale": stale,
        "rows": sum(len(m) for _, m in good),
    }


def verify(path: str | Path) -> dict:
    """Check every recorded shard exists and matches its digest and row count, is readable and finite, has the
    cache's fingerprint, no (image_id, view) key repeats and no shard file is left out of the index.

    Returns:
        A summary dict (rows, shards, fingerprint, errors, stale temporary files).

    Raises:
        ValueError: listing every problem found (`aigi cache repair` fixes them).
    """
    found = _inspect(Path(path))
    if found["problems"]:
        raise ValueError(
            f"{path}: {len(found['problems'])} problem(s): "
            + " | ".join(found["problems"])
            + f"; `aigi cache repair {path}` drops them (re-run the import or extract to re-create dropped rows)"
        )
    store = found["store"]
    return {
        "path": str(path),
        "ok": True,
        "rows": found["rows"],
        "shards": len(store.parts),
        "fingerprint": store.fingerprint,
        "errors": len(store.errors()),
        "stale_temp_files": found["stale"],
    }


def _drop(root: Path, name: str, index: dict) -> int:
    """Delete a shard file and its errors file and forget it; return the rows it was recorded with."""
    shard = root / SHARD_DIR / name
    shard.unlink(missing_ok=True)
    errors_file(shard).unlink(missing_ok=True)
    return int((index.pop(name, None) or {}).get("rows", 0))


def _rewrite(part: ShardFile, meta: pd.DataFrame, keep: np.ndarray, header: dict, index: dict) -> None:
    """Write shard `part` again, in its own kind, with only the `keep` rows, and record it."""
    path = part.path
    feats = part.read(list(header["features"]))
    tmp = temp_name(path)
    try:
        rows = prepare_meta(meta[keep].drop(columns=["_part"], errors="ignore"), where=str(path))
        write_bytes(tmp, part.encode(header=header, meta=rows, feats={k: v[keep] for k, v in feats.items()}))
        record = shard_record(tmp, part.fmt)
        os.replace(tmp, path)
        index[path.name] = record
    finally:
        tmp.unlink(missing_ok=True)


def _dedupe(root: Path, good: list, header: dict, index: dict) -> tuple[int, list[str]]:
    """Keep the first row of every (image_id, view) key in shard order; return rows dropped and shards rewritten."""
    seen: set[tuple[str, str]] = set()
    dropped, rewritten = 0, []
    for part, meta in good:
        keys = list(zip(meta["image_id"].astype(str), meta["view"].astype(str)))
        keep = np.array([k not in seen and not seen.add(k) for k in keys], dtype=bool)
        if keep.all():
            continue
        dropped += int((~keep).sum())
        if keep.any():
            _rewrite(part, meta, keep, header, index)
            rewritten.append(part.path.name)
        else:
            _drop(root, part.path.name, index)
    return dropped, rewritten


def repair(path: str | Path) -> dict:
    """Make a cache directory sound again: drop the shards verify names (missing, changed, unreadable, foreign),
    delete shard files not in the index, keep one row per repeated (image_id, view) key, remove dead writers'
    temporary files, and record an index for a cache written before shard indexes existed.

    Dropped rows are re-created by running the same `aigi extract` or `aigi import uar` again (both resume).

    Returns:
        What was done: dropped shards and their rows, rows dropped as repeats, rewritten shards, removed files.
    """
    root = Path(path)
    if not (root / CACHE_JSON).is_file():
        raise ValueError(f"{root}: repair works on a cache directory (with {CACHE_JSON}); re-create other files")
    with folder_lock(root):
        removed = [p.name for p in remove_dead_files(root)]
        if read_index(root) is None:
            files = sorted(p for p in (root / SHARD_DIR).iterdir() if SHARD_RE.match(p.name))
            write_index(root, {p.name: shard_record(p) for p in files if _readable(p)})
        found = _inspect(root)
        index = dict(read_index(root) or {})
        dropped = {p.path.name: _drop(root, p.path.name, index) for p in found["bad"]}
        for orphan in found["orphans"]:
            orphan.unlink(missing_ok=True)
            removed.append(orphan.name)
        repeats, rewritten = _dedupe(root, found["good"], found["store"].header, index)
        write_index(root, index)
    return {"dropped_shards": dropped, "repeated_rows_dropped": repeats, "rewritten": rewritten, "removed": removed}


def _readable(file: Path) -> bool:
    try:
        count_rows(file)
    except Exception:  # unreadable files are not recorded; repair then deletes them as orphans
        return False
    return True


def info(path: str | Path) -> dict:
    """`cache.open(path).info()`: rows, features and dims, sources, splits, views, bytes on disk, fingerprint."""
    return open_cache(path, keep_duplicates=True).info()
