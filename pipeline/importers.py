"""`aigi import uar` / `aigi export npy`: move shipped `.npy` feature folders (UAR layout) into and out of a cache."""

from __future__ import annotations

import argparse
import io
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from aigi.common.files import atomic_write
from aigi.pipeline.index import add_split_args, apply_splits

LABEL_DIRS = ("0_real", "1_fake")


IMPORT_LOCK = ".import.lock"


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


def import_uar(
    folder: str | Path,
    out: str | Path,
    *,
    source: str | None = None,
    split: str | None = None,
    split_ratio: str | None = None,
    seed: int = 0,
    fmt: str | None = None,
    shard_size: int = 4096,
    dtype: str | None = None,
    extractor: str | None = None,
    progress: bool = True,
) -> dict:
    """Import a UAR-style `.npy` folder into the cache `out`, appending to it when it exists.

    Rows already in the cache (same image_id: an interrupted or repeated import) are skipped, so re-running
    resumes. Row rules (source, pair_id, image_id) are those of `cache.scan_uar`. Features are stored as
    `probe` in `dtype` (float32 by default, so values equal `np.load`'s exactly). `fmt` and `dtype` default to
    those of the existing cache, else h5 and float32.

    Returns:
        Counts: files found, rows written, rows skipped as already present, and the feature dim.
    """
    from aigi.cache import CacheWriter, scan_uar, uar_spec
    from aigi.cache.locking import folder_lock
    from aigi.cache.uar import UAR_FEATURE

    folder, out = Path(folder), Path(out)
    rows = scan_uar(folder, source=source)
    rows = apply_splits(rows, split=split, split_ratio=split_ratio, seed=seed)
    dim = _first_dim(rows["file"].tolist())
    with folder_lock(out, IMPORT_LOCK):  # imports into one cache run one after the other: none repeats a row
        done, header = _existing(out)
        if split or split_ratio:
            note = _split_note(rows, done, out, f"--split {split}" if split else f"--split-ratio {split_ratio}")
            if note:
                print(note, file=sys.stderr)
        todo = rows[~rows["image_id"].isin(done)].reset_index(drop=True)
        writer = CacheWriter(
            out,
            spec=uar_spec(dim, extractor=extractor),
            features={UAR_FEATURE: (dim,)},
            fmt=fmt or header.get("format", "h5"),
            shard_size=shard_size,
            dtype=dtype or header.get("dtype", "float32"),
        )
        failed = _write_rows(writer, todo, dim, desc=f"import {folder.name}", progress=progress)
    if failed and len(failed) == len(todo):
        raise ValueError(f"{folder}: none of the {len(todo)} .npy files could be imported, e.g. {failed[0]['reason']}")
    return {
        "files": len(rows),
        "written": len(todo) - len(failed),
        "skipped_present": len(rows) - len(todo),
        "dim": dim,
        "failed": failed,
    }


def _write_rows(writer, todo: pd.DataFrame, dim: int, *, desc: str, progress: bool) -> list[dict]:
    """Append the rows of `todo` chunk by chunk; files that do not load are recorded as errors and returned."""
    from tqdm.auto import tqdm

    from aigi.cache.uar import UAR_FEATURE

    failed = []
    step = max(1, min(writer.shard_size, 4096))
    chunks = [todo.iloc[lo : lo + step] for lo in range(0, len(todo), step)]
    load = lambda i: _load_files(chunks[i]["file"].tolist(), dim)  # noqa: E731
    with (
        writer,
        tqdm(total=len(todo), desc=desc, unit="file", disable=None if progress else True) as bar,
        ThreadPoolExecutor(max_workers=1) as reader,  # the next chunk is read while this one is written
    ):
        pending = reader.submit(load, 0) if chunks else None
        for i, chunk in enumerate(chunks):
            feats, ok, bad = pending.result()
            pending = reader.submit(load, i + 1) if i + 1 < len(chunks) else None
            errors = [
                {"image_id": chunk["image_id"].iat[i], "path": chunk["path"].iat[i], "reason": why} for i, why in bad
            ]
            writer.append(chunk[ok].drop(columns=["file"]), {UAR_FEATURE: feats}, errors)
            failed += errors
            bar.update(len(chunk))
    return failed


def safe_component(name: object) -> str:
    """`name` as one path component that stays in its folder: separators, NUL and `..`/`.` become `_`."""
    text = "".join("_" if c in "/\\\0" else c for c in str(name)).strip()
    return "_" if text in ("", ".", "..") else text


def _save_npy(path: Path, arr: np.ndarray) -> None:
    """Write one `.npy` atomically. It is encoded in memory first: `np.save` to a file ignores short writes."""
    buffer = io.BytesIO()
    np.save(buffer, arr, allow_pickle=False)
    atomic_write(path, buffer.getvalue())


