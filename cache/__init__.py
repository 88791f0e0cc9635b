"""The on-disk feature cache: manifests, shards (HDF5 / Parquet), fingerprints, readers and writers. No torch."""

from aigi.cache.featureset import FeatureSet, join
from aigi.cache.fingerprint import canonical_json, fingerprint, spec_diff
from aigi.cache.manifest import (
    MANIFEST_COLUMNS,
    assign_splits,
    read_manifest,
    validate_manifest,
    write_manifest,
)
from aigi.cache.reader import Cache
from aigi.cache.reader import open_cache as open  # noqa: A001  (the public name is `cache.open`)
from aigi.cache.shards import META_COLUMNS, SCHEMA_VERSION
from aigi.cache.tools import compact, info, repair, verify
from aigi.cache.uar import LABEL_DIRS, load_npy, scan_uar, uar_spec
from aigi.cache.writer import CacheWriter

__all__ = [
    "LABEL_DIRS",
    "MANIFEST_COLUMNS",
    "META_COLUMNS",
    "SCHEMA_VERSION",
    "Cache",
    "CacheWriter",
    "FeatureSet",
    "assign_splits",
    "canonical_json",
    "compact",
    "fingerprint",
    "info",
    "join",
    "load_npy",
    "open",
    "read_manifest",
    "repair",
    "scan_uar",
    "spec_diff",
    "uar_spec",
    "validate_manifest",
    "verify",
    "write_manifest",
]
