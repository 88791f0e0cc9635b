"""The one interface every storage kind implements (`Storage`), and what the file-backed kinds share (`ShardFile`).

A storage object is one run of rows of one kind: an HDF5 shard, a Parquet shard, a compacted `.h5` file, a group of
UAR `.npy` files. `Cache`, `FeatureStream` and the cache tools read, map and verify rows only through these methods;
`aigi.cache.kinds` is the one place that looks at a path and picks the class.
"""

from __future__ import annotations

import json
import stat
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from aigi.cache.layout import INDEX_JSON
from aigi.cache.shards import DIGEST, file_digest, prepare_meta

# residency probe: (open file descriptor, byte offset, byte length) -> whether those bytes are in the page cache
Resident = Callable[[int, int, int], bool]


class Storage(ABC):
    """Rows of one storage kind, read without the caller knowing which kind.

    Attributes:
        path: the file (for a group of files: their folder) that messages name.
        header: the header of the cache the rows belong to (`features` name -> shape, `dtype`, `fingerprint`).
        n: row count (0 when the storage is damaged: see `broken`).
        broken: why the storage cannot be read, found when it was opened ("" when it can).
        record: what the shard index recorded of it at commit (rows, bytes, digest), or None.
        threaded: True when one read already runs on several threads (readers then do not overlap such parts).
    """

    threaded: ClassVar[bool] = False
    path: Path
    header: dict
    n: int
    broken: str = ""
    record: dict | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, rows={self.n})"

    def check(self) -> None:
        """Raise when the storage was found damaged when opened: one line naming the file and the fix.

        Raises:
            ValueError: naming `path`, what is wrong, and the `aigi cache verify` / `repair` commands.
        """
        if self.broken:
            raise ValueError(
                f"{self.path}: damaged shard ({self.broken}); `aigi cache verify` lists all problems and "
                "`aigi cache repair` drops them"
            )

    def row_bytes(self, name: str) -> int:
        """Stored bytes of one row of feature `name`."""
        shape = self.header["features"][name]
        return int(np.prod(shape)) * np.dtype(self.header["dtype"]).itemsize

    @abstractmethod
    def meta(self) -> pd.DataFrame:
        """Every meta row (no features), in storage order."""

    @abstractmethod
    def stored_header(self) -> dict | None:
        """The cache header stored inside the storage itself, or None when it stores none."""

    @abstractmethod
    def read(self, names: list[str]) -> dict[str, np.ndarray]:
        """Whole feature matrices (every row) of the named features, in the stored dtype."""

    @abstractmethod
    def read_range(self, dest: dict[str, np.ndarray], lo: int, hi: int) -> int:
        """Rows [lo, hi) of the features named by `dest`'s keys into the first hi - lo rows of its arrays (stored
        dtype, C-contiguous rows), as directly as the kind allows; returns the feature bytes read from storage."""

    @abstractmethod
    def read_rows(self, names: list[str], rows: np.ndarray) -> dict[str, np.ndarray]:
        """The given sorted, unique rows of the named features, reading as little as the kind allows."""

    @abstractmethod
    def files(self) -> list[Path]:
        """The files the rows are stored in (those that exist)."""

    def read_selected(self, dest: dict[str, np.ndarray], lo: int, hi: int, rows: np.ndarray) -> int:
        """The selected `rows` (sorted, in [lo, hi)) into the first len(rows) rows of `dest`'s arrays (which hold at
        least hi - lo rows); returns the feature bytes read. By default the range is read in one go and the selected
        rows moved to the front."""
        got = self.read_range(dest, lo, hi)
        k = len(rows)
        if k != hi - lo:
            for arr in dest.values():
                arr[:k] = arr[rows - lo]
        return got

    def map_range(self, names: list[str], lo: int, hi: int, *, resident: Resident | None = None):
        """Rows [lo, hi) as read-only arrays over the storage's pages (memory-mapped), or None when this kind cannot
        map them or `resident` (a page-cache probe, given when mapping pays only for pages already in memory) says
        a range is not in memory. The default: None."""
        return None

    def advise(self, names: list[str], lo: int, hi: int) -> None:
        """Ask the kernel to start reading rows [lo, hi) in the background (a no-op where the kind cannot)."""
        return None

    def bounds(self, chunk: int) -> np.ndarray:
        """Row boundaries inside the storage that one read never crosses (every `chunk` rows by default)."""
        return np.arange(chunk, self.n + chunk, chunk)

    def digest(self) -> str | None:
        """The digest of the stored bytes as the shard index records it, or None where nothing is recorded."""
        return None

    def errors(self) -> list[dict]:
        """Error records of the images that could not be read, kept with these rows."""
        return []

    def nbytes(self) -> int:
        """Bytes on disk of the files the rows are stored in."""
        return sum(f.stat().st_size for f in self.files())

    def verify(self) -> tuple[list[str], pd.DataFrame | None]:
        """Check the storage on its own: opened sound, bytes match the recorded digest, readable, shapes and row
        count agree, every value finite, stored fingerprint (if any) is the cache's.

        Returns:
            The problems found (each one line naming the file), and the meta rows when there is none.
        """
        if self.broken:
            return [f"{self.path}: {self.broken}"], None
        try:
            changed = self.record is not None and self.digest() != self.record.get(DIGEST)
        except PermissionError as err:  # not damage: repair leaves such a file alone
            return [f"{self.path}: cannot be read ({err.strerror}); fix its permissions"], None
        if changed:
            return [f"{self.path}: bytes differ from the digest recorded at commit (changed or damaged file)"], None
        features = {k: tuple(v) for k, v in self.header["features"].items()}
        try:
            meta = self.meta()
            feats = self.read(list(features))
        except PermissionError as err:  # not damage: repair leaves such a file alone
            return [f"{self.path}: cannot be read ({err.strerror}); fix its permissions"], None
        except Exception as err:  # any unreadable shard is a problem to list, not a crash
            return [f"{self.path}: unreadable ({type(err).__name__}: {err})"], None
        problems = []
        for name, arr in feats.items():
            if arr.shape != (len(meta), *features[name]):
                problems.append(f"{self.path}: feature {name!r} has shape {arr.shape}, meta has {len(meta)} rows")
            elif not np.isfinite(arr).all():
                problems.append(f"{self.path}: feature {name!r} holds NaN/inf values")
        if len(meta) != self.n:
            problems.append(f"{self.path}: row count {self.n} in the header but {len(meta)} meta rows")
        own = self.stored_header()
        if own is not None and own["fingerprint"] != self.header["fingerprint"]:
            problems.append(f"{self.path}: fingerprint {own['fingerprint'][:12]} differs from the cache's")
        return problems, (None if problems else meta)


