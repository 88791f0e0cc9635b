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
PREFETCH = 4  # blocks of batches prepared ahead of the consumer
BLOCK_BYTES = 4 << 20  # a block handed over by the reader thread: whole batches, about this many bytes at most
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

    def _block_bytes(self, prefetch: int) -> int:
        """Bytes per block: the blocks in flight (queued, being filled, being consumed) share half the buffer."""
        return min(BLOCK_BYTES, self.buffer_bytes // (2 * (prefetch + 2)))

    def _chunk_rows(self) -> int:
        return max(1, self.buffer_bytes // (2 * MIX_CHUNKS) // max(self.row_bytes, 1))  # half: the mixed chunks

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

    def _read_into(self, unit: _Unit, dest: dict[str, np.ndarray]) -> int:
        """Read a unit's selected rows to the start of `dest` (arrays of >= hi - lo rows); returns their count."""
        part = self.cache.parts[unit.part]
        path = Path(getattr(part, "path", ""))
        k = len(unit.rows)
        if hasattr(part, "header") and path.suffix == ".parquet":
            feats = self._read_parquet(unit, path)
        elif hasattr(part, "header"):
            self._read_h5(unit, path, dest)
            feats = None
        else:  # UAR .npy files: only the selected rows are read
            feats = part.feature_rows(self.names, unit.rows)
            self.stats.bytes += k * self.row_bytes
            for n, arr in feats.items():
                dest[n][:k] = arr
            return k
        for n in self.names:
            if feats is not None and k == unit.hi - unit.lo:
                dest[n][:k] = feats[n]
            elif feats is not None:
                dest[n][:k] = feats[n][unit.rows - unit.lo]
            elif k != unit.hi - unit.lo:
                dest[n][:k] = dest[n][unit.rows - unit.lo]
        return k

    def _read_h5(self, unit: _Unit, path: Path, dest: dict[str, np.ndarray]) -> None:
        """Rows [lo, hi) of an HDF5 part into dest: one `readinto` at the file offset of a contiguous dataset."""
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
        with open(path, "rb", buffering=0) as fh:
            for n in self.names:
                arr = dest[n][: unit.hi - unit.lo]
                if offs[n] is None:
                    with h5py.File(path, "r") as f:
                        f["features"][n].read_direct(arr, np.s_[unit.lo : unit.hi])
                else:
                    fh.seek(offs[n] + unit.lo * arr[0].nbytes)
                    if fh.readinto(memoryview(arr.reshape(-1).view(np.uint8))) != arr.nbytes:
                        raise ValueError(f"{path}: feature {n!r} is truncated; `aigi cache verify` lists all problems")
                self.stats.bytes += arr.nbytes

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
            prefetch: blocks of batches prepared ahead by the background reader.
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
            target=self._produce,
            args=(units, batch_size, shuffle, rng, out, stop, prefetch),
            daemon=True,
            name="aigi-stream",
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
                feats, pos = item
                for lo in range(0, len(pos), batch_size):
                    self.stats.rows += len(pos[lo : lo + batch_size])
                    self.stats.seconds = base + time.perf_counter() - start
                    yield {n: v[lo : lo + batch_size] for n, v in feats.items()}, pos[lo : lo + batch_size]
        finally:
            self.stats.seconds = base + time.perf_counter() - start
            stop.set()
            while worker.is_alive():  # unblock a producer waiting on a full queue
                try:
                    out.get(timeout=0.05)
                except queue.Empty:
                    pass
            worker.join()

    def _produce(self, units, batch_size, shuffle, rng, out: queue.Queue, stop: threading.Event, prefetch: int) -> None:
        """Reader thread: fill one reused buffer with `MIX_CHUNKS` units (plus the rows carried over), hand out
        batches gathered from it (copies, in a seeded random order when shuffling), carry the remainder."""

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            buf: dict[str, np.ndarray] = {}
            carry: tuple[dict[str, np.ndarray], np.ndarray] | None = None
            mix = MIX_CHUNKS if shuffle else 1
            for i in range(0, len(units), mix):
                group = units[i : i + mix]
                kept = 0 if carry is None else len(carry[1])
                need = kept + sum(u.hi - u.lo for u in group)
                for n, shape in self.dims.items():
                    if n not in buf or len(buf[n]) < need:  # reused: fresh memory would cost page faults
                        buf[n] = np.empty((need, *shape), dtype=self.dtype)
                pos = [] if carry is None else [carry[1]]
                for n in self.names if carry is not None else ():
                    buf[n][:kept] = carry[0][n]
                filled = kept
                for u in group:
                    filled += self._read_into(u, {n: v[filled:] for n, v in buf.items()})
                    pos.append(u.pos)
                    if stop.is_set():
                        return
                pos = np.concatenate(pos)
                order = rng.permutation(filled) if shuffle else np.arange(filled)
                full = filled - filled % batch_size
                block = batch_size * max(1, self._block_bytes(prefetch) // max(batch_size * self.row_bytes, 1))
                for lo in range(0, full, block):  # a queue item holds whole batches, >= BLOCK_BYTES
                    take = order[lo : min(lo + block, full)]
                    if not put(({n: self._gather(buf[n], take, shuffle) for n in self.names}, pos[take])):
                        return
                rest = order[full:]
                carry = ({n: buf[n][rest] for n in self.names}, pos[rest]) if len(rest) else None
            if carry is not None and not put(carry):
                return
            put(None)
        except BaseException as err:  # handed to the consumer, raised there
            put(err)

    @staticmethod
    def _gather(arr: np.ndarray, take: np.ndarray, shuffled: bool) -> np.ndarray:
        if shuffled:
            return np.take(arr, take, axis=0)
        return arr[take[0] : take[-1] + 1].copy()


def open_stream(
    cache, features: list[str] | None = None, where: dict | None = None, *, buffer_bytes: int = BUFFER_BYTES
) -> FeatureStream:
    """A `FeatureStream` over the rows of `cache` (a `cache.Cache`) matching `where`, with the named features."""
    return FeatureStream(cache, features, where, buffer_bytes=buffer_bytes)
