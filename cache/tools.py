"""Whole-cache operations: compact into one self-describing .h5, verify integrity, summarise."""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from glob import escape
from pathlib import Path

import numpy as np
import pandas as pd

from aigi.cache.hdf5 import CompactedH5
from aigi.cache.kinds import count_rows, file_kind, shard_kind
from aigi.cache.layout import (
    CACHE_JSON,
    INDEX_JSON,
    PENDING,
    QUARANTINE_DIR,
    SHARD_DIR,
    SHARD_RE,
    TEMP_GLOB,
    errors_file,
    header_problem,
    load_index,
    read_cache_json,
    read_index,
    write_index,
)
from aigi.cache.locking import folder_lock, remove_dead, temp_name, writing
from aigi.cache.reader import open_cache
from aigi.cache.shards import DIGEST, bytes_digest, file_digest, prepare_meta, write_bytes
from aigi.cache.storage import ShardFile
from aigi.cache.writer import remove_dead_files, shard_record
from aigi.common.files import atomic_write, sibling_prefix


def compact(src: str | Path, out_h5: str | Path) -> Path:
    """Write every row of `src` (anything `cache.open` reads) into one self-describing HDF5 file, atomically."""
    cache = open_cache(src)
    out = Path(out_h5)
    with writing(out):
        out.parent.mkdir(parents=True, exist_ok=True)
    remove_dead(out.parent, f"{escape(sibling_prefix(out))}tmp-*")  # left by a killed compact
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


# ------------------------------------------------------------------------------------------------------- repair
# Repair never deletes a shard that may hold intact rows: what it takes out of the cache moves to
# quarantine/<when>/ inside it. Each step leaves a state the next repair completes: a shard file missing from the
# index is adopted when it verifies on its own and adds rows, a shard's rewrite is recorded in the index (PENDING)
# before the file is replaced, and the index is written after every step. A file it may not read is left alone.


class _Repair:
    """One repair of the cache directory `root` (run under the cache lock): what it found and did."""

    def __init__(self, root: Path) -> None:
        self.root, self.shards = root, root / SHARD_DIR
        self.dropped: dict[str, int] = {}  # shard taken out of the index -> rows it was recorded with
        self.removed: list[str] = []  # files moved out of shards/ (or dead writers' temporary files deleted)
        self.adopted: list[str] = []  # shard files put (back) into the index
        self.entries_dropped: dict[str, str] = {}  # damaged index entries -> why
        self.rebuilt: list[str] = []  # cache.json / index.json made again
        self.unreadable: list[str] = []  # shards it may not read: left as they are
        self.rewritten: list[str] = []
        self.repeats = 0
        self.box: Path | None = None

    def quarantine_box(self) -> Path:
        """This repair's folder under quarantine/ (made on first use)."""
        if self.box is None:
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
            self.box = self.root / QUARANTINE_DIR / f"{stamp}-{os.getpid()}"
            self.box.mkdir(parents=True, exist_ok=True)
        return self.box

    def quarantine(self, path: Path) -> None:
        """Move `path` (with a shard's errors file) into the quarantine folder, keeping its name."""
        box = self.quarantine_box()
        for item in [path, *([errors_file(path)] if SHARD_RE.match(path.name) else [])]:
            if item.exists() or item.is_symlink():
                os.replace(item, box / item.name)

    def keep_copy(self, path: Path) -> None:
        """Keep the bytes of a shard about to be rewritten in the quarantine folder (a hard link where possible)."""
        dest = self.quarantine_box() / path.name
        dest.unlink(missing_ok=True)
        try:
            os.link(path, dest)
        except OSError:  # a file system without hard links
            shutil.copy2(path, dest)

    def take_out(self, name: str, rows: int) -> None:
        """Quarantine the shard file `name` that leaves the index, recorded with `rows` rows."""
        self.quarantine(self.shards / name)
        self.dropped[name] = rows

    def summary(self) -> dict:
        return {
            "dropped_shards": self.dropped,
            "repeated_rows_dropped": self.repeats,
            "rewritten": self.rewritten,
            "removed": self.removed,
            "adopted": self.adopted,
            "index_entries_dropped": self.entries_dropped,
            "rebuilt": self.rebuilt,
            "unreadable": self.unreadable,
            "quarantine": None if self.box is None else str(self.box),
        }


