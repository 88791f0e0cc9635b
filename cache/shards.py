"""What every storage kind shares: the stored schema's constants, row validation, digests and plain file writes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from aigi.cache.manifest import MANIFEST_COLUMNS, validate_manifest
from aigi.common.files import writing

SCHEMA_VERSION = 1
FORMATS = ("h5", "parquet")
DTYPES = ("float16", "float32")
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


def write_bytes(target: Path, data: bytes, *, shown: Path | None = None) -> None:
    """Write `data` to `target`; a disk-full or permission error names `shown` (default `target`)."""
    with writing(shown or target), open(target, "wb") as fh:
        fh.write(data)


def coerce_meta(df: pd.DataFrame) -> pd.DataFrame:
    """Give meta columns read from disk the manifest's dtypes."""
    out = {}
    for col in df.columns:
        dtype = MANIFEST_COLUMNS.get(col, ("string", ""))[0]
        out[col] = df[col] if str(df[col].dtype) == dtype else df[col].astype(dtype)
    return pd.DataFrame(out)
