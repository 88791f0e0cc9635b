"""The HDF5 storage kinds: an HDF5 shard (`H5Shard`) and a compacted `.h5` file of a whole cache (`CompactedH5`).

A file holds `meta/<col>` datasets, `features/<name>` datasets and the cache header as a JSON attribute. Features are
written contiguous and unfiltered, so a run of rows is one byte range: read with one `readinto` at its file offset
(like `np.load`), or mapped in place when its pages are in the page cache.
"""

from __future__ import annotations

import io
import json
import mmap
import os
from collections.abc import Iterable
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from aigi.cache.manifest import MANIFEST_COLUMNS
from aigi.cache.shards import ERRORS_KEY, HEADER_KEY, META_COLUMNS, coerce_meta
from aigi.cache.storage import Resident, ShardFile
from aigi.common.files import atomic_path


def encode_strings(col: pd.Series) -> np.ndarray:
    """A string column as fixed-length UTF-8 bytes (HDF5 reads these ~20x faster than variable-length strings)."""
    raw = [s.encode("utf-8") for s in col.astype(str).tolist()]
    width = max((len(b) for b in raw), default=1) or 1
    return np.array(raw, dtype=h5py.string_dtype("utf-8", width))


def decode_strings(raw: np.ndarray) -> pd.Series:
    """Fixed-length UTF-8 bytes (as read from HDF5) back to a pandas string column, vectorised through Arrow."""
    raw = np.ascontiguousarray(raw)
    width = raw.dtype.itemsize
    fixed = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(raw), [None, pa.py_buffer(raw)])
    text = pc.utf8_rtrim(fixed.cast(pa.binary()).cast(pa.string()), characters="\x00")  # drop the NUL padding
    return pd.Series(pd.arrays.ArrowStringArray(text))


def meta_columns_h5(meta: pd.DataFrame) -> dict[str, np.ndarray]:
    """The arrays stored as `meta/<col>` in HDF5: fixed-length UTF-8 for strings, numpy ints otherwise."""
    out = {}
    for col in META_COLUMNS:
        dtype = MANIFEST_COLUMNS.get(col, ("string", ""))[0]
        out[col] = encode_strings(meta[col]) if dtype == "string" else meta[col].to_numpy(dtype=dtype)
    return out


def h5_bytes(*, header: dict, meta: pd.DataFrame, feats: dict[str, np.ndarray], errors=None) -> bytes:
    """One self-describing HDF5 file (`meta/<col>`, `features/<name>`, header attribute), built in memory.

    Built in memory so that a failing disk meets plain file writes (a clean OSError), never HDF5's own I/O.
    """
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.attrs[HEADER_KEY] = json.dumps(header)
        f.attrs["n_rows"] = len(meta)
        if errors is not None:
            f.attrs[ERRORS_KEY] = json.dumps(list(errors))
        group = f.create_group("meta")
        for col, values in meta_columns_h5(meta).items():
            group.create_dataset(col, data=values)
        fgroup = f.create_group("features")
        for name, arr in feats.items():
            fgroup.create_dataset(name, data=arr)
    return buffer.getvalue()


def _truncated(path: Path, name: str, got: int, want: int) -> ValueError:
    return ValueError(
        f"{path}: feature {name!r} is truncated ({got} of {want} bytes); `aigi cache verify` lists all problems"
    )


