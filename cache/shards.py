"""Shard files: validate rows, write them atomically as HDF5 or Parquet, and read them back fast."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aigi.cache.manifest import MANIFEST_COLUMNS, validate_manifest
from aigi.common.files import writing

SCHEMA_VERSION = 1
FORMATS = ("h5", "parquet")
DTYPES = ("float16", "float32")
SUFFIX = {"h5": ".h5", "parquet": ".parquet"}
META_COLUMNS = (*MANIFEST_COLUMNS, "view")
HEADER_KEY = "aigi.cache"  # HDF5 attribute / Parquet schema metadata key holding the cache header as JSON
ERRORS_KEY = "aigi.errors"  # HDF5 attribute of a compacted file holding the error records as JSON
FEAT_PREFIX = "feat."
ERROR_FIELDS = ("image_id", "path", "view", "reason")
UNIQUE_COLUMNS = ("image_id", "path", "pair_id")  # nearly one value per row: dictionary encoding only costs


# digest of a whole shard file, recorded in the shard index when the shard is committed (sha256: hardware-accelerated
# on current CPUs, it measured faster than blake2b here; see benchmarks/bench_integrity.py)
DIGEST = "sha256"


def file_digest(path: Path) -> str:
    """The hex digest of a file's bytes."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, DIGEST).hexdigest()


def bytes_digest(data: bytes) -> str:
    """The hex digest of `data` (equal to `file_digest` of a file holding it)."""
    return hashlib.new(DIGEST, data).hexdigest()


def prepare_meta(meta: pd.DataFrame, *, where: str) -> pd.DataFrame:
    """Validate meta rows against the manifest schema plus `view` (default "orig"); `where` names the origin."""
    meta = meta.reset_index(drop=True)
    if "view" not in meta.columns:
        meta = meta.assign(view="orig")
    out = validate_manifest(meta, name=where, extra=("view",))
    out["view"] = out["view"].fillna("orig").astype("string")
    return out[list(META_COLUMNS)]


def check_features(
    feats: dict[str, np.ndarray], *, shapes: dict[str, tuple[int, ...]], n: int, dtype: str, where: str
) -> dict[str, np.ndarray]:
    """Check names, shapes and finiteness of a batch of features and cast them to the stored dtype.

    Raises:
        ValueError: naming `where`, the feature and what is wrong.
    """
    if set(feats) != set(shapes):
        raise ValueError(f"{where}: features {sorted(feats)} do not match the cache's {sorted(shapes)}")
    out = {}
    for name, shape in shapes.items():
        arr = np.asarray(feats[name])
        if arr.shape != (n, *shape):
            raise ValueError(f"{where}: feature {name!r} has shape {arr.shape}, expected {(n, *shape)}")
        if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
            raise ValueError(f"{where}: feature {name!r} has dtype {arr.dtype}, expected real numbers")
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below as non-finite values
            cast = np.ascontiguousarray(arr, dtype=dtype)
        if not np.isfinite(cast).all():
            bad = int((~np.isfinite(cast)).reshape(n, -1).any(axis=1).sum())
            what = "NaN/inf" if not np.isfinite(arr).all() else f"values beyond the {dtype} range"
            raise ValueError(f"{where}: feature {name!r} has {what} in {bad} row(s); fix the extractor or input")
        out[name] = cast
    return out


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


def write_h5(target: Path, **kwargs) -> None:
    """Write `h5_bytes(**kwargs)` to the temporary `target` (the caller commits it)."""
    write_bytes(target, h5_bytes(**kwargs))


def write_bytes(target: Path, data: bytes, *, shown: Path | None = None) -> None:
    """Write `data` to `target`; a disk-full or permission error names `shown` (default `target`)."""
    with writing(shown or target), open(target, "wb") as fh:
        fh.write(data)


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


def write_parquet(target: Path, **kwargs) -> None:
    """Write `parquet_bytes(**kwargs)` to the temporary `target` (the caller commits it)."""
    write_bytes(target, parquet_bytes(**kwargs))


def coerce_meta(df: pd.DataFrame) -> pd.DataFrame:
    """Give meta columns read from disk the manifest's dtypes."""
    out = {}
    for col in df.columns:
        dtype = MANIFEST_COLUMNS.get(col, ("string", ""))[0]
        out[col] = df[col] if str(df[col].dtype) == dtype else df[col].astype(dtype)
    return pd.DataFrame(out)