class ShardFile(Storage):
    """One self-describing file of rows (HDF5 or Parquet): what both file kinds share.

    Opening counts the rows without reading features; a missing file, an unreadable one, or one whose row count or
    size differs from its index `record` is marked `broken` (reported when read, listed by verify).
    """

    fmt: ClassVar[str]  # the format name of cache.json ("h5", "parquet")
    suffix: ClassVar[str]  # the file name suffix of a shard of this kind

    def __init__(
        self,
        path: Path,
        header: dict,
        *,
        record: dict | None = None,
        errors_file: Path | None = None,
        validate: bool = False,
    ) -> None:
        self.path, self.header, self.record = Path(path), header, record
        self.errors_file, self.validate = errors_file, validate
        self.broken = ""
        try:
            if not stat.S_ISREG(self.path.stat().st_mode):  # a folder, or a FIFO whose read would block
                raise ValueError("not a regular file")
            self.n = self.count_rows(self.path)
        except FileNotFoundError:
            self.n, self.broken = 0, f"recorded in {INDEX_JSON} but missing"
        except PermissionError as err:
            self.n, self.broken = 0, f"cannot be read ({err.strerror}); fix its permissions"
        except Exception as err:  # reported when read, and listed by verify
            self.n, self.broken = 0, f"{type(err).__name__}: {err}"
        if record is not None and not self.broken:
            size = self.path.stat().st_size
            if self.n != record["rows"] or size != record["bytes"]:
                self.broken = f"holds {self.n} rows in {size} bytes, {INDEX_JSON} recorded {record['rows']} rows"
                self.broken += f" in {record['bytes']} bytes"
                self.n = 0

    @classmethod
    @abstractmethod
    def count_rows(cls, path: Path) -> int:
        """Row count of the file at `path` without reading its features (raises when it is unreadable)."""

    @classmethod
    @abstractmethod
    def read_header(cls, path: Path) -> dict | None:
        """The cache header stored in the file at `path`, or None when it has none."""

    @staticmethod
    @abstractmethod
    def encode(*, header: dict, meta: pd.DataFrame, feats: dict[str, np.ndarray]) -> bytes:
        """The bytes of one shard file of this kind holding `meta` and `feats` (validated) under `header`."""

    @abstractmethod
    def read_meta(self) -> pd.DataFrame:
        """The meta columns as stored (with the manifest's dtypes), not validated."""

    def meta(self) -> pd.DataFrame:
        self.check()
        df = self.read_meta()
        return prepare_meta(df, where=str(self.path)) if self.validate else df

    def stored_header(self) -> dict | None:
        return self.read_header(self.path)

    def files(self) -> list[Path]:
        found = [self.path] if self.path.is_file() else []
        return found + ([self.errors_file] if self.errors_file is not None and self.errors_file.is_file() else [])

    def digest(self) -> str | None:
        return file_digest(self.path)

    def errors(self) -> list[dict]:
        """The records of the errors file beside the shard (none when it has none)."""
        if self.errors_file is None or not self.errors_file.exists():
            return []
        return json.loads(self.errors_file.read_text(encoding="utf-8"))
