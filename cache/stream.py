"""Stream the rows of a cache in large sequential chunks, with bounded memory: no torch, numpy batches.

A `FeatureStream` is a selection of rows of one cache (a directory of shards, a compacted `.h5`, a Parquet dataset or
a UAR folder) and a list of features: a `common.rows.Rows` whose features stay on disk. `batches` reads the selection
in chunks of consecutive rows (HDF5: the dataset's byte range memory-mapped when its pages are in the page cache, else
one `readinto` at its file offset; Parquet: one row group; UAR: one group of files), in a seeded random chunk order
when shuffling, mixes `MIX_CHUNKS` chunks at a time (the shuffle buffer), and hands out batches in the stored dtype
(float16 stays float16: the consumer widens each batch), gathered into a few reused buffers by a background thread,
so that reading overlaps the consumer's work. A pass over more than one batch reports rows/s and GB/s as progress
lines (the `aigi.progress` logger) every `PROGRESS_SECONDS` and at its end.
Memory held by a stream is about `buffer_bytes` whatever the cache size. `join_streams` joins streams of several
caches on (image_id, view) as `cache.join` joins loaded sets (a `JoinedStream`).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

BUFFER_BYTES = 256 << 20  # default memory of a stream's chunks, shuffle buffer and prefetched batches
MIX_CHUNKS = 4  # chunks mixed per shuffle buffer
PREFETCH = 4  # blocks of batches prepared ahead of the consumer
BLOCK_BYTES = 4 << 20  # a block handed over by the reader thread: whole batches, about this many bytes at most
ADVISE = True  # read the next chunks ahead with posix_fadvise(WILLNEED)
MAP = True  # HDF5 rows are gathered from mapped file pages (False: each unit's range is read into a buffer first)
SPARSE = 4  # a unit is sparse when it selects fewer than 1 row in SPARSE of its range (its range is not read ahead)
BUDGET_SHARE = 4  # a stream's buffers take 1/4 of a memory budget; the rest is headroom (batches, model, allocator)
PROGRESS_SECONDS = 10.0  # a pass reports its rows/s and GB/s this often (and once at its end)
PROGRESS = logging.getLogger("aigi.progress")


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
    """Rows of one cache with the named features, read on demand in bounded memory (a `common.rows.Rows`).

    Attributes:
        cache: the opened `cache.Cache`.
        names: features handed out.
        meta: meta rows of the selection (no features), position i = row i of the stream; `with_meta` replaces it
            (e.g. with a `domain` column from an `aigi domains` table).
        stats: totals over every batch handed out so far.
    """

    def __init__(
        self,
        cache,
        features: list[str] | None = None,
        where: dict | None = None,
        *,
        buffer_bytes: int = BUFFER_BYTES,
    ) -> None:
        self.cache = cache
        self.names = cache.feature_names(features)
        sel = cache.selection(where)
        self._part = sel["_part"].to_numpy(dtype=np.int64)
        self._row = sel["_row"].to_numpy(dtype=np.int64)
        self.meta = sel.drop(columns=["_part", "_row"]).reset_index(drop=True)
        self.buffer_bytes = int(buffer_bytes)
        self.stats = StreamStats()

    def _like(self, idx: np.ndarray | None = None, meta: pd.DataFrame | None = None) -> FeatureStream:
        """A stream over the same cache and features: rows `idx` (sorted positions; None: all), with `meta` (None:
        those rows of this stream's meta)."""
        out = object.__new__(type(self))
        out.__dict__.update(self.__dict__)
        if idx is not None:
            out._part, out._row = self._part[idx], self._row[idx]
        if meta is None:
            meta = self.meta if idx is None else self.meta.iloc[idx].reset_index(drop=True)
        out.meta, out.stats = meta, StreamStats()
        return out

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
    def _own(self) -> dict[str, tuple[int, ...]]:
        """Per-row shape of the features read from this stream's own cache (by their names there)."""
        return {n: self.cache.features[n] for n in self.names}

    @property
    def labels(self) -> np.ndarray:
        """Labels (0 real, 1 fake) of every row, int64."""
        return self.meta["label"].to_numpy(dtype=np.int64)

    def arrays(self) -> None:
        """None: the features stay on disk (see `common.rows.Rows`)."""
        return None

    def column(self, name: str) -> np.ndarray:
        """One meta column as a numpy array (as `FeatureSet.column`)."""
        if name not in self.meta.columns:
            raise ValueError(f"unknown meta column {name!r}; columns are {list(self.meta.columns)}")
        col = self.meta[name]
        return col.to_numpy(dtype=object) if col.dtype == "string" else col.to_numpy()

    def with_meta(self, meta: pd.DataFrame) -> FeatureStream:
        """The same rows with another meta table (same length and order, e.g. with a `domain` column added)."""
        if len(meta) != len(self):
            raise ValueError(f"meta has {len(meta)} rows, the stream {len(self)}")
        return self._like(None, meta.reset_index(drop=True))

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
        """The rows selected by a boolean mask or integer positions (kept in stream order; every row in order: this
        stream itself, no copy)."""
        idx = np.asarray(rows)
        idx = np.flatnonzero(idx) if idx.dtype == bool else sorted_unique(idx)
        if len(idx) == len(self) and (len(idx) == 0 or (idx[0] == 0 and idx[-1] == len(self) - 1)):
            return self
        return self._like(idx)

    def load(self, dtype: str | None = None) -> dict[str, np.ndarray]:
        """Every row's features in memory, in stream order (dtype default: the stored one)."""
        out = {n: np.empty((len(self), *s), dtype=dtype or self.dtype) for n, s in self.dims.items()}
        for feats, pos in self.batches(65536, prefetch=1, report=False):
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
        pos = np.arange(len(self)) if rows is None else sorted_unique(rows)
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
        """Row boundaries inside a part that a unit never crosses (the part's: Parquet row groups, a group of UAR
        files, else every `chunk` rows)."""
        return self.cache.parts[part_id].bounds(chunk)

    def _read_into(self, unit: _Unit, dest: dict[str, np.ndarray]) -> int:
        """Read a unit's selected rows to the start of `dest` (arrays of >= hi - lo rows); returns their count.
        HDF5: one `readinto` of the range at its file offset; Parquet: its row group; UAR: only the selected files."""
        self.stats.bytes += self.cache.parts[unit.part].read_selected(dest, unit.lo, unit.hi, unit.rows)
        return len(unit.rows)

    def _advise(self, units: list[_Unit]) -> None:
        """Ask the kernel to start reading these units' byte ranges (contiguous HDF5 datasets) in the background, so
        that a cold cache's next chunks arrive while the current ones are handed out; a no-op for cached pages."""
        if not ADVISE:
            return
        for u in units:
            self.cache.parts[u.part].advise(self.names, u.lo, u.hi)

    def _map(self, unit: _Unit, *, dense: bool = False) -> dict[str, np.ndarray] | None:
        """Rows [lo, hi) of a part as read-only arrays over the file's pages (memory-mapped), or None when `MAP` is
        off, the part cannot map them (not a contiguous HDF5 dataset of the stored dtype), or the unit is dense and
        its pages are not in the page cache (`_cached`).

        Mapped rows are gathered straight from the page cache: one copy, where `readinto` + gather made two (warm,
        2 M x 1,024 float16: 0.9 s a pass instead of 1.4 s). A dense range on disk is read with one sequential
        `readinto` instead (large requests; faulting its pages in as a shuffled gather touches them was 15-30%
        slower cold). A sparse unit is always mapped: only the pages of its rows are read."""
        if not MAP:
            return None
        part = self.cache.parts[unit.part]
        out = part.map_range(self.names, unit.lo, unit.hi, resident=_cached if dense else None)
        if out is not None:
            self.stats.bytes += sum(arr.nbytes for arr in out.values())
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
        report: bool = True,
    ) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        """Yield `(features, positions)`: features of `batch_size` rows in the stored dtype, and their positions.

        The arrays of a batch are reused once the next batch is asked for: copy them to keep them.

        Args:
            batch_size: rows per batch (the last one may be shorter).
            rows: stream positions to read (default all); duplicates are read once.
            shuffle: seeded random chunk order plus a shuffle of every `MIX_CHUNKS` chunks (a batch's rows come in
                storage order: the batches are random, the order inside one does not change a mean); else position
                order.
            seed: the shuffle's seed.
            prefetch: blocks of batches prepared ahead by the background reader.
            report: log progress lines (rows/s, GB/s) during and at the end of a pass of more than one batch.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        units = self._units(rows)
        rng = np.random.default_rng(seed)
        if shuffle:
            units = [units[i] for i in rng.permutation(len(units))]
        out: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        plan = _Plan(batch_size, shuffle, rng, self._block_rows(batch_size, prefetch))
        free: queue.Queue = queue.Queue()
        fit = self.buffer_bytes // 2 // max(plan.block * self.row_bytes, 1)  # large batches: fewer blocks ahead
        for slot in range(max(2, min(max(1, prefetch) + 2, fit))):  # queued, being filled, being consumed
            free.put(slot)
        stop = threading.Event()
        worker = threading.Thread(
            target=self._produce, args=(units, plan, out, free, stop), daemon=True, name="aigi-stream"
        )
        base, start = self.stats.seconds, time.perf_counter()
        meter = _Meter(self.stats, sum(len(u.rows) for u in units), report)
        worker.start()
        try:
            held = None
            while True:
                item = out.get()
                if held is not None:
                    free.put(held)  # the consumer has moved on: the previous block's memory is reused
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                held, feats, pos = item
                for lo in range(0, len(pos), batch_size):
                    self.stats.rows += len(pos[lo : lo + batch_size])
                    self.stats.seconds = base + time.perf_counter() - start
                    yield {n: v[lo : lo + batch_size] for n, v in feats.items()}, pos[lo : lo + batch_size]
                    meter.tick()
            meter.done()
        finally:
            self.stats.seconds = base + time.perf_counter() - start
            stop.set()
            while worker.is_alive():  # unblock a producer waiting on a full queue
                try:
                    out.get(timeout=0.05)
                except queue.Empty:
                    pass
            worker.join()

    def _block_rows(self, batch_size: int, prefetch: int) -> int:
        """Rows of a block handed over at once: whole batches, about `_block_bytes` at most (one batch at least)."""
        return batch_size * max(1, self._block_bytes(prefetch) // max(batch_size * self.row_bytes, 1))

    def _produce(self, units: list[_Unit], plan: _Plan, out: queue.Queue, free: queue.Queue, stop) -> None:
        """Reader thread: take `MIX_CHUNKS` units at a time (mapped, or read into one reused buffer) plus the rows
        carried over, hand out blocks of batches gathered from them into reused slots, carry the remainder."""

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def slot() -> int | None:
            while not stop.is_set():
                try:
                    return free.get(timeout=0.1)
                except queue.Empty:
                    continue
            return None

        try:
            buf: dict[str, np.ndarray] = {}
            carry: _Segment | None = None
            mix = MIX_CHUNKS if plan.shuffle else 1
            for i in range(0, len(units), mix):
                segs = [] if carry is None else [carry]
                segs += self._segments(units[i : i + mix], buf)
                self._advise(units[i + mix : i + 2 * mix])  # the next group is read from disk during this one
                if stop.is_set():
                    return
                carry = self._hand_out(segs, plan, put, slot)
                if carry is False:
                    return
            if carry is not None and not put((None, carry.feats, carry.pos)):
                return
            put(None)
        except BaseException as err:  # handed to the consumer, raised there
            put(err)

    def _segments(self, units: list[_Unit], buf: dict[str, np.ndarray]) -> list[_Segment]:
        """The units' rows: HDF5 ranges mapped in place, other units read into `buf` (grown when short, reused)."""
        segs, unread = [], []
        for u in units:
            mapped = self._map(u, dense=len(u.rows) * SPARSE >= u.hi - u.lo)  # sparse: another cache's rows, say
            if mapped is None:
                unread.append(u)
            else:
                segs.append(_Segment(mapped, u.rows - u.lo, u.pos))
        need = sum(u.hi - u.lo for u in unread)
        for n, shape in self._own.items():
            if need and (n not in buf or len(buf[n]) < need):  # reused: fresh memory would cost page faults
                buf.pop(n, None)  # the short buffer goes first: never both at once
                buf[n] = np.empty((need, *shape), dtype=self.dtype)
        at = 0
        for u in unread:
            k = self._read_into(u, {n: v[at:] for n, v in buf.items()})
            segs.append(_Segment({n: v[at : at + k] for n, v in buf.items()}, np.arange(k), u.pos))
            at += u.hi - u.lo
        return segs

    def _fetch(self, pos: np.ndarray, buf: dict[str, np.ndarray], out: dict[str, np.ndarray]) -> None:
        """Features of the distinct stream positions `pos` (any order) in that order, read in sorted
        runs of at most a chunk (rows stored in the same order as the request make one sequential read) through
        the reused buffer `buf`, into `out` (arrays of len(pos) rows)."""
        order = np.argsort(pos, kind="stable")
        ranked = pos[order]
        for u in self._units(pos):
            seg = self._segments([u], buf)[0]
            dest = order[np.searchsorted(ranked, u.pos)]
            run = len(dest) and dest[-1] - dest[0] == len(dest) - 1 and bool((np.diff(dest) == 1).all())
            for n, arr in seg.feats.items():
                if run:
                    np.take(arr, seg.rows, axis=0, out=out[n][dest[0] : dest[-1] + 1], mode="clip")
                else:
                    out[n][dest] = arr[seg.rows]

    def _hand_out(self, segs: list[_Segment], plan: _Plan, put, slot) -> _Segment | None | bool:
        """Put the whole batches of `segs` (in a seeded random order when shuffling) on the queue in blocks gathered
        into reused slots; returns the rows left over (a copy), or False when stopped."""
        starts = np.cumsum([0] + [len(sg.rows) for sg in segs])
        m = int(starts[-1])
        order = plan.rng.permutation(m) if plan.shuffle else np.arange(m)
        full = m - m % plan.batch_size
        for lo in range(0, full, plan.block):
            idx = order[lo : min(lo + plan.block, full)]
            if plan.shuffle:  # each batch's rows in storage order: sequential reads, contiguous gathers
                idx = np.sort(idx.reshape(-1, plan.batch_size), axis=1).reshape(-1)
            s = slot()
            if s is None:
                return False
            if s not in plan.slots:
                plan.slots[s] = {n: np.empty((plan.block, *sh), dtype=self.dtype) for n, sh in self.dims.items()}
            feats = {n: v[: len(idx)] for n, v in plan.slots[s].items()}
            if not put((s, feats, _gather(segs, starts, idx, feats))):
                return False
        rest = np.sort(order[full:])
        if not len(rest):
            return None
        feats = {n: np.empty((len(rest), *sh), dtype=self.dtype) for n, sh in self.dims.items()}
        return _Segment(feats, np.arange(len(rest)), _gather(segs, starts, rest, feats))