def read_header(path: Path) -> dict | None:
    """The cache header stored inside a shard or compacted file, or None when it has none."""
    if path.suffix == ".parquet":
        raw = (pq.read_schema(path).metadata or {}).get(HEADER_KEY.encode())
        return json.loads(raw) if raw else None
    with h5py.File(path, "r") as f:
        raw = f.attrs.get(HEADER_KEY)
        return json.loads(raw) if raw is not None else None


def read_meta(path: Path) -> pd.DataFrame:
    """All meta columns of a shard or compacted file."""
    if path.suffix == ".parquet":
        names = [c for c in pq.read_schema(path).names if not c.startswith(FEAT_PREFIX)]
        table = pq.read_table(path, columns=names)
        return coerce_meta(table.to_pandas())
    with h5py.File(path, "r") as f:
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


def _decode_arrow(col: pa.ChunkedArray, *, shape: tuple[int, ...], dtype: str, where: str) -> np.ndarray:
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


def read_features(path: Path, names: list[str], *, header: dict) -> dict[str, np.ndarray]:
    """Whole feature matrices of a shard or compacted file, in the stored dtype (read fully, no fancy indexing)."""
    dtype = header["dtype"]
    shapes = {k: tuple(v) for k, v in header["features"].items()}
    if path.suffix == ".parquet":
        table = pq.read_table(path, columns=[FEAT_PREFIX + n for n in names], memory_map=True)  # ~1.5x faster here
        return {
            n: _decode_arrow(table.column(FEAT_PREFIX + n), shape=shapes[n], dtype=dtype, where=str(path))
            for n in names
        }
    with h5py.File(path, "r") as f:
        return {n: _read_dataset(path, f["features"][n]) for n in names}


def _read_dataset(path: Path, ds: h5py.Dataset, out: np.ndarray | None = None) -> np.ndarray:
    """Read a whole dataset. A contiguous, unfiltered one is read like np.load: one `readinto` at its file offset."""
    if out is None:
        out = np.empty(ds.shape, dtype=ds.dtype)
    offset = ds.id.get_offset() if ds.chunks is None and out.size else None
    if offset is None or out.dtype != ds.dtype or not out.flags.c_contiguous:
        if out.size:
            ds.read_direct(out)
        return out
    with open(path, "rb") as fh:
        fh.seek(offset)
        got = fh.readinto(out.reshape(-1).view(np.uint8))
    if got != out.nbytes:
        raise ValueError(f"{path}: dataset {ds.name} is truncated ({got} of {out.nbytes} bytes)")
    return out


def read_features_into(path: Path, dest: dict[str, np.ndarray], *, header: dict) -> None:
    """Read whole feature matrices into preallocated arrays of the stored dtype (HDF5: no intermediate copy)."""
    if path.suffix == ".parquet":
        for name, arr in read_features(path, list(dest), header=header).items():
            dest[name][...] = arr
        return
    with h5py.File(path, "r") as f:
        for name, out in dest.items():
            _read_dataset(path, f["features"][name], out)


def read_feature_rows(path: Path, names: list[str], rows: np.ndarray, *, header: dict) -> dict[str, np.ndarray]:
    """Features of the given sorted, unique rows. Contiguous HDF5 datasets are memory-mapped and indexed in numpy
    (as fast as a memmapped .npy); other HDF5 layouts use h5py point selection; Parquet decodes whole columns."""
    if path.suffix != ".parquet":
        with h5py.File(path, "r") as f:
            out = {}
            for name in names:
                ds = f["features"][name]
                offset = ds.id.get_offset() if ds.chunks is None and ds.size else None
                if offset is not None and ds.dtype.isnative:
                    out[name] = np.array(np.memmap(path, dtype=ds.dtype, mode="r", offset=offset, shape=ds.shape)[rows])
                else:
                    out[name] = ds[rows] if len(rows) else np.zeros((0, *ds.shape[1:]), ds.dtype)
            return out
    return {k: v[rows] for k, v in read_features(path, names, header=header).items()}


def read_errors(path: Path) -> list[dict]:
    """Error records kept in a compacted HDF5 file (empty for other files)."""
    if path.suffix == ".parquet":
        return []
    with h5py.File(path, "r") as f:
        raw = f.attrs.get(ERRORS_KEY)
        return json.loads(raw) if raw is not None else []


def count_rows(path: Path, fmt: str | None = None) -> int:
    """Row count of a shard without reading its features (`fmt` h5/parquet, by default from the suffix)."""
    if (fmt or path.suffix.lstrip(".")) == "parquet":
        return pq.read_metadata(path).num_rows
    with h5py.File(path, "r") as f:
        return int(f.attrs["n_rows"])
