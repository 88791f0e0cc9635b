"""Read any feature store (cache directory, compacted .h5, Parquet dataset, UAR .npy folder) through one `Cache` API."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from aigi.cache.featureset import FeatureSet, where_mask
from aigi.cache.fingerprint import fingerprint
from aigi.cache.shards import (
    FEAT_PREFIX,
    SCHEMA_VERSION,
    count_rows,
    prepare_meta,
    read_errors,
    read_feature_rows,
    read_features,
    read_features_into,
    read_header,
    read_meta,
)
from aigi.cache.uar import UAR_FEATURE, load_npy, load_npy_batch, scan_uar, uar_spec
from aigi.cache.writer import CACHE_JSON, INDEX_JSON, SHARD_DIR, SHARD_RE, read_cache_json, read_index

READ_THREADS = max(2, min(8, os.cpu_count() or 1))


class _ShardPart:
    """One HDF5 or Parquet file written by this package (a shard or a compacted file)."""

    def __init__(self, path: Path, header: dict, *, validate: bool = False, record: dict | None = None) -> None:
        self.path, self.header, self.validate, self.record = path, header, validate, record
        self.broken = ""
        try:
            self.n = count_rows(path)
        except FileNotFoundError:
            self.n, self.broken = 0, f"recorded in {INDEX_JSON} but missing"
        except Exception as err:  # reported when read, and listed by verify
            self.n, self.broken = 0, f"{type(err).__name__}: {err}"
        if record is not None and not self.broken:
            size = path.stat().st_size
            if self.n != record["rows"] or size != record["bytes"]:
                self.broken = f"holds {self.n} rows in {size} bytes, {INDEX_JSON} recorded {record['rows']} rows"
                self.broken += f" in {record['bytes']} bytes"
                self.n = 0

    def _check(self) -> None:
        if self.broken:
            raise ValueError(
                f"{self.path}: damaged shard ({self.broken}); `aigi cache verify` lists all problems and "
                "`aigi cache repair` drops them"
            )

    def meta(self) -> pd.DataFrame:
        self._check()
        df = read_meta(self.path)
        return prepare_meta(df, where=str(self.path)) if self.validate else df

    def features(self, names: list[str]) -> dict[str, np.ndarray]:
        self._check()
        return read_features(self.path, names, header=self.header)

    def read_into(self, dest: dict[str, np.ndarray]) -> None:
        self._check()
        read_features_into(self.path, dest, header=self.header)

    def feature_rows(self, names: list[str], rows: np.ndarray) -> dict[str, np.ndarray]:
        self._check()
        return read_feature_rows(self.path, names, rows, header=self.header)


class _NpyPart:
    """A group of UAR `.npy` files read one by one."""

    def __init__(self, rows: pd.DataFrame, dim: int) -> None:
        self.rows, self.dim, self.n = rows, dim, len(rows)
        self.path = Path(rows["file"].iloc[0]).parent

    def meta(self) -> pd.DataFrame:
        return prepare_meta(self.rows.drop(columns=["file"]), where=str(self.path))

    def features(self, names: list[str]) -> dict[str, np.ndarray]:
        return {UAR_FEATURE: load_npy_batch(self.rows["file"].tolist(), dim=self.dim)}

    def feature_rows(self, names: list[str], rows: np.ndarray) -> dict[str, np.ndarray]:
        return {UAR_FEATURE: load_npy_batch(self.rows["file"].iloc[rows].tolist(), dim=self.dim)}


class Cache:
    """A read-only view of a feature store: header fields, meta rows, features as FeatureSets."""

    def __init__(self, *, path: Path, header: dict, parts: list, kind: str, keep_duplicates: bool = False) -> None:
        self.path, self.header, self.parts, self.kind = path, header, parts, kind
        self.keep_duplicates = keep_duplicates
        self._index: pd.DataFrame | None = None

    spec = property(lambda self: self.header["spec"], doc="The extractor spec the features were made with.")
    fingerprint = property(lambda self: self.header["fingerprint"], doc="sha256 of the canonical spec JSON.")
    format = property(lambda self: self.header["format"], doc="Storage format: h5, parquet or npy.")
    dtype = property(lambda self: self.header["dtype"], doc="Stored dtype of the features.")

    @property
    def features(self) -> dict[str, tuple[int, ...]]:
        """Feature name -> per-row shape."""
        return {k: tuple(v) for k, v in self.header["features"].items()}

    def __len__(self) -> int:
        return sum(p.n for p in self.parts)

    def __repr__(self) -> str:
        return f"Cache({str(self.path)!r}, kind={self.kind}, rows={len(self)}, features={self.features})"

    def _all_meta(self) -> pd.DataFrame:
        if self._index is None:
            frames = []
            for i, part in enumerate(self.parts):
                df = part.meta()
                if len(df) != part.n:
                    raise ValueError(f"{part.path}: meta has {len(df)} rows, features {part.n}; the file is damaged")
                frames.append(df.assign(_part=np.int32(i), _row=np.arange(part.n, dtype=np.int64)))
            if not frames:
                empty = prepare_meta(pd.DataFrame(columns=["image_id", "path", "label", "source"]), where="")
                frames = [empty.assign(_part=np.zeros(0, np.int32), _row=np.zeros(0, np.int64))]
            index = pd.concat(frames, ignore_index=True)
            if not self.keep_duplicates:
                _refuse_duplicates(index, self.path)
            self._index = index
        return self._index

    def meta(self, where: dict | None = None) -> pd.DataFrame:
        """Meta rows (no features), optionally filtered by `where` (column -> value or list of values)."""
        idx = self._all_meta()
        return idx[where_mask(idx, where)].drop(columns=["_part", "_row"]).reset_index(drop=True)

    def _names(self, features: list[str] | None) -> list[str]:
        names = list(self.features) if features is None else list(features)
        unknown = [n for n in names if n not in self.features]
        if unknown:
            raise ValueError(f"{self.path}: unknown feature(s) {unknown}; this cache has {list(self.features)}")
        return names

    def _selection(self, where: dict | None) -> pd.DataFrame:
        idx = self._all_meta()
        return idx[where_mask(idx, where)] if where else idx

    @staticmethod
    def _groups(sel: pd.DataFrame) -> Iterator[tuple[int, np.ndarray, slice]]:
        """(part id, rows inside the part, slice of `sel`) for each run of one part (sel is in part order)."""
        parts, rows = sel["_part"].to_numpy(), sel["_row"].to_numpy()
        cuts = [0, *(np.flatnonzero(np.diff(parts)) + 1).tolist(), len(parts)]
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            if hi > lo:
                yield int(parts[lo]), rows[lo:hi], slice(lo, hi)

    def _read_rows(self, part_id: int, rows: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        part = self.parts[part_id]
        feats = part.features(names)
        if len(rows) == part.n and (len(rows) == 0 or (rows[0] == 0 and rows[-1] == part.n - 1)):
            return feats
        return {k: v[rows] for k, v in feats.items()}

    def load(
        self, features: list[str] | None = None, where: dict | None = None, *, dtype: str = "float32"
    ) -> FeatureSet:
        """Selected rows with the named features (all by default) as a FeatureSet.

        Whole shards are read and then indexed in memory (fast; HDF5 fancy indexing is slow). `dtype="float16"`
        keeps float16 features as stored (half the memory).
        """
        names = self._names(features)
        sel = self._selection(where)
        out = {n: np.empty((len(sel), *self.features[n]), dtype=dtype) for n in names}

        def read(group: tuple[int, np.ndarray, slice]) -> None:
            part_id, rows, span = group
            part = self.parts[part_id]
            whole = len(rows) == part.n and (len(rows) == 0 or (rows[0] == 0 and rows[-1] == part.n - 1))
            if whole and dtype == self.dtype and hasattr(part, "read_into"):
                part.read_into({name: out[name][span] for name in names})  # straight into place, one copy
                return
            for name, arr in self._read_rows(part_id, rows, names).items():
                out[name][span] = arr

        groups = list(self._groups(sel))
        if len(groups) > 1 and self.kind != "npy":  # file reads release the GIL: overlap shards on the cores
            with ThreadPoolExecutor(max_workers=min(READ_THREADS, len(groups))) as pool:
                list(pool.map(read, groups))
        else:
            for group in groups:
                read(group)
        return FeatureSet(out, sel.drop(columns=["_part", "_row"]))

    def take(
        self, rows: np.ndarray | list[int], features: list[str] | None = None, *, dtype: str = "float32"
    ) -> FeatureSet:
        """Rows at the given global positions (0 .. len-1, in that order), reading as little as each format allows."""
        names = self._names(features)
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise ValueError(f"{self.path}: row positions must lie in [0, {len(self)})")
        starts = np.cumsum([0] + [p.n for p in self.parts])
        order = np.argsort(rows, kind="stable")
        uniq, inverse = np.unique(rows[order], return_inverse=True)
        part_of = np.searchsorted(starts, uniq, side="right") - 1
        out = {n: np.empty((len(uniq), *self.features[n]), dtype=dtype) for n in names}
        for part_id in np.unique(part_of):
            pos = np.flatnonzero(part_of == part_id)
            local = uniq[pos] - starts[part_id]
            for name, arr in self.parts[int(part_id)].feature_rows(names, local).items():
                out[name][pos] = arr
        back = np.empty_like(order)
        back[order] = inverse
        meta = self._all_meta().iloc[rows].drop(columns=["_part", "_row"])
        return FeatureSet({k: v[back] for k, v in out.items()}, meta)

    def iter_batches(
        self, batch_size: int, *, features: list[str] | None = None, where: dict | None = None, dtype: str = "float32"
    ) -> Iterator[FeatureSet]:
        """Yield FeatureSets of `batch_size` rows (the last may be shorter), reading one shard at a time."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        names = self._names(features)
        sel = self._selection(where)
        meta_left = sel.iloc[:0].drop(columns=["_part", "_row"])
        left = {n: np.zeros((0, *self.features[n]), dtype=dtype) for n in names}
        for part_id, rows, span in self._groups(sel):
            read = self._read_rows(part_id, rows, names)
            meta = pd.concat([meta_left, sel.iloc[span].drop(columns=["_part", "_row"])], ignore_index=True)
            arrays = {k: np.concatenate([left[k], read[k].astype(dtype, copy=False)]) for k in names}
            full = len(meta) - len(meta) % batch_size
            for lo in range(0, full, batch_size):
                yield FeatureSet(
                    {k: v[lo : lo + batch_size] for k, v in arrays.items()}, meta.iloc[lo : lo + batch_size]
                )
            meta_left, left = meta.iloc[full:], {k: v[full:] for k, v in arrays.items()}
        if len(meta_left):
            yield FeatureSet(left, meta_left)

    def errors(self) -> list[dict]:
        """Error records of images that could not be read (from `NNNNN.errors.json` or a compacted file)."""
        if self.kind == "dir":
            out = []
            for part in self.parts:  # only finished shards: an errors file written before a crash is ignored
                file = part.path.with_name(part.path.name.split(".")[0] + ".errors.json")
                if file.exists():
                    out.extend(json.loads(file.read_text(encoding="utf-8")))
            return out
        if self.kind == "h5":
            return read_errors(self.path)
        return []

    def bytes_on_disk(self) -> int:
        """Total size of the files making up this store."""
        if self.path.is_file():
            return self.path.stat().st_size
        if self.kind == "npy":
            return int(sum(Path(f).stat().st_size for p in self.parts for f in p.rows["file"]))
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())

    def info(self) -> dict:
        """Summary: rows, features and dims, sources, splits, views, labels, shards, bytes on disk, fingerprint."""
        meta = self.meta()

        def counts(col: str) -> dict:
            return {str(k): int(v) for k, v in meta[col].value_counts(sort=False).sort_index().items()}

        return {
            "path": str(self.path),
            "kind": self.kind,
            "format": self.format,
            "rows": len(meta),
            "features": {k: list(v) for k, v in self.features.items()},
            "dtype": self.dtype,
            "labels": counts("label"),
            "sources": counts("source"),
            "splits": counts("split"),
            "views": counts("view"),
            "shards": len(self.parts),
            "errors": len(self.errors()),
            "bytes_on_disk": self.bytes_on_disk(),
            "fingerprint": self.fingerprint,
            "spec": self.spec,
        }