def _shard_files(folder: Path) -> list[Path]:
    """Every entry of the shards folder named like a shard (files, and also what should not be there), sorted."""
    return sorted(p for p in folder.iterdir() if SHARD_RE.match(p.name)) if folder.is_dir() else []


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False


def _header(rep: _Repair) -> dict:
    """cache.json, or when it is missing or damaged the header the shards store (most of them), written again."""
    try:
        return read_cache_json(rep.root)
    except (FileNotFoundError, ValueError) as err:
        found: dict[str, list[dict]] = {}
        for path in _shard_files(rep.shards):
            try:
                header = file_kind(path).read_header(path) if _regular(path) else None
            except Exception:  # an unreadable shard tells nothing
                continue
            if header is not None and not header_problem(header):
                found.setdefault(header["fingerprint"], []).append(header)
        if not found:
            raise ValueError(f"{err}; no shard holds a copy of the header either: restore {CACHE_JSON}") from None
        header = max(found.values(), key=len)[0]
    if (rep.root / CACHE_JSON).exists() or (rep.root / CACHE_JSON).is_symlink():
        rep.quarantine(rep.root / CACHE_JSON)
    atomic_write(rep.root / CACHE_JSON, json.dumps(header, indent=2))
    rep.rebuilt.append(CACHE_JSON)
    return header


def _index(rep: _Repair) -> dict[str, dict]:
    """The index entries that can be trusted; an index that cannot be read at all is quarantined."""
    entries, whole, bad = load_index(rep.root)
    rep.entries_dropped.update(bad)
    if entries is None or whole:
        if whole:
            rep.quarantine(rep.root / INDEX_JSON)
        rep.rebuilt.append(INDEX_JSON)
        return {}
    return entries


def _fresh(path: Path, fmt: str, record: dict) -> dict | None:
    """The record of an indexed shard whose bytes match `record`'s digest, counts checked; None when unreadable."""
    try:
        rows = count_rows(path, fmt)
    except Exception:  # committed bytes that cannot be read
        return None
    return {"rows": rows, "bytes": path.stat().st_size, DIGEST: record[DIGEST]}


def _check_indexed(rep: _Repair, header: dict, entries: dict[str, dict]) -> dict[str, dict]:
    """The indexed shards kept: bytes as recorded (or as a pending rewrite recorded), or not readable by us."""
    kept = {}
    for name, record in sorted(entries.items()):
        path = rep.shards / name
        if not (path.exists() or path.is_symlink()):
            rep.dropped[name] = record["rows"]
            continue
        if not _regular(path) or SHARD_RE.match(name).group(2) != header["format"]:
            rep.take_out(name, record["rows"])
            continue
        try:
            digest = file_digest(path)
        except PermissionError:
            rep.unreadable.append(name)
            kept[name] = record
            continue
        pending = record.get(PENDING)
        matched = record if digest == record[DIGEST] else pending if pending and digest == pending[DIGEST] else None
        fresh = None if matched is None else _fresh(path, header["format"], matched)
        if fresh is None:
            rep.take_out(name, record["rows"])
        else:
            kept[name] = fresh
    return kept


def _keys(meta: pd.DataFrame) -> list[tuple[str, str]]:
    return list(zip(meta["image_id"].astype(str), meta["view"].astype(str)))


def _adopt(rep: _Repair, header: dict, kept: dict[str, dict]) -> None:
    """Put shard files missing from the index back when they verify on their own and add rows; quarantine the rest.

    A file it may not read is left where it is."""
    kind, known = shard_kind(header["format"]), set()
    for name in sorted(kept):
        if name not in rep.unreadable:
            known.update(_keys(kind(rep.shards / name, header, record=kept[name]).meta()))
    for path in _shard_files(rep.shards):
        if path.name in kept:
            continue
        if _regular(path) and not os.access(path, os.R_OK):
            rep.unreadable.append(path.name)
            continue
        problems, meta = ["other kind"], None
        if _regular(path) and SHARD_RE.match(path.name).group(2) == header["format"]:
            problems, meta = kind(path, header).verify()
        keys = set() if meta is None else set(_keys(meta))
        if problems or not keys - known:  # damaged, or every row is already in the cache
            rep.quarantine(path)
            rep.removed.append(path.name)
            continue
        kept[path.name] = shard_record(path, header["format"])
        rep.adopted.append(path.name)
        known |= keys


