"""Stream the rows of a cache in large sequential chunks, with bounded memory: no torch, numpy batches.

A `FeatureStream` is a selection of rows of one cache (a directory of shards, a compacted `.h5`, a Parquet dataset or
a UAR folder) and a list of features. `batches` reads the selection in chunks of consecutive rows (HDF5: one
`readinto` at the dataset's file offset; Parquet: one row group; UAR: one group of files), in a seeded random chunk
order when shuffling, mixes `mix_chunks` chunks at a time (the shuffle buffer), and hands out batches in the stored
dtype (float16 stays float16: the consumer widens each batch) from a background thread, so that reading overlaps
the consumer's work. Memory held by a stream is about `buffer_bytes` whatever the cache size.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BUFFER_BYTES = 256 << 20  # default memory of a stream's chunks, shuffle buffer and prefetched batches
MIX_CHUNKS = 4  # chunks mixed per shuffle buffer
PREFETCH = 4  # batches prepared ahead of the consumer
BUDGET_SHARE = 4  # a stream's buffers take 1/4 of a memory budget; the rest is headroom (batches, model, allocator)


def stream_buffer(budget: int) -> int:
    """The `buffer_bytes` of a stream that must stay within `budget` bytes of memory."""
    return max(1 << 20, int(budget) // BUDGET_SHARE)


@dataclass
class StreamStats:
    """What a stream has read so far: rows handed out, feature bytes read from storage, wall seconds."""

    rows: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        """`rows, rows/s, GB/s` as one line of progress."""
        s = max(self.seconds, 1e-9)
        return f"{self.rows:,} rows, {self.rows / s:,.0f} rows/s, {self.bytes / s / 1e9:.2f} GB/s"


@dataclass
class _Unit:
    """A run of rows of one part read in one go: local rows [lo, hi) of which `rows` are selected."""

    part: int
    lo: int
    hi: int
    rows: np.ndarray  # selected local rows, sorted
    pos: np.ndarray  # their positions in the stream


class FeatureStream:
    """Rows of one cache with the named features, read on demand in bounded memory.

    Attributes:
        cache: the opened `cache.Cache`.
        names: features handed out.
        meta: meta rows of the selection (no features), position i = row i of the stream.
        stats: totals over every batch handed out so far.
    """

    def __init__(
        self,
        cache,
        features: list[str] | None = None,
        where: dict | None = None,
        *,
        buffer_bytes: int = BUFFER_BYTES,
        _sel=None,
    ) -> None:
        self.cache = cache
        self.names = cache._names(features)
        sel = cache._selection(where) if _sel is None else _sel
        self._part = sel["_part"].to_numpy(dtype=np.int64)
        self._row = sel["_row"].to_numpy(dtype=np.int64)
        self._sel = sel
        self.meta = sel.drop(columns=["_part", "_row"]).reset_index(drop=True)
        self.buffer_bytes = int(buffer_bytes)
        self.stats = StreamStats()
        self._offsets: dict[int, dict[str, int | None]] = {}  # part -> contiguous HDF5 dataset offsets
        self._groups: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._part)

    def __repr__(self) -> str:
        return f"FeatureStream({str(self.cache.path)!r}, rows={len(self)}, features={self.names})"

    @property
    def dims(self) -> dict[str, tuple[int, ...]]:
        """Per-row shape of every streamed feature."""
        return {n: self.cache.features[n] for n in self.names}

    @property
    def dtype(self) -> str:
        """Stored dtype: batches come in it."""
        return str(self.cache.dtype)

    @property
    def labels(self) -> np.ndarray:
        """Labels (0 real, 1 fake) of every row, int64."""
        return self.meta["label"].to_numpy(dtype=np.int64)

    @property
    def row_bytes(self) -> int:
        """Stored bytes of one row's features."""
        item = np.dtype(self.dtype).itemsize
        return int(sum(int(np.prod(s)) for s in self.dims.values()) * item)

    def nbytes(self, dtype: str | None = None) -> int:
        """Bytes of the whole selection's features held in memory as `dtype` (default the stored dtype)."""
        item = np.dtype(dtype or self.dtype).itemsize
        return len(self) * self.row_bytes // np.dtype(self.dtype).itemsize * item

    def subset(self, rows: np.ndarray) -> FeatureStream:
        """The rows selected by a boolean mask or integer positions (kept in stream order)."""
        idx = np.asarray(rows)
        idx = np.flatnonzero(idx) if idx.dtype == bool else np.unique(idx.astype(np.int64))
        return FeatureStream(
            self.cache, self.names, buffer_bytes=self.buffer_bytes, _sel=self._sel.iloc[idx].reset_index(drop=True)
        )

    def load(self, dtype: str | None = None) -> dict[str, np.ndarray]:
        """Every row's features in memory, in stream order (dtype default: the stored one)."""
        out = {n: np.empty((len(self), *s), dtype=dtype or self.dtype) for n, s in self.dims.items()}
        for feats, pos in self.batches(65536, prefetch=1):
            for n, arr in feats.items():
                out[n][pos] = arr
        return out

    # --------------------------------------------------------------------------------------------------------
    # planning and reading

    def _chunk_rows(self) -> int:
        return max(1, self.buffer_bytes // (3 * MIX_CHUNKS) // max(self.row_bytes, 1))

    def _units(self, rows: np.ndarray | None) -> list[_Unit]:
        """The selection (or the given stream positions of it) cut into units of consecutive rows of one part."""
        pos = np.arange(len(self)) if rows is None else np.unique(np.asarray(rows, dtype=np.int64))
        if len(pos) and (pos[0] < 0 or pos[-1] >= len(self)):
            raise ValueError(f"stream positions must lie in [0, {len(self)})")
        part, local = self._part[pos], self._row[pos]
        order = np.lexsort((local, part))
        pos, part, local = pos[order], part[order], local[order]
        units: list[_Unit] = []
        chunk = self._chunk_rows()
        cuts = np.flatnonzero(np.diff(part)) + 1
        for p_pos, p_part, p_local in zip(np.split(pos, cuts), np.split(part, cuts), np.split(local, cuts)):
            if not len(p_pos):
                continue
            bounds = self._bounds(int(p_part[0]), chunk)
            piece = np.searchsorted(bounds, p_local, side="right")
            pcuts = np.flatnonzero(np.diff(piece)) + 1
            for u_pos, u_local in zip(np.split(p_pos, pcuts), np.split(p_local, pcuts)):
                units.append(_Unit(int(p_part[0]), int(u_local[0]), int(u_local[-1]) + 1, u_local, u_pos))
        return units

    def _bounds(self, part_id: int, chunk: int) -> np.ndarray:
        """Row boundaries inside a part that a unit never crosses: Parquet row groups, else every `chunk` rows."""
        part = self.cache.parts[part_id]
        path = Path(getattr(part, "path", ""))
        if path.suffix == ".parquet":
            if part_id not in self._groups:
                import pyarrow.parquet as pq

                md = pq.ParquetFile(path).metadata
                self._groups[part_id] = np.cumsum([md.row_group(i).num_rows for i in range(md.num_row_groups)])
            return self._groups[part_id]
        if not hasattr(part, "header"):  # UAR files: a part is one group of files
            return np.array([part.n])
        return np.arange(chunk, part.n + chunk, chunk)

    def _read(self, unit: _Unit) -> dict[str, np.ndarray]:
        """Features of a unit's selected rows, stored dtype; counts the bytes read."""
        part = self.cache.parts[unit.part]
        path = Path(getattr(part, "path", ""))
        if hasattr(part, "header") and path.suffix not in (".parquet", ""):
            feats = self._read_h5(unit, path)
        elif path.suffix == ".parquet":
            feats = self._read_parquet(unit, path)
        else:
            feats = part.feature_rows(self.names, unit.rows)
            self.stats.bytes += len(unit.rows) * self.row_bytes
            return {n: np.asarray(v, dtype=self.dtype) for n, v in feats.items()}
        if len(unit.rows) == unit.hi - unit.lo:
            return feats
        return {n: v[unit.rows - unit.lo] for n, v in feats.items()}

    def _read_h5(self, unit: _Unit, path: Path) -> dict[str, np.ndarray]:
        import h5py

        if unit.part not in self._offsets:
            self.cache.parts[unit.part]._check()
            with h5py.File(path, "r") as f:
                offs = {}
                for n in self.names:
                    ds = f["features"][n]
                    native = ds.chunks is None and ds.size and ds.dtype == np.dtype(self.dtype)
                    offs[n] = ds.id.get_offset() if native else None
                self._offsets[unit.part] = offs
        offs = self._offsets[unit.part]
        out = {}
        with open(path, "rb") as fh:
            for n, shape in self.dims.items():
                arr = np.empty((unit.hi - unit.lo, *shape), dtype=self.dtype)
                if offs[n] is None:
                    with h5py.File(path, "r") as f:
                        f["features"][n].read_direct(arr, np.s_[unit.lo : unit.hi])
                else:
                    fh.seek(offs[n] + unit.lo * arr[0].nbytes)
                    if fh.readinto(arr.reshape(-1).view(np.uint8)) != arr.nbytes:
                        raise ValueError(f"{path}: feature {n!r} is truncated; `aigi cache verify` lists all problems")
                self.stats.bytes += arr.nbytes
                out[n] = arr
        return out

    def _read_parquet(self, unit: _Unit, path: Path) -> dict[str, np.ndarray]:
        import pyarrow.parquet as pq

        from cache.shards import FEAT_PREFIX, _decode_arrow

        bounds = self._bounds(unit.part, 1)
        group = int(np.searchsorted(bounds, unit.lo, side="right"))
        start = int(bounds[group - 1]) if group else 0
        table = pq.ParquetFile(path).read_row_group(group, columns=[FEAT_PREFIX + n for n in self.names])
        out = {}
        for n, shape in self.dims.items():
            col = table.column(FEAT_PREFIX + n)
            arr = _decode_arrow(col, shape=shape, dtype=self.dtype, where=str(path))
            out[n] = np.array(arr[unit.lo - start : unit.hi - start])
            self.stats.bytes += out[n].nbytes
        return out

    # --------------------------------------------------------------------------------------------------------
    # batches

    def batches(
        self,
        batch_size: int,
        *,
        rows: np.ndarray | None = None,
        shuffle: bool = False,
        seed: int = 0,
        prefetch: int = PREFETCH,
    ) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        """Yield `(features, positions)`: features of `batch_size` rows in the stored dtype, and their positions.

        Args:
            batch_size: rows per batch (the last one may be shorter).
            rows: stream positions to read (default all); duplicates are read once.
            shuffle: seeded random chunk order plus a shuffle of every `MIX_CHUNKS` chunks; else position order.
            seed: the shuffle's seed.
            prefetch: batches prepared ahead by the background reader.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        units = self._units(rows)
        rng = np.random.default_rng(seed)
        if shuffle:
            units = [units[i] for i in rng.permutation(len(units))]
        out: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        stop = threading.Event()
        worker = threading.Thread(
            target=self._produce, args=(units, batch_size, shuffle, rng, out, stop), daemon=True, name="aigi-stream"
        )
        base, start = self.stats.seconds, time.perf_counter()
        worker.start()
        try:
            while True:
                item = out.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                self.stats.rows += len(item[1])
                self.stats.seconds = base + time.perf_counter() - start
                yield item
        finally:
            self.stats.seconds = base + time.perf_counter() - start
            stop.set()
            while worker.is_alive():  # unblock a producer waiting on a full queue
                try:
                    out.get(timeout=0.05)
                except queue.Empty:
                    pass
            worker.join()

    def _produce(self, units, batch_size, shuffle, rng, out: queue.Queue, stop: threading.Event) -> None:
        def put(item) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            carry: tuple[dict[str, np.ndarray], np.ndarray] | None = None
            mix = MIX_CHUNKS if shuffle else 1
            for i in range(0, len(units), mix):
                group = units[i : i + mix]
                reads = [self._read(u) for u in group]
                if stop.is_set():
                    return
                parts = ([carry] if carry is not None else []) + [(r, u.pos) for r, u in zip(reads, group)]
                feats = {n: np.concatenate([p[0][n] for p in parts]) for n in self.names}
                pos = np.concatenate([p[1] for p in parts])
                del reads, parts
                if shuffle:
                    perm = rng.permutation(len(pos))
                    feats, pos = {n: v[perm] for n, v in feats.items()}, pos[perm]
                full = len(pos) - len(pos) % batch_size
                for lo in range(0, full, batch_size):
                    if not put(({n: v[lo : lo + batch_size] for n, v in feats.items()}, pos[lo : lo + batch_size])):
                        return
                carry = ({n: v[full:] for n, v in feats.items()}, pos[full:]) if full < len(pos) else None
            if carry is not None and not put(carry):
                return
            put(None)
        except BaseException as err:  # handed to the consumer, raised there
            put(err)


def open_stream(
    cache, features: list[str] | None = None, where: dict | None = None, *, buffer_bytes: int = BUFFER_BYTES
) -> FeatureStream:
    """A `FeatureStream` over the rows of `cache` (a `cache.Cache`) matching `where`, with the named features."""
    return FeatureStream(cache, features, where, buffer_bytes=buffer_bytes)