def _refuse_duplicates(index: pd.DataFrame, path: Path) -> None:
    """Raise when an (image_id, view) key occurs on several rows (two writers wrote the same rows).

    Keys are compared as integer codes (`pd.factorize` of each column): 2 M rows in 0.3 s, where
    `DataFrame.duplicated` on the two string columns took 1.0 s; no code at all when every image_id is distinct."""
    ids, uniq = pd.factorize(index["image_id"])
    if len(uniq) == len(index):
        return
    views, kinds = pd.factorize(index["view"]) if "view" in index.columns else (np.zeros(len(index), np.int64), [0])
    key = (ids.astype(np.int64) + 1) * (len(kinds) + 1) + (views + 1)  # NA's code -1 is a value too, as in pandas
    dup = pd.Series(key).duplicated(keep=False).to_numpy()
    if dup.any():
        paths = index.loc[dup, "path"].astype(str).drop_duplicates().head(3).tolist()
        raise ValueError(
            f"{path}: {int(dup.sum())} rows repeat an (image_id, view) key, e.g. paths {paths}; run "
            f"`aigi cache repair {path}` to keep one row per key"
        )


def _open_dir_cache(path: Path) -> Cache:
    header = read_cache_json(path)
    shard_dir = path / SHARD_DIR
    index = read_index(path)
    if index is None:  # written before shard indexes: every shard file on disk
        files = sorted(shard_dir.glob(f"*.{header['format']}")) if shard_dir.is_dir() else []
        parts = [_ShardPart(f, header) for f in files if SHARD_RE.match(f.name)]
    else:  # committed shards only: an orphan file of an interrupted commit is not read
        parts = [_ShardPart(shard_dir / name, header, record=rec) for name, rec in sorted(index.items())]
    return Cache(path=path, header=header, parts=parts, kind="dir")


