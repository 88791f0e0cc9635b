"""The on-disk feature cache: manifests, shards (HDF5 / Parquet), fingerprints, readers and writers. No torch."""

from cache.manifest import (
    MANIFEST_COLUMNS,
    assign_splits,
    parse_split_ratio,
    read_manifest,
    validate_manifest,
    write_manifest,
)

__all__ = [
    "MANIFEST_COLUMNS",
    "assign_splits",
    "parse_split_ratio",
    "read_manifest",
    "validate_manifest",
    "write_manifest",
]
