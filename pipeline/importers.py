"""The import and export stages: move shipped `.npy` feature folders (UAR layout) into and out of a cache."""

from __future__ import annotations

import io
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aigi.cache import LABEL_DIRS
from aigi.common.files import atomic_write
from aigi.common.progress import SHORT_WORK_S, progress
from aigi.pipeline.index import apply_splits

LOG = logging.getLogger(__name__)
IMPORT_LOCK = ".import.lock"
FORMATS = ("h5", "parquet")
DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class ImportOptions:
    """How `import_uar` stores a `.npy` folder (the defaults are `aigi import uar`'s).

    Attributes:
        source: the source of rows whose `0_real`/`1_fake` folders sit directly in the imported folder (default uar).
        split: give every new row this split (train, val, test).
        split_ratio: assign new rows splits by pair_id instead, e.g. `train=0.8,test=0.2`, seeded by `seed`.
        seed: the seed of `split_ratio`.
        fmt: shard format of a new cache, h5 or parquet (default: the existing cache's, else h5).
        shard_size: rows per shard.
        dtype: stored dtype of a new cache, float32 or float16 (default: the existing cache's, else float32, so
            that values equal `np.load`'s exactly).
        extractor: the extractor name recorded in the spec (default: aim-v1-3b for 3072-d features).
        progress: report progress while importing.
    """

    source: str | None = None
    split: str | None = None
    split_ratio: str | None = None
    seed: int = 0
    fmt: str | None = None
    shard_size: int = 4096
    dtype: str | None = None
    extractor: str | None = None
    progress: bool = True


@dataclass(frozen=True)
class ExportOptions:
    """What `export_npy` writes: the vector feature `feature` (default: probe, else the cache's first) of the rows
    of view `view`."""

    feature: str | None = None
    view: str = "orig"


def _existing(out: Path) -> tuple[dict[str, str], dict]:
    """image_id -> split of the rows already in the cache at `out`, and its header (empty when it does not exist)."""
    from aigi.cache.writer import CACHE_JSON, read_cache_json

    if not (out / CACHE_JSON).exists():
        return {}, {}
    from aigi import cache

    meta = cache.open(out, keep_duplicates=True).meta()
    return dict(zip(meta["image_id"].astype(str), meta["split"].astype(str))), read_cache_json(out)