def _open_h5(path: Path) -> Cache:
    try:
        header = read_header(path)
    except OSError as err:
        raise ValueError(f"{path}: not a readable HDF5 file ({err})") from None
    if header is None:
        raise ValueError(f"{path}: HDF5 file without an '{'aigi.cache'}' header; it is not an aigi cache file")
    return Cache(path=path, header=header, parts=[_ShardPart(path, header)], kind="h5")


def _infer_parquet_header(file: Path) -> dict:
    """A header for a Parquet file not written by aigi: `feat.<name>` list columns, float32, empty spec."""
    schema = pq.read_schema(file)
    names = [c[len(FEAT_PREFIX) :] for c in schema.names if c.startswith(FEAT_PREFIX)]
    if not names:
        raise ValueError(f"{file}: no '{FEAT_PREFIX}<name>' feature column and no aigi header; not a feature file")
    first = pq.read_table(file, columns=[FEAT_PREFIX + n for n in names]).slice(0, 1)
    shapes = {n: [len(first.column(FEAT_PREFIX + n)[0].as_py() or [])] for n in names}
    return {
        "schema_version": SCHEMA_VERSION,
        "format": "parquet",
        "spec": {},
        "fingerprint": fingerprint({}),
        "features": shapes,
        "dtype": "float32",
    }