def _rewrite(rep: _Repair, part: ShardFile, meta: pd.DataFrame, keep: np.ndarray, kept: dict[str, dict]) -> None:
    """Write shard `part` again with only its `keep` rows: the new record first (pending), then the file."""
    path, header = part.path, part.header
    feats = part.read(list(header["features"]))
    tmp = temp_name(path)
    try:
        rows = prepare_meta(meta[keep], where=str(path))
        data = part.encode(header=header, meta=rows, feats={k: v[keep] for k, v in feats.items()})
        write_bytes(tmp, data, shown=path)
        new = {"rows": int(keep.sum()), "bytes": len(data), DIGEST: bytes_digest(data)}
        kept[path.name] = {**kept[path.name], PENDING: new}
        write_index(rep.root, kept)
        rep.keep_copy(path)
        os.replace(tmp, path)
        kept[path.name] = new
        write_index(rep.root, kept)
    finally:
        tmp.unlink(missing_ok=True)


def _dedupe(rep: _Repair, header: dict, kept: dict[str, dict]) -> None:
    """Keep the first row of every (image_id, view) key in shard order; a shard of repeats alone is quarantined."""
    kind, seen = shard_kind(header["format"]), set()
    for name in sorted(kept):
        if name in rep.unreadable:
            continue
        part = kind(rep.shards / name, header, record=kept[name], errors_file=errors_file(rep.shards / name))
        meta = part.meta()
        keep = np.array([k not in seen and not seen.add(k) for k in _keys(meta)], dtype=bool)
        if keep.all():
            continue
        rep.repeats += int((~keep).sum())
        if keep.any():
            _rewrite(rep, part, meta, keep, kept)
            rep.rewritten.append(name)
        else:
            del kept[name]
            write_index(rep.root, kept)
            rep.quarantine(part.path)
            rep.removed.append(name)


def repair(path: str | Path) -> dict:
    """Make a cache directory sound again without losing an intact row.

    Dead writers' temporary files are deleted. A damaged cache.json is rebuilt from the header the shards store, an
    unreadable index.json from the shards. Indexed shards whose bytes differ from their recorded digest, missing
    ones and damaged index entries leave the index; shard files missing from it are adopted when they verify on
    their own and add rows; one row per repeated (image_id, view) key is kept. Whatever leaves the cache is moved
    to `quarantine/<when>/` inside it, never deleted; a file it may not read is left alone and reported. A repair
    killed at any point is completed by running it again. Dropped rows are re-created by running the same
    `aigi extract` or `aigi import uar` again (both resume).

    Returns:
        What was done: dropped shards and their rows, rows dropped as repeats, rewritten, removed and adopted
        shards, damaged index entries, rebuilt files, unreadable shards and the quarantine folder (or None).
    """
    root = Path(path)
    if not root.is_dir() or not ((root / CACHE_JSON).exists() or (root / SHARD_DIR).is_dir()):
        raise ValueError(f"{root}: repair works on a cache directory (with {CACHE_JSON}); re-create other files")
    rep = _Repair(root)
    with folder_lock(root):
        rep.removed += [p.name for p in remove_dead_files(root)]
        header = _header(rep)
        if (root / SHARD_DIR).exists() and not (root / SHARD_DIR).is_dir():
            rep.quarantine(root / SHARD_DIR)
        (root / SHARD_DIR).mkdir(exist_ok=True)
        kept = _check_indexed(rep, header, _index(rep))
        _adopt(rep, header, kept)
        write_index(root, kept)
        _dedupe(rep, header, kept)
    return rep.summary()


def info(path: str | Path) -> dict:
    """`cache.open(path).info()`: rows, features and dims, sources, splits, views, bytes on disk, fingerprint."""
    return open_cache(path, keep_duplicates=True).info()
