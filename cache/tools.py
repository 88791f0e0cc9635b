"""Whole-cache operations: compact into one self-describing .h5, verify integrity, summarise."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from aigi.cache.locking import folder_lock, remove_dead, temp_name, writing
from aigi.cache.reader import Cache, open_cache
from aigi.cache.shards import (
    DIGEST,
    ERRORS_KEY,
    HEADER_KEY,
    count_rows,
    file_digest,
    meta_columns_h5,
    prepare_meta,
    read_features,
    read_header,
    write_h5,
    write_parquet,
)
from aigi.cache.writer import (
    CACHE_JSON,
    INDEX_JSON,
    SHARD_DIR,
    SHARD_RE,
    TEMP_GLOB,
    read_index,
    remove_dead_files,
    shard_record,
    write_index,
)
from aigi.common.files import atomic_path


def compact(src: str | Path, out_h5: str | Path) -> Path:
    """Write every row of `src` (anything `cache.open` reads) into one self-describing HDF5 file, atomically."""
    cache = open_cache(src)
    out = Path(out_h5)
    with writing(out):
        out.parent.mkdir(parents=True, exist_ok=True)
    remove_dead(out.parent, f".{out.name}.tmp-*")  # left by a killed compact
    meta = cache.meta()
    header = {**cache.header, "format": "h5"}  # whatever the source was (Parquet, a UAR folder), this is HDF5
    # through a Python file object: a full disk raises a clean OSError instead of failing inside HDF5's close
    with atomic_path(out) as tmp, open(tmp, "w+b") as fh, h5py.File(fh, "w") as f:
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


def _check_part(part, cache: Cache) -> tuple[list[str], pd.DataFrame | None]:
    """Problems found in one shard/file, and its meta rows when it has none."""
    if getattr(part, "broken", ""):
        return [f"{part.path}: {part.broken}"], None
    record = getattr(part, "record", None)
    if record is not None and file_digest(part.path) != record.get(DIGEST):
        return [f"{part.path}: bytes differ from the digest recorded at commit (changed or damaged file)"], None
    problems: list[str] = []
    try:
        meta = part.meta()
        feats = part.features(list(cache.features))
    except Exception as err:  # any unreadable shard is a problem to list, not a crash
        return [f"{part.path}: unreadable ({type(err).__name__}: {err})"], None
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
    return problems, (None if problems else meta)


def _inspect(path: Path) -> dict:
    """Everything verify checks, kept apart so that repair can act on it."""
    store = open_cache(path, keep_duplicates=True)
    problems: list[str] = []
    bad, good = [], []
    for part in store.parts:
        found, meta = _check_part(part, store)
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
    (root / SHARD_DIR / name).unlink(missing_ok=True)
    (root / SHARD_DIR / (name.split(".")[0] + ".errors.json")).unlink(missing_ok=True)
    return int((index.pop(name, None) or {}).get("rows", 0))


def _rewrite(root: Path, name: str, meta: pd.DataFrame, keep: np.ndarray, header: dict, index: dict) -> None:
    """Write shard `name` again with only the `keep` rows, and record it."""
    path = root / SHARD_DIR / name
    feats = read_features(path, list(header["features"]), header=header)
    tmp = temp_name(path)
    try:
        write = write_h5 if header["format"] == "h5" else write_parquet
        rows = prepare_meta(meta[keep].drop(columns=["_part"], errors="ignore"), where=str(path))
        write(tmp, header=header, meta=rows, feats={k: v[keep] for k, v in feats.items()})
        record = shard_record(tmp, header["format"])
        os.replace(tmp, path)
        index[name] = record
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
            _rewrite(root, part.path.name, meta, keep, header, index)
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