class _Meter:
    """The progress lines of one pass: rows/s and GB/s every PROGRESS_SECONDS, and at the end of a pass of more than
    one batch (`stream: 12,000/20,000 rows in 3.1 s, 3,871 rows/s, 0.32 GB/s`)."""

    def __init__(self, stats: StreamStats, total: int, report: bool) -> None:
        self.stats, self.total, self.report = stats, total, report
        self.rows0, self.bytes0, self.n = stats.rows, stats.bytes, 0
        self.start = self.last = time.perf_counter()

    def tick(self) -> None:
        self.n += 1
        now = time.perf_counter()
        if self.report and now - self.last >= PROGRESS_SECONDS:
            self.last = now
            PROGRESS.info(self.line(now))

    def done(self) -> None:
        if self.report and self.n > 1:
            PROGRESS.info(self.line(time.perf_counter()))

    def line(self, now: float) -> str:
        seconds = now - self.start
        rows, nbytes, s = self.stats.rows - self.rows0, self.stats.bytes - self.bytes0, max(seconds, 1e-9)
        speed = f"{rows / s:,.0f} rows/s, {nbytes / s / 1e9:.2f} GB/s"
        return f"stream: {rows:,}/{self.total:,} rows in {seconds:.1f} s, {speed}"


@dataclass
class _Plan:
    """How a pass hands out rows: batch size, shuffling and its generator, rows per block, the reused slots."""

    batch_size: int
    shuffle: bool
    rng: np.random.Generator
    block: int
    slots: dict = field(default_factory=dict)


