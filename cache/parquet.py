"""The Parquet storage kind (`ParquetShard`): meta columns plus `feat.<name>` columns, one row group per shard.

aigi writes each row's features as one `fixed_size_binary` value (its raw little-endian bytes, decoded without a
copy); Parquet files of other writers may hold list columns, and a header is then inferred from the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from aigi.cache.fingerprint import fingerprint
from aigi.cache.shards import FEAT_PREFIX, HEADER_KEY, META_COLUMNS, SCHEMA_VERSION, UNIQUE_COLUMNS, coerce_meta
from aigi.cache.storage import ShardFile


def _binary_column(arr: np.ndarray) -> pa.Array:
    """One fixed_size_binary value per row holding the row's raw little-endian bytes (zero-copy on read)."""
    n = arr.shape[0]
    raw = np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("<"), copy=False)).reshape(n, -1).view(np.uint8)
    width = raw.shape[1]
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), n, [None, pa.py_buffer(raw)])


def parquet_bytes(*, header: dict, meta: pd.DataFrame, feats: dict[str, np.ndarray]) -> bytes:
    """One Parquet shard (meta columns + `feat.<name>` as fixed_size_binary), built in memory."""
    table = pa.Table.from_pandas(meta, preserve_index=False)
    for name, arr in feats.items():
        table = table.append_column(FEAT_PREFIX + name, _binary_column(arr))
    table = table.replace_schema_metadata({HEADER_KEY: json.dumps(header)})
    sink = pa.BufferOutputStream()
    pq.write_table(
        table,
        sink,
        compression="none",
        use_dictionary=[c for c in META_COLUMNS if c not in UNIQUE_COLUMNS],
        write_statistics=list(META_COLUMNS),
        row_group_size=max(len(meta), 1),
    )
    return sink.getvalue().to_pybytes()


def decode_column(col: pa.ChunkedArray, *, shape: tuple[int, ...], dtype: str, where: str) -> np.ndarray:
    """A feature column as `[rows, *shape]` in `dtype`: fixed_size_binary without a copy, list columns converted.

    Raises:
        ValueError: naming `where` when the column does not hold `shape` values of every row.
    """
    arr = col.combine_chunks()
    n = len(arr)
    if pa.types.is_fixed_size_binary(arr.type):
        width = arr.type.byte_width
        count = width // np.dtype(dtype).itemsize
        if count != int(np.prod(shape)):
            raise ValueError(f"{where}: column holds {count} values per row, the header says shape {shape}")
        out = np.frombuffer(
            arr.buffers()[1], dtype=np.dtype(dtype).newbyteorder("<"), count=n * count, offset=arr.offset * width
        )
        return out.reshape(n, *shape)
    if isinstance(arr, pa.ExtensionArray):  # e.g. fixed_shape_tensor
        arr = arr.storage
    if not (pa.types.is_list(arr.type) or pa.types.is_fixed_size_list(arr.type) or pa.types.is_large_list(arr.type)):
        raise ValueError(f"{where}: feature column of type {arr.type} is not a vector per row")
    values = np.asarray(arr.flatten().to_numpy(zero_copy_only=False), dtype=dtype)
    if values.size != n * int(np.prod(shape)):
        raise ValueError(f"{where}: feature column does not hold {shape} values on every row")
    return values.reshape(n, *shape)


class ParquetShard(ShardFile):
    """One Parquet file of rows; reads never cross a row group (`bounds`), and whole columns decode without a copy."""

    fmt = "parquet"
    suffix = ".parquet"
    encode = staticmethod(parquet_bytes)

    def __init__(self, path: Path, header: dict, **kwargs) -> None:
        super().__init__(path, header, **kwargs)
        self._groups: np.ndarray | None = None

    @classmethod
    def count_rows(cls, path: Path) -> int:
        return pq.read_metadata(path).num_rows

    @classmethod
    def read_header(cls, path: Path) -> dict | None:
        raw = (pq.read_schema(path).metadata or {}).get(HEADER_KEY.encode())
        return json.loads(raw) if raw else None

    @classmethod
    def infer_header(cls, path: Path) -> dict:
        """A header for a Parquet file not written by aigi: `feat.<name>` list columns, float32, empty spec.

        Raises:
            ValueError: when the file has no `feat.<name>` column.
        """
        schema = pq.read_schema(path)
        names = [c[len(FEAT_PREFIX) :] for c in schema.names if c.startswith(FEAT_PREFIX)]
        if not names:
            raise ValueError(f"{path}: no '{FEAT_PREFIX}<name>' feature column and no aigi header; not a feature file")
        first = pq.read_table(path, columns=[FEAT_PREFIX + n for n in names]).slice(0, 1)
        shapes = {n: [len(first.column(FEAT_PREFIX + n)[0].as_py() or [])] for n in names}
        return {
            "schema_version": SCHEMA_VERSION,
            "format": "parquet",
            "spec": {},
            "fingerprint": fingerprint({}),
            "features": shapes,
            "dtype": "float32",
        }

    def read_meta(self) -> pd.DataFrame:
        names = [c for c in pq.read_schema(self.path).names if not c.startswith(FEAT_PREFIX)]
        return coerce_meta(pq.read_table(self.path, columns=names).to_pandas())

    def _decode(self, table: pa.Table, name: str) -> np.ndarray:
        shape = tuple(self.header["features"][name])
        return decode_column(
            table.column(FEAT_PREFIX + name), shape=shape, dtype=self.header["dtype"], where=str(self.path)
        )

    def read(self, names: list[str]) -> dict[str, np.ndarray]:
        self.check()
        table = pq.read_table(self.path, columns=[FEAT_PREFIX + n for n in names], memory_map=True)  # ~1.5x faster
        return {n: self._decode(table, n) for n in names}

    def bounds(self, chunk: int) -> np.ndarray:
        """The ends of the file's row groups (a read decodes one whole group)."""
        if self._groups is None:
            md = pq.ParquetFile(self.path).metadata
            self._groups = np.cumsum([md.row_group(i).num_rows for i in range(md.num_row_groups)])
        return self._groups

    def read_range(self, dest: dict[str, np.ndarray], lo: int, hi: int) -> int:
        """Rows [lo, hi): the whole file read as one memory-mapped table when they are every row, else each row group
        they touch decoded once; the rows are then copied into place."""
        self.check()
        if lo == 0 and hi == self.n:
            got = 0
            for n, arr in self.read(list(dest)).items():
                dest[n][:hi] = arr
                got += arr.nbytes
            return got
        ends = self.bounds(0)
        first = int(np.searchsorted(ends, lo, side="right"))
        got = 0
        with pq.ParquetFile(self.path) as file:
            for group in range(first, len(ends)):
                start = int(ends[group - 1]) if group else 0
                a, b = max(lo, start), min(hi, int(ends[group]))
                if a >= b:
                    break
                table = file.read_row_group(group, columns=[FEAT_PREFIX + n for n in dest])
                for n, arr in dest.items():
                    arr[a - lo : b - lo] = self._decode(table, n)[a - start : b - start]
                    got += arr[a - lo : b - lo].nbytes
        return got

    def read_rows(self, names: list[str], rows: np.ndarray) -> dict[str, np.ndarray]:
        """Whole columns decoded, then indexed."""
        return {k: v[rows] for k, v in self.read(names).items()}