def export_npy(cache_path: str | Path, out: str | Path, *, feature: str | None = None, view: str = "orig") -> int:
    """Write one `(1, D)` float32 `.npy` per row as `<out>/<source>/0_real|1_fake/<stem>.npy`; return the count.

    Raises:
        ValueError: for an unknown or non-vector feature, or when two rows would write the same file.
    """
    from aigi import cache

    store = cache.open(cache_path)
    name = feature or ("probe" if "probe" in store.features else next(iter(store.features)))
    if name not in store.features:
        raise ValueError(f"{cache_path}: no feature {name!r}; it has {list(store.features)} (use --feature)")
    if len(store.features[name]) != 1:
        raise ValueError(f"{cache_path}: feature {name!r} has per-row shape {store.features[name]}, not a vector")
    meta = store.meta(where={"view": view})
    if meta.empty:
        views = sorted(store.meta()["view"].astype(str).unique().tolist())
        raise ValueError(f"{cache_path}: no row has view {view!r}; its views are {views} (use --view)")
    targets = meta["source"].map(safe_component) + "/" + meta["label"].map(dict(enumerate(LABEL_DIRS)))
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


def run_import_uar(args: argparse.Namespace) -> int:
    """Entry point of `aigi import uar`."""
    stats = import_uar(
        args.folder,
        args.cache,
        source=args.source,
        split=args.split,
        split_ratio=args.split_ratio,
        seed=args.seed,
        fmt=args.format,
        shard_size=args.shard_size,
        dtype=args.dtype,
        extractor=args.extractor,
    )
    print(
        f"imported {stats['written']} of {stats['files']} files ({stats['dim']}-d) into {args.cache}"
        + (f"; {stats['skipped_present']} already present" if stats["skipped_present"] else "")
    )
    if stats["failed"]:
        shown = "; ".join(e["reason"] for e in stats["failed"][:5])
        print(
            f"skipped {len(stats['failed'])} file(s) that could not be imported (recorded in the cache's "
            f"shards/*.errors.json): {shown}",
            file=sys.stderr,
        )
    return 0


def run_export_npy(args: argparse.Namespace) -> int:
    """Entry point of `aigi export npy`."""
    n = export_npy(args.cache, args.output, feature=args.feature, view=args.view)
    print(f"wrote {n} .npy files under {args.output}")
    return 0


def register_import(subparsers: argparse._SubParsersAction) -> None:
    """Add `aigi import uar`."""
    imp = subparsers.add_parser("import", help="import shipped feature sets into a cache")
    kinds = imp.add_subparsers(dest="kind", metavar="KIND", required=True)
    p = kinds.add_parser(
        "uar",
        help="UAR layout: **/0_real/*.npy, **/1_fake/*.npy, each (1, D) or (D,)",
        description="Import a UAR-style folder of .npy features. The first folder under DIR is the "
        "source of its rows (reals and fakes alike); a real and a fake with the same file stem in "
        "one folder share a pair_id. Appends to an existing cache; re-running resumes.",
    )
    p.add_argument("folder", type=Path, help="the folder to import")
    p.add_argument("--cache", type=Path, required=True, help="cache directory to create or append to")
    p.add_argument("--source", help="source when 0_real/1_fake sit directly in FOLDER (default: uar)")
    add_split_args(p)
    p.add_argument("--format", choices=("h5", "parquet"), help="shard format of a new cache (default h5)")
    p.add_argument("--shard-size", type=int, default=4096, help="rows per shard (default 4096)")
    p.add_argument(
        "--dtype",
        choices=("float32", "float16"),
        help="stored dtype of a new cache (default float32: values stay exactly those of the .npy files)",
    )
    p.add_argument("--extractor", help="extractor name recorded in the spec (default: aim-v1-3b for 3072-d)")
    p.set_defaults(func=run_import_uar)


def register_export(subparsers: argparse._SubParsersAction) -> None:
    """Add `aigi export npy`."""
    exp = subparsers.add_parser("export", help="export cached features to other layouts")
    kinds = exp.add_subparsers(dest="kind", metavar="KIND", required=True)
    p = kinds.add_parser("npy", help="write <source>/0_real|1_fake/<stem>.npy, (1, D) float32 each")
    p.add_argument("cache", type=Path, help="a cache directory, compacted .h5 or Parquet dataset")
    p.add_argument("-o", "--output", type=Path, required=True, help="folder to write")
    p.add_argument("--feature", help="feature to export (default: probe, else the first)")
    p.add_argument("--view", default="orig", help="view to export (default orig)")
    p.set_defaults(func=run_export_npy)
