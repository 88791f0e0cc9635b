"""Read any feature store (cache directory, compacted .h5, Parquet dataset, UAR .npy folder) through one `Cache` API."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from aigi.cache.featureset import FeatureSet, where_mask
from aigi.cache.kinds import open_store
from aigi.cache.shards import prepare_meta
from aigi.cache.storage import Storage

READ_THREADS = max(2, min(8, os.cpu_count() or 1))


class Cache:
    """A read-only view of a feature store: header fields, meta rows, features as FeatureSets.

    Its rows are those of `parts`, storage objects (`aigi.cache.storage.Storage`) read without asking their kind.
    """

    def __init__(
        self,
        *,
        path: Path,
        header: dict,
        parts: list[Storage],
        kind: str,
        keep_duplicates: bool = False,
        whole_folder: bool = True,
    ) -> None:
        self.path, self.header, self.parts, self.kind = path, header, parts, kind
        self.keep_duplicates, self.whole_folder = keep_duplicates, whole_folder
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

    def feature_names(self, features: list[str] | None) -> list[str]:
        """The named features (all by default), checked to exist.

        Raises:
            ValueError: naming the unknown features and this cache's.
        """
        names = list(self.features) if features is None else list(features)
        unknown = [n for n in names if n not in self.features]
        if unknown:
            raise ValueError(f"{self.path}: unknown feature(s) {unknown}; this cache has {list(self.features)}")
        return names

    def selection(self, where: dict | None) -> pd.DataFrame:
        """The meta index rows matching `where`, in storage order: meta columns plus `_part` (index into `parts`)
        and `_row` (row inside that part)."""
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
        feats = part.read(names)
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
        names = self.feature_names(features)
        sel = self.selection(where)
        out = {n: np.empty((len(sel), *self.features[n]), dtype=dtype) for n in names}

        def read(group: tuple[int, np.ndarray, slice]) -> None:
            part_id, rows, span = group
            part = self.parts[part_id]
            whole = len(rows) == part.n and (len(rows) == 0 or (rows[0] == 0 and rows[-1] == part.n - 1))
            if whole and dtype == self.dtype:
                part.read_range({name: out[name][span] for name in names}, 0, part.n)  # straight into place
                return
            for name, arr in self._read_rows(part_id, rows, names).items():
                out[name][span] = arr

        groups = list(self._groups(sel))
        threaded = any(self.parts[g[0]].threaded for g in groups)  # such parts already read on several threads
        if len(groups) > 1 and not threaded:  # file reads release the GIL: overlap shards on the cores
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
        names = self.feature_names(features)
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
            for name, arr in self.parts[int(part_id)].read_rows(names, local).items():
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
        names = self.feature_names(features)
        sel = self.selection(where)
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
        return [record for part in self.parts for record in part.errors()]

    def bytes_on_disk(self) -> int:
        """Total size of the files making up this store (a folder that holds other files too: its parts' files)."""
        if self.path.is_file():
            return self.path.stat().st_size
        if not self.whole_folder:
            return sum(part.nbytes() for part in self.parts)
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


def open_cache(path: str | Path, *, source: str | None = None, keep_duplicates: bool = False) -> Cache:
    """Open a cache directory, a compacted `.h5`, a Parquet dataset (dir or file) or a UAR `.npy` folder.

    Args:
        path: what to open.
        source: for a UAR folder whose `0_real`/`1_fake` sit at its top, the `source` of its rows (default "uar").
        keep_duplicates: read rows whose (image_id, view) key repeats instead of refusing them.

    Raises:
        FileNotFoundError: when `path` does not exist or holds nothing readable.
    """
    path = Path(path)
    store = open_store(path, source=source)
    return Cache(
        path=path,
        header=store.header,
        parts=store.parts,
        kind=store.kind,
        keep_duplicates=keep_duplicates,
        whole_folder=store.whole_folder,
    )