def _load_files(files: list[str], dim: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """Vectors of the files that load, which ones did, and (position, reason) of the others (never unpickled).

    All files at once through `cache.uar.load_npy_batch` (threaded reads, one header parse); when any file is
    refused, file by file so that each bad one is named and the others kept.
    """
    from aigi.cache import load_npy
    from aigi.cache.uar import load_npy_batch

    try:
        return load_npy_batch(files, dim=dim), np.ones(len(files), dtype=bool), []
    except ValueError:
        pass
    out = np.zeros((len(files), dim), dtype=np.float32)
    ok = np.zeros(len(files), dtype=bool)
    bad = []
    for i, file in enumerate(files):
        try:
            out[i] = load_npy(file, dim=dim)
            ok[i] = True
        except ValueError as err:
            bad.append((i, str(err)))
    return out[ok], ok, bad


def _first_dim(files: list[str]) -> int:
    """The width of the first file that loads (a bad first file does not decide it)."""
    from aigi.cache import load_npy

    reasons = []
    for file in files:
        try:
            return load_npy(file).shape[0]
        except ValueError as err:
            reasons.append(str(err))
            if len(reasons) == len(files) or len(reasons) >= 100:
                break
    raise ValueError(f"none of the first {len(reasons)} .npy files loads, e.g. {reasons[0]}")


def _split_note(rows: pd.DataFrame, done: dict[str, str], out: Path, asked: str) -> str:
    """A note when rows already in the cache would get another split from this import's split options."""
    present = rows[rows["image_id"].isin(done)]
    changed = int((present["split"].astype(str) != present["image_id"].map(done)).sum())
    if not changed:
        return ""
    return (
        f"note: {len(present)} row(s) were already in {out} and keep their split from the first import ({changed} "
        f"would get another one with {asked}); {asked} applies to the {len(rows) - len(present)} new row(s) only. "
        "To re-split, import into a new cache"
    )


def import_uar(folder: str | Path, out: str | Path, options: ImportOptions = ImportOptions()) -> dict:
    """Import a UAR-style `.npy` folder into the cache `out`, appending to it when it exists.

    Rows already in the cache (same image_id: an interrupted or repeated import) are skipped, so re-running
    resumes. Row rules (source, pair_id, image_id) are those of `cache.scan_uar`. Features are stored as
    `probe` in `options.dtype`. Files that do not load are recorded in the cache's `shards/*.errors.json`.

    Returns:
        Counts: files found, rows written, rows skipped as already present, the feature dim, and the files that
        failed (image_id, path, reason).

    Raises:
        ValueError: when none of the files could be imported.
    """
    from aigi.cache import CacheWriter, scan_uar, uar_spec
    from aigi.cache.locking import folder_lock
    from aigi.cache.uar import UAR_FEATURE

    folder, out, o = Path(folder), Path(out), options
    rows = scan_uar(folder, source=o.source)
    rows = apply_splits(rows, split=o.split, split_ratio=o.split_ratio, seed=o.seed)
    dim = _first_dim(rows["file"].tolist())
    with folder_lock(out, IMPORT_LOCK):  # imports into one cache run one after the other: none repeats a row
        done, header = _existing(out)
        if o.split or o.split_ratio:
            asked = f"--split {o.split}" if o.split else f"--split-ratio {o.split_ratio}"
            note = _split_note(rows, done, out, asked)
            if note:
                LOG.warning(note)
        todo = rows[~rows["image_id"].isin(done)].reset_index(drop=True)
        writer = CacheWriter(
            out,
            spec=uar_spec(dim, extractor=o.extractor),
            features={UAR_FEATURE: (dim,)},
            fmt=o.fmt or header.get("format", FORMATS[0]),
            shard_size=o.shard_size,
            dtype=o.dtype or header.get("dtype", DTYPES[0]),
        )
        failed = _write_rows(writer, todo, dim, desc=f"import {folder.name}", show=o.progress)
    if failed and len(failed) == len(todo):
        raise ValueError(f"{folder}: none of the {len(todo)} .npy files could be imported, e.g. {failed[0]['reason']}")
    return {
        "files": len(rows),
        "written": len(todo) - len(failed),
        "skipped_present": len(rows) - len(todo),
        "dim": dim,
        "failed": failed,
    }


def _write_rows(writer: Any, todo: pd.DataFrame, dim: int, *, desc: str, show: bool) -> list[dict]:
    """Append the rows of `todo` chunk by chunk; files that do not load are recorded as errors and returned."""
    from aigi.cache.uar import UAR_FEATURE

    failed = []
    step = max(1, min(writer.shard_size, 4096))
    chunks = [todo.iloc[lo : lo + step] for lo in range(0, len(todo), step)]
    load = lambda i: _load_files(chunks[i]["file"].tolist(), dim)  # noqa: E731
    with (
        writer,
        progress(total=len(todo), desc=desc, unit="file", quiet=not show, delay_s=SHORT_WORK_S) as bar,
        ThreadPoolExecutor(max_workers=1) as reader,  # the next chunk is read while this one is written
    ):
        pending = reader.submit(load, 0) if chunks else None
        for i, chunk in enumerate(chunks):
            feats, ok, bad = pending.result()
            pending = reader.submit(load, i + 1) if i + 1 < len(chunks) else None
            feats, ok, bad = _in_range(feats, ok, bad, chunk, writer.dtype)
            errors = [
                {"image_id": chunk["image_id"].iat[i], "path": chunk["path"].iat[i], "reason": why} for i, why in bad
            ]
            writer.append(chunk[ok].drop(columns=["file"]), {UAR_FEATURE: feats}, errors)
            failed += errors
            bar.update(len(chunk))
    return failed


def _in_range(
    feats: np.ndarray, ok: np.ndarray, bad: list[tuple[int, str]], chunk: pd.DataFrame, dtype: str
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """Move the loaded rows whose values the cache's stored dtype cannot hold (beyond float16's range) to the failed
    ones, each named, so that one such file does not stop the import."""
    limit = float(np.finfo(dtype).max)
    over = np.abs(feats).max(axis=1, initial=0.0) > limit if len(feats) else np.zeros(0, dtype=bool)
    if not over.any():
        return feats, ok, bad
    loaded = np.flatnonzero(ok)
    ok = ok.copy()
    for row in np.flatnonzero(over):
        pos = int(loaded[row])
        ok[pos] = False
        peak = float(np.abs(feats[row]).max())
        bad.append((pos, f"{chunk['file'].iat[pos]}: holds {peak:.4g}, beyond the {dtype} range of this cache "
                         f"(+-{limit:g}); import into a float32 cache (--dtype float32)"))  # fmt: skip
    return feats[~over], ok, sorted(bad)


def safe_component(name: object) -> str:
    """`name` as one path component that stays in its folder: separators, NUL and `..`/`.` become `_`."""
    text = "".join("_" if c in "/\\\0" else c for c in str(name)).strip()
    return "_" if text in ("", ".", "..") else text


def _save_npy(path: Path, arr: np.ndarray) -> None:
    """Write one `.npy` atomically. It is encoded in memory first: `np.save` to a file ignores short writes."""
    buffer = io.BytesIO()
    np.save(buffer, arr, allow_pickle=False)
    atomic_write(path, buffer.getvalue())


def export_npy(cache_path: str | Path, out: str | Path, options: ExportOptions = ExportOptions()) -> int:
    """Write one `(1, D)` float32 `.npy` per row as `<out>/<source>/0_real|1_fake/<stem>.npy`; return the count.

    Raises:
        ValueError: for an unknown or non-vector feature, or when two rows would write the same file.
    """
    from aigi import cache

    store, feature, view = cache.open(cache_path), options.feature, options.view
    name = feature or ("probe" if "probe" in store.features else next(iter(store.features)))
    if name not in store.features:
        raise ValueError(f"{cache_path}: no feature {name!r}; it has {list(store.features)} (use --feature)")
    if len(store.features[name]) != 1:
        raise ValueError(f"{cache_path}: feature {name!r} has per-row shape {store.features[name]}, not a vector")
    meta = store.meta(where={"view": view})
    if meta.empty:
        views = sorted(store.meta()["view"].astype(str).unique().tolist())
        raise ValueError(f"{cache_path}: no row has view {view!r}; its views are {views} (use --view)")
    folders = {label: name for name, label in LABEL_DIRS.items()}
    targets = meta["source"].map(safe_component) + "/" + meta["label"].map(folders)
    targets = targets + "/" + meta["path"].map(lambda p: safe_component(Path(str(p)).stem)) + ".npy"
    dup = targets.duplicated(keep=False)
    if dup.any():
        raise ValueError(
            f"{cache_path}: {int(dup.sum())} rows map to the same file, e.g. {targets[dup].iloc[0]!r} "
            "(same source, label and file stem); export a narrower selection"
        )
    written = 0
    top = Path(out).resolve()
    lookup = pd.Series(targets.to_numpy(), index=meta["image_id"].astype(str).to_numpy())
    for batch in store.iter_batches(4096, features=[name], where={"view": view}):
        for image_id, vec in zip(batch.meta["image_id"].astype(str), batch.features[name]):
            path = Path(out) / lookup[image_id]
            if not path.resolve().is_relative_to(top):  # a symlinked folder inside `out`
                raise ValueError(f"{path} leads outside {out} (a symlink); export into a fresh folder")
            path.parent.mkdir(parents=True, exist_ok=True)
            _save_npy(path, vec.reshape(1, -1).astype(np.float32))
            written += 1
    return written