@dataclass
class _Segment:
    """Rows at hand in the reader: arrays holding them (mapped file pages, the read buffer or a copy), the selected
    rows' indices into those arrays, and their stream positions."""

    feats: dict[str, np.ndarray]
    rows: np.ndarray
    pos: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # features of other caches, row i = rows[i]


def _gather(segs: list[_Segment], starts: np.ndarray, idx: np.ndarray, out: dict[str, np.ndarray]) -> np.ndarray:
    """Copy rows `idx` (numbered across the segments, which start at `starts`) into `out`; returns their positions.
    One `np.take` per run of rows from the same segment (mode "clip": the rows are valid by construction, and a
    checked take into `out` goes through a temporary copy, 2.5x slower)."""
    seg_of = np.searchsorted(starts, idx, side="right") - 1
    pos = np.empty(len(idx), dtype=np.int64)
    cuts = [0, *(np.flatnonzero(np.diff(seg_of)) + 1).tolist(), len(idx)]
    for a, b in zip(cuts[:-1], cuts[1:]):
        sg = segs[int(seg_of[a])]
        local = idx[a:b] - starts[int(seg_of[a])]
        rows = sg.rows[local]
        for n, dest in out.items():
            if n in sg.feats:
                np.take(sg.feats[n], rows, axis=0, out=dest[a:b], mode="clip")
            else:  # joined from another cache: stored compactly, one row per selected row
                np.take(sg.extra[n], local, axis=0, out=dest[a:b], mode="clip")
        pos[a:b] = sg.pos[local]
    return pos


