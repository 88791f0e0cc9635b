"""Pick the storage class for a format, a file or a store's path: the one place that looks at suffixes and layouts.

`open_store` turns a path (a cache directory, a compacted `.h5`, a Parquet file or dataset, a UAR `.npy` folder) into
its header and storage objects (`aigi.cache.storage.Storage`); everything else uses those objects as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aigi.cache.fingerprint import fingerprint
from aigi.cache.hdf5 import CompactedH5, H5Shard
from aigi.cache.layout import CACHE_JSON, SHARD_DIR, SHARD_RE, errors_file, read_cache_json, read_index
from aigi.cache.npyfiles import NpyFiles
from aigi.cache.parquet import ParquetShard
from aigi.cache.shards import FORMATS, SCHEMA_VERSION
from aigi.cache.storage import ShardFile, Storage
from aigi.cache.uar import UAR_FEATURE, load_npy, scan_uar, uar_spec

SHARD_KINDS: dict[str, type[ShardFile]] = {kind.fmt: kind for kind in (H5Shard, ParquetShard)}
assert tuple(SHARD_KINDS) == FORMATS, "every shard format of cache.json has its storage class"
H5_SUFFIXES = (".h5", ".hdf5")
NPY_PART_ROWS = 4096  # files per storage object of a UAR folder


def shard_kind(fmt: str) -> type[ShardFile]:
    """The storage class of shards of format `fmt` ("h5" or "parquet").

    Raises:
        ValueError: for another format, naming the known ones.
    """
    if fmt not in SHARD_KINDS:
        raise ValueError(f"unknown cache format {fmt!r}; choose one of {FORMATS}")
    return SHARD_KINDS[fmt]


def file_kind(path: Path) -> type[ShardFile]:
    """The storage class of a shard file by its suffix: `.parquet` is Parquet, anything else HDF5."""
    return ParquetShard if Path(path).suffix == ParquetShard.suffix else H5Shard


def count_rows(path: Path, fmt: str | None = None) -> int:
    """Row count of a shard file without reading its features (`fmt` h5/parquet, by default from the suffix)."""
    return (shard_kind(fmt) if fmt else file_kind(path)).count_rows(Path(path))


def open_file(path: Path, header: dict | None = None) -> ShardFile:
    """One shard or compacted file as a storage object, under `header` (by default the one stored in the file)."""
    kind = file_kind(path)
    return kind(Path(path), header if header is not None else kind.read_header(Path(path)))


@dataclass
class Store:
    """What `open_store` found: the header, the storage objects in row order, and the store's kind (dir, h5,
    parquet or npy); `whole_folder` is False for a folder that also holds other files than the store's."""

    header: dict
    parts: list[Storage]
    kind: str
    whole_folder: bool = True


def _open_dir(path: Path) -> Store:
    header = read_cache_json(path)
    kind, shard_dir = shard_kind(header["format"]), path / SHARD_DIR
    index = read_index(path)
    if index is None:  # written before shard indexes: every shard file on disk
        files = sorted(shard_dir.glob(f"*{kind.suffix}")) if shard_dir.is_dir() else []
        parts = [kind(f, header, errors_file=errors_file(f)) for f in files if SHARD_RE.match(f.name)]
    else:  # committed shards only: an orphan file of an interrupted commit is not read
        parts = [
            kind(shard_dir / name, header, record=rec, errors_file=errors_file(shard_dir / name))
            for name, rec in sorted(index.items())
        ]
    return Store(header, parts, "dir")


def _open_parquet(path: Path) -> Store:
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*.parquet") if not f.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"{path}: no .parquet files")
    headers = [ParquetShard.read_header(f) for f in files]
    validate = headers[0] is None
    header = headers[0] or ParquetShard.infer_header(files[0])
    for f, h in zip(files, headers):
        if (h or header)["fingerprint"] != header["fingerprint"]:
            raise ValueError(f"{f}: fingerprint differs from {files[0]}; a dataset never mixes fingerprints")
    return Store(header, [ParquetShard(f, header, validate=validate) for f in files], "parquet")


def _open_npy(path: Path, *, source: str | None) -> Store:
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
    parts = [NpyFiles(rows.iloc[i : i + NPY_PART_ROWS], header) for i in range(0, len(rows), NPY_PART_ROWS)]
    return Store(header, parts, "npy", whole_folder=False)


def open_store(path: Path, *, source: str | None = None) -> Store:
    """Open a cache directory, a compacted `.h5`, a Parquet dataset (dir or file) or a UAR `.npy` folder.

    Raises:
        FileNotFoundError: when `path` does not exist or holds nothing readable.
        ValueError: when it is a file of another kind, or damaged.
    """
    make = "make one with `aigi extract` or `aigi import uar`, or pass the path of an existing cache"
    if not path.exists():
        raise FileNotFoundError(f"cache {path} does not exist; {make}")
    if path.is_file():
        if path.suffix in H5_SUFFIXES:
            compacted = CompactedH5.open(path)
            return Store(compacted.header, [compacted], "h5")
        if path.suffix == ParquetShard.suffix:
            return _open_parquet(path)
        raise ValueError(
            f"{path}: expected a cache directory, a .h5 file, a .parquet file or a folder of .npy files; {make}"
        )
    if (path / CACHE_JSON).exists():
        return _open_dir(path)
    if next(path.rglob("*.parquet"), None) is not None:
        return _open_parquet(path)
    if any(next(path.rglob(f"{d}/*.npy"), None) is not None for d in ("0_real", "1_fake")):
        return _open_npy(path, source=source)
    raise FileNotFoundError(
        f"{path}: no {CACHE_JSON}, no .parquet files and no 0_real/1_fake .npy folders, so not a cache; {make}"
    )