def _open_parquet_dataset(path: Path) -> Cache:
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*.parquet") if not f.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"{path}: no .parquet files")
    headers = [read_header(f) for f in files]
    validate = headers[0] is None
    header = headers[0] or _infer_parquet_header(files[0])
    for f, h in zip(files, headers):
        if (h or header)["fingerprint"] != header["fingerprint"]:
            raise ValueError(f"{f}: fingerprint differs from {files[0]}; a dataset never mixes fingerprints")
    parts = [_ShardPart(f, header, validate=validate) for f in files]
    return Cache(path=path, header=header, parts=parts, kind="parquet")


def _open_npy_folder(path: Path, *, source: str | None, part_rows: int = 4096) -> Cache:
    rows = scan_uar(path, source=source)
    dim = load_npy(rows["file"].iloc[0]).shape[0]
    header = {
        "schema_version": SCHEMA_VERSION,
        "format": "npy",
        "spec": uar_spec(dim),
        "dtype": "float32",
        "features": {UAR_FEATURE: [dim]},
    }
    header["fingerprint"] = fingerprint(header["spec"])
    parts = [_NpyPart(rows.iloc[i : i + part_rows], dim) for i in range(0, len(rows), part_rows)]
    return Cache(path=path, header=header, parts=parts, kind="npy")


def open_cache(path: str | Path, *, source: str | None = None, keep_duplicates: bool = False) -> Cache:
    """Open a cache directory, a compacted `.h5`, a Parquet dataset (dir or file) or a UAR `.npy` folder.

    Args:
        path: what to open.
        source: for a UAR folder whose `0_real`/`1_fake` sit at its top, the `source` of its rows (default "uar").
        keep_duplicates: read rows whose (image_id, view) key repeats instead of refusing them.

    Raises:
        FileNotFoundError: when `path` does not exist or holds nothing readable.
    """
    store = _open_any(Path(path), source=source)
    store.keep_duplicates = keep_duplicates
    return store


def _open_any(path: Path, *, source: str | None) -> Cache:
    make = "make one with `aigi extract` or `aigi import uar`, or pass the path of an existing cache"
    if not path.exists():
        raise FileNotFoundError(f"cache {path} does not exist; {make}")
    if path.is_file():
        if path.suffix in (".h5", ".hdf5"):
            return _open_h5(path)
        if path.suffix == ".parquet":
            return _open_parquet_dataset(path)
        raise ValueError(
            f"{path}: expected a cache directory, a .h5 file, a .parquet file or a folder of .npy files; {make}"
        )
    if (path / CACHE_JSON).exists():
        return _open_dir_cache(path)
    if next(path.rglob("*.parquet"), None) is not None:
        return _open_parquet_dataset(path)
    if any(next(path.rglob(f"{d}/*.npy"), None) is not None for d in ("0_real", "1_fake")):
        return _open_npy_folder(path, source=source)
    raise FileNotFoundError(
        f"{path}: no {CACHE_JSON}, no .parquet files and no 0_real/1_fake .npy folders, so not a cache; {make}"
    )