PROBES = 8  # pages of a range checked for residency in the page cache


def _cached(fd: int, start: int, length: int) -> bool:
    """Whether a byte range of a file is in the page cache, judged from `PROBES` pages spread over it: a one-byte
    read that may not wait for the disk (`RWF_NOWAIT`, Linux) succeeds on each. False where that cannot be asked (the
    range is then read, not mapped) or when the range lies beyond the end of the file."""
    flag = getattr(os, "RWF_NOWAIT", None)
    if flag is None or not hasattr(os, "preadv"):
        return False
    one = bytearray(1)
    for at in np.linspace(start, start + max(length - 1, 0), PROBES).astype(np.int64).tolist():
        try:
            if os.preadv(fd, [one], at, flag) != 1:
                return False
        except OSError:  # EAGAIN: on disk; EOPNOTSUPP: a file system that cannot tell
            return False
    return True


def sorted_unique(values) -> np.ndarray:
    """`np.unique` of integer positions as int64, without its sort when they are already strictly increasing."""
    arr = np.asarray(values, dtype=np.int64)
    if arr.ndim == 1 and (len(arr) < 2 or bool((arr[1:] > arr[:-1]).all())):
        return arr
    return np.unique(arr)


class JoinedStream(FeatureStream):
    """Rows of several caches joined on (image_id, view), streamed in bounded memory: the first cache is read in
    chunks as a `FeatureStream` (its order, shuffle and buffers), and for each chunk the matching rows of every other
    cache are read there too, in sorted runs (caches written in the same row order read sequentially). Built by
    `join_streams`; features are named as `cache.join` names them."""

    def __init__(self, alias: str, first: FeatureStream, others: list[tuple[str, FeatureStream, np.ndarray]], names):
        self.__dict__.update(first._like().__dict__)  # the first cache's rows, meta and buffers
        self.alias = alias
        self._local = threading.local()  # per reader thread: the read buffers of the other caches
        self.others = others  # (alias, its stream, the position there of each row of this one)
        self.out_names = names  # (alias, feature) -> name handed out

    def __repr__(self) -> str:
        return (
            f"JoinedStream({[str(self.cache.path)] + [str(s.cache.path) for _, s, _ in self.others]}, rows={len(self)})"
        )

    @property
    def dims(self) -> dict[str, tuple[int, ...]]:
        out = {self.out_names[(self.alias, n)]: s for n, s in self._own.items()}
        for alias, stream, _ in self.others:
            out.update({self.out_names[(alias, n)]: sh for n, sh in stream._own.items()})
        return out

    def _like(self, idx: np.ndarray | None = None, meta: pd.DataFrame | None = None) -> JoinedStream:
        out = super()._like(idx, meta)
        out._local = threading.local()
        if idx is not None:
            out.others = [(a, s, p[idx]) for a, s, p in self.others]
        return out

    def _segments(self, units: list[_Unit], buf: dict[str, np.ndarray]) -> list[_Segment]:
        """The first cache's rows of `units` (see FeatureStream) with the other caches' matching rows."""
        segs = super()._segments(units, buf)
        bufs = self._local.__dict__.setdefault("bufs", {})
        need = sum(len(sg.pos) for sg in segs)
        for alias, stream, _ in self.others:  # the group's rows of each other cache: one reused array per feature
            kept = bufs.setdefault(("rows", alias), {})
            for n, shape in stream._own.items():
                if n not in kept or len(kept[n]) < need:
                    kept.pop(n, None)
                    kept[n] = np.empty((need, *shape), dtype=stream.dtype)
        at = 0
        for sg in segs:
            sg.feats = {self.out_names[(self.alias, n)]: v for n, v in sg.feats.items()}
            k = len(sg.pos)
            for alias, stream, where in self.others:
                out = {n: v[at : at + k] for n, v in bufs[("rows", alias)].items()}
                stream._fetch(where[sg.pos], bufs.setdefault(alias, {}), out)
                for n, arr in out.items():
                    sg.extra[self.out_names[(alias, n)]] = arr
                    self.stats.bytes += arr.nbytes
            at += k
        return segs