class H5Shard(ShardFile):
    """One HDF5 file of rows. Contiguous datasets of the stored dtype are read and mapped at their byte offsets,
    found once per file (`layout`); other layouts (chunked, another dtype) go through h5py."""

    fmt = "h5"
    suffix = ".h5"
    encode = staticmethod(h5_bytes)

    def __init__(self, path: Path, header: dict, **kwargs) -> None:
        super().__init__(path, header, **kwargs)
        self.dtype = np.dtype(header["dtype"])
        self._layout: dict[str, tuple[int | None, tuple[int, ...]]] = {}

    @classmethod
    def count_rows(cls, path: Path) -> int:
        with h5py.File(path, "r") as f:
            return int(f.attrs["n_rows"])

    @classmethod
    def read_header(cls, path: Path) -> dict | None:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get(HEADER_KEY)
            return json.loads(raw) if raw is not None else None

    def read_meta(self) -> pd.DataFrame:
        with h5py.File(self.path, "r") as f:
            cols = {}
            for col, ds in f["meta"].items():
                info = h5py.check_string_dtype(ds.dtype)
                if info is None:
                    cols[col] = ds[()]
                elif info.length is None:  # variable-length strings (other writers)
                    cols[col] = pd.Series(ds.asstr()[()], dtype="string")
                else:
                    cols[col] = decode_strings(ds[()])
            order = [c for c in META_COLUMNS if c in cols] + [c for c in cols if c not in META_COLUMNS]
            return coerce_meta(pd.DataFrame({c: cols[c] for c in order}))

    def layout(self, names: list[str]) -> dict[str, tuple[int | None, tuple[int, ...]]]:
        """Feature name -> (file offset of its dataset, or None when it is chunked, empty or not of the stored
        dtype; the dataset's shape), read from the file once."""
        missing = [n for n in names if n not in self._layout]
        if missing:
            self.check()
            with h5py.File(self.path, "r") as f:
                for n in missing:
                    ds = f["features"][n]
                    native = ds.chunks is None and ds.size and ds.dtype == self.dtype
                    self._layout[n] = (ds.id.get_offset() if native else None, tuple(ds.shape))
        return self._layout

    def _read_at(self, fh, name: str, offset: int, arr: np.ndarray) -> None:
        """One `readinto` of `arr`'s bytes at `offset` of the open raw file `fh`."""
        fh.seek(offset)
        got = fh.readinto(memoryview(arr.reshape(-1).view(np.uint8)))
        if got != arr.nbytes:
            raise _truncated(self.path, name, got, arr.nbytes)

    def read(self, names: list[str]) -> dict[str, np.ndarray]:
        self.check()
        layout = self.layout(names)
        out = {}
        with open(self.path, "rb", buffering=0) as fh:
            for n in names:
                offset, shape = layout[n]
                if offset is not None:
                    out[n] = np.empty(shape, dtype=self.dtype)
                    self._read_at(fh, n, offset, out[n])
        rest = [n for n in names if n not in out]
        if rest:
            with h5py.File(self.path, "r") as f:
                out.update({n: f["features"][n][()] for n in rest})
        return {n: out[n] for n in names}

    def read_range(self, dest: dict[str, np.ndarray], lo: int, hi: int) -> int:
        self.check()
        layout = self.layout(list(dest))
        got = 0
        with open(self.path, "rb", buffering=0) as fh:
            for n, full in dest.items():
                arr = full[: hi - lo]
                offset = layout[n][0]
                if offset is not None and arr.dtype == self.dtype and arr.flags.c_contiguous:
                    self._read_at(fh, n, offset + lo * self.row_bytes(n), arr)
                elif arr.size:
                    with h5py.File(self.path, "r") as f:
                        f["features"][n].read_direct(arr, np.s_[lo:hi])
                got += arr.nbytes
        return got

    def read_rows(self, names: list[str], rows: np.ndarray) -> dict[str, np.ndarray]:
        """Contiguous datasets are memory-mapped and indexed in numpy (as fast as a memmapped .npy); other layouts
        use h5py point selection."""
        self.check()
        layout = self.layout(names)
        out = {}
        for n in names:
            offset, shape = layout[n]
            if offset is not None:
                out[n] = np.array(np.memmap(self.path, dtype=self.dtype, mode="r", offset=offset, shape=shape)[rows])
        rest = [n for n in names if n not in out]
        if rest:
            with h5py.File(self.path, "r") as f:
                for n in rest:
                    ds = f["features"][n]
                    out[n] = ds[rows] if len(rows) else np.zeros((0, *ds.shape[1:]), ds.dtype)
        return {n: out[n] for n in names}

    def map_range(self, names: list[str], lo: int, hi: int, *, resident: Resident | None = None):
        """Rows [lo, hi) as read-only arrays over the file's pages, or None when a feature is not one contiguous
        dataset of the stored dtype, or `resident` says a feature's byte range is not in the page cache.

        Raises:
            ValueError: when the file ends before the rows (a truncated file).
        """
        layout = self.layout(names)
        if any(layout[n][0] is None for n in names):
            return None
        ranges = {n: (layout[n][0] + lo * self.row_bytes(n), (hi - lo) * self.row_bytes(n)) for n in names}
        out = {}
        with open(self.path, "rb", buffering=0) as fh:
            if resident is not None and not all(resident(fh.fileno(), s, k) for s, k in ranges.values()):
                return None
            size = os.fstat(fh.fileno()).st_size
            for n in names:
                start, length = ranges[n]
                if start + length > size:
                    raise _truncated(self.path, n, max(size - start, 0), length)
                base = start - start % mmap.ALLOCATIONGRANULARITY
                mm = mmap.mmap(fh.fileno(), start + length - base, access=mmap.ACCESS_READ, offset=base)
                flat = np.frombuffer(mm, dtype=self.dtype, count=length // self.dtype.itemsize, offset=start - base)
                out[n] = flat.reshape(hi - lo, *self.header["features"][n])
        return out

    def advise(self, names: list[str], lo: int, hi: int) -> None:
        """posix_fadvise(WILLNEED) on the byte range of each contiguous feature."""
        if not hasattr(os, "posix_fadvise"):
            return
        layout = self.layout(names)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for n in names:
                if layout[n][0] is not None:
                    row = self.row_bytes(n)
                    os.posix_fadvise(fd, layout[n][0] + lo * row, (hi - lo) * row, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)


class CompactedH5(H5Shard):
    """A whole cache compacted into one self-describing HDF5 file, error records included (`aigi cache compact`)."""

    @classmethod
    def open(cls, path: Path) -> CompactedH5:
        """Open a compacted file, its header read from the file itself.

        Raises:
            ValueError: when the file is not HDF5 or holds no aigi header.
        """
        try:
            header = cls.read_header(path)
        except OSError as err:
            raise ValueError(f"{path}: not a readable HDF5 file ({err})") from None
        if header is None:
            raise ValueError(f"{path}: HDF5 file without an '{HEADER_KEY}' header; it is not an aigi cache file")
        return cls(path, header)

    def errors(self) -> list[dict]:
        """The error records kept in the file's attribute."""
        with h5py.File(self.path, "r") as f:
            raw = f.attrs.get(ERRORS_KEY)
            return json.loads(raw) if raw is not None else []

    @classmethod
    def write(
        cls,
        out: Path,
        *,
        header: dict,
        meta: pd.DataFrame,
        errors: list[dict],
        batches: Iterable[dict[str, np.ndarray]],
    ) -> None:
        """Write a compacted file atomically: `meta` rows, error records, and the features of `batches` (dicts of
        consecutive rows, in meta order) into datasets of `header`'s shapes and dtype, filled batch by batch."""
        # through a Python file object: a full disk raises a clean OSError instead of failing inside HDF5's close
        with atomic_path(out) as tmp, open(tmp, "w+b") as fh, h5py.File(fh, "w") as f:
            f.attrs[HEADER_KEY] = json.dumps(header)
            f.attrs["n_rows"] = len(meta)
            f.attrs[ERRORS_KEY] = json.dumps(errors)
            group = f.create_group("meta")
            for col, values in meta_columns_h5(meta).items():
                group.create_dataset(col, data=values)
            feats = f.create_group("features")
            for name, shape in header["features"].items():
                feats.create_dataset(name, shape=(len(meta), *shape), dtype=header["dtype"])
            offset = 0
            for batch in batches:
                rows = 0
                for name, arr in batch.items():
                    feats[name][offset : offset + len(arr)] = arr
                    rows = len(arr)
                offset += rows