def join_streams(streams: dict[str, FeatureStream]) -> FeatureStream:
    """Inner join of streams on (image_id, view) in the first stream's row order, as `cache.join` joins loaded sets:
    meta from the first, a feature name held by several streams becomes `<alias>/<name>`.

    Raises:
        ValueError: when keys repeat, labels disagree, no row is shared, or the caches store different dtypes.
    """
    import pandas as pd

    from aigi.cache.featureset import KEY

    aliases = list(streams)
    if len(aliases) == 1:
        return streams[aliases[0]]
    dtypes = {a: s.dtype for a, s in streams.items()}
    if len(set(dtypes.values())) > 1:
        raise ValueError(f"streaming joins caches of one stored dtype; these store {dtypes}")
    merged = None
    for alias, s in streams.items():
        keys = s.meta[list(KEY)].astype(str)
        if keys.duplicated().any():
            dup = keys[keys.duplicated()].iloc[0].tolist()
            raise ValueError(f"join: cache {alias!r} has duplicate (image_id, view) keys, e.g. {dup}")
        keys[f"_row_{alias}"] = np.arange(len(s))
        merged = keys if merged is None else merged.merge(keys, on=list(KEY), how="inner", sort=False)
    if merged.empty:
        raise ValueError(f"join of {aliases} is empty: no (image_id, view) key is shared by all caches")
    merged = merged.sort_values(f"_row_{aliases[0]}", kind="stable")
    first = streams[aliases[0]].subset(merged[f"_row_{aliases[0]}"].to_numpy())
    counts = pd.Series([n for s in streams.values() for n in s.names]).value_counts()
    names = {(a, n): f"{a}/{n}" if counts[n] > 1 else n for a, s in streams.items() for n in s.names}
    others = []
    for alias in aliases[1:]:
        where = merged[f"_row_{alias}"].to_numpy()
        if "label" in first.meta.columns and (streams[alias].labels[where] != first.labels).any():
            raise ValueError(f"join: labels of cache {alias!r} disagree with {aliases[0]!r} for the same keys")
        others.append((alias, streams[alias], where))
    return JoinedStream(aliases[0], first, others, names)


def open_stream(
    cache, features: list[str] | None = None, where: dict | None = None, *, buffer_bytes: int = BUFFER_BYTES
) -> FeatureStream:
    """A `FeatureStream` over the rows of `cache` (a `cache.Cache`) matching `where`, with the named features."""
    return FeatureStream(cache, features, where, buffer_bytes=buffer_bytes)
