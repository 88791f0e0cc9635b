"""One process's share of an extract job: shards claimed as decoding reaches them, written by a writer thread.

The loader's batch sampler (`ShardFeed`) walks the planned shards in order and claims each one when its first batch
is asked for (a shard committed already, or claimed by another live process, is skipped), so several processes or
devices on one plan split its shards without a row lost or repeated. Features come back from the device runner in
batches; `ShardCollector` gathers each shard's rows and hands the complete shard to `ShardWriter`, a thread that
writes it atomically (as `CacheWriter.write_shard` always does) and releases its claim while the next batches are
forwarded.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

LOG = logging.getLogger(__name__)
CHANGED = "changed on disk since it was indexed"  # how `extractors.loader.changed_since_indexed` starts
Task = tuple[int, pd.DataFrame]  # (shard index, its manifest rows in plan order)


@dataclass(frozen=True)
class StreamSettings:
    """How one process extracts its shards.

    Attributes:
        root: the folder the rows' paths are relative to.
        batch_size: images per batch (a batch never spans two shards).
        workers: decoding workers (0: in this process).
        threads: decode in threads rather than processes.
        decode_on_device: send the JPEGs the device decodes exactly as bytes (nvjpeg on CUDA).
        depth: batches in flight on the device.
        tune_threads: share the CPU's cores between the forward and the workers (`ThreadTuner`).
    """

    root: str
    batch_size: int
    workers: int
    threads: bool = False
    decode_on_device: bool = False
    depth: int = 0
    tune_threads: bool = False


class ShardFeed:
    """The batch sampler: row-number batches of every shard this process claims, in plan order."""

    def __init__(self, writer: Any, tasks: list[Task], batch_size: int, on_skip: Callable[[int], None]) -> None:
        self.writer, self.tasks, self.batch_size, self.on_skip = writer, tasks, batch_size, on_skip
        self.offsets = np.cumsum([0] + [len(rows) for _, rows in tasks])
        self.claims: dict[int, Path] = {}
        self.records: dict[int, dict] = {}

    def __iter__(self) -> Iterator[list[int]]:
        for pos, (index, rows) in enumerate(self.tasks):
            claim = None if self.writer.shard_done(index) else self.writer.claim_shard(index)
            if claim is None:  # committed, or another live process is extracting it
                elsewhere = not self.writer.shard_done(index)
                self.records[pos] = {"shard": index, "rows": len(rows), "errors": 0, "skipped": True}
                if elsewhere:
                    self.records[pos]["elsewhere"] = True
                self.on_skip(len(rows))
                continue
            self.claims[pos] = claim
            start = int(self.offsets[pos])
            for first in range(0, len(rows), self.batch_size):
                yield list(range(start + first, start + min(first + self.batch_size, len(rows))))

    def release(self, pos: int) -> None:
        """Delete the claim of task `pos` (its shard is written, or the run stopped)."""
        claim = self.claims.pop(pos, None)
        if claim is not None:
            claim.unlink(missing_ok=True)

    def release_all(self) -> None:
        """Delete every claim still held."""
        for pos in list(self.claims):
            self.release(pos)


def shard_payload(
    rows: pd.DataFrame, local: np.ndarray, values: dict[str, np.ndarray], failed: list[tuple[int, str]]
) -> tuple[pd.DataFrame, dict[str, np.ndarray], list[dict]]:
    """The meta rows, features and error records of a shard, in plan order: `local` are the shard's row numbers of
    the `values` rows, `failed` (row number, reason) pairs."""
    order = np.argsort(local, kind="stable")
    meta = rows.iloc[local[order]].reset_index(drop=True)
    errors = [
        {"image_id": str(rows["image_id"].iat[i]), "path": str(rows["path"].iat[i]),
         "view": str(rows["view"].iat[i]), "reason": reason}
        for i, reason in sorted(failed)
    ]  # fmt: skip
    return meta, {name: v[order] for name, v in values.items()}, errors


class ShardCollector:
    """Gathers the features of each shard's rows as batches come back; a complete shard goes to `write`."""

    def __init__(self, tasks: list[Task], offsets: np.ndarray, shapes: dict, write: Callable[..., None]) -> None:
        self.tasks, self.offsets, self.shapes, self.write = tasks, offsets, shapes, write
        self.parts: dict[int, list] = {}
        self.failed: dict[int, list] = {}
        self.seen: dict[int, int] = {}

    def _pos(self, row: int) -> int:
        return int(np.searchsorted(self.offsets, row, side="right") - 1)

    def add(self, rows: list[int], values: dict[str, np.ndarray], failed: list[tuple[int, str]]) -> None:
        """Account one batch's extracted `rows` (features `values`) and `failed` rows; write completed shards."""
        touched = set()
        rows_arr = np.asarray(rows, dtype=np.int64)
        positions = np.searchsorted(self.offsets, rows_arr, side="right") - 1
        for pos in np.unique(positions):
            mask = positions == pos
            local = rows_arr[mask] - self.offsets[pos]
            self.parts.setdefault(int(pos), []).append((local, {k: v[mask] for k, v in values.items()}))
            self.seen[int(pos)] = self.seen.get(int(pos), 0) + int(mask.sum())
            touched.add(int(pos))
        for row, reason in failed:
            pos = self._pos(row)
            self.failed.setdefault(pos, []).append((row - int(self.offsets[pos]), reason))
            self.seen[pos] = self.seen.get(pos, 0) + 1
            touched.add(pos)
        for pos in sorted(touched):
            if self.seen[pos] == len(self.tasks[pos][1]):
                self._complete(pos)

    def _complete(self, pos: int) -> None:
        parts = self.parts.pop(pos, [])
        local = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
        values = {
            name: np.concatenate([p[1][name] for p in parts]) if parts else np.zeros((0, *shape), np.float32)
            for name, shape in self.shapes.items()
        }
        self.write(pos, *shard_payload(self.tasks[pos][1], local, values, self.failed.pop(pos, [])))


class ShardWriter:
    """A thread writing complete shards (at most two waiting) while the device forwards the next batches."""

    def __init__(self, writer: Any, feed: ShardFeed) -> None:
        self.writer, self.feed = writer, feed
        self.jobs: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="aigi-shard-writer", daemon=True)
        self.thread.start()

    def put(self, pos: int, meta: pd.DataFrame, feats: dict[str, np.ndarray], errors: list[dict]) -> None:
        """Queue a complete shard (raises what the thread raised, if it failed)."""
        if self.error is not None:
            raise self.error
        self.jobs.put((pos, meta, feats, errors))

    def _loop(self) -> None:
        while (job := self.jobs.get()) is not None:
            if self.error is not None:
                continue  # drain: the main thread raises the first error
            pos, meta, feats, errors = job
            try:
                index = self.feed.tasks[pos][0]
                self.writer.write_shard(index, meta, feats, errors)
                record = {"shard": index, "rows": len(meta), "errors": len(errors), "skipped": False,
                          "written_at": time.time()}  # fmt: skip
                changed = sum(e["reason"].startswith(CHANGED) for e in errors)
                self.feed.records[pos] = {**record, "changed": changed} if changed else record
                self.feed.release(pos)
            except BaseException as err:  # handed to the main thread
                self.error = err

    def close(self, *, raise_error: bool = True) -> None:
        """Wait for every queued shard (a shard complete before a failure is still written); raise what the thread
        raised."""
        if self.thread.is_alive():
            self.jobs.put(None)
            self.thread.join()
        if raise_error and self.error is not None:
            raise self.error


def extract_shards(
    extractor: Any,
    writer: Any,
    tasks: list[Task],
    settings: StreamSettings,
    on_images: Callable[[int], None] | None = None,
) -> list[dict]:
    """Extract every shard of `tasks` this process can claim; one record per task (`shard`, `rows`, `errors`,
    `skipped`, and `elsewhere` when another live process holds it)."""
    from aigi.extractors.loader import ImageItems, make_loader
    from aigi.extractors.runner import FeatureRunner, ThreadTuner, run_batches

    count = on_images or (lambda n: None)
    feed = ShardFeed(writer, tasks, settings.batch_size, on_skip=count)
    done = set(writer.done_indices())
    if all(index in done for index, _ in tasks):  # nothing to do: no worker is started
        list(feed)
        return [feed.records[pos] for pos in range(len(tasks))]
    rows = pd.concat([r for _, r in tasks], ignore_index=True)
    paths = [str(Path(settings.root) / p) for p in rows["path"].astype(str)]
    ids, views = rows["image_id"].astype(str).tolist(), rows["view"].astype(str).tolist()
    items = ImageItems(paths, ids, views, transform=extractor.transform, device_jpeg=settings.decode_on_device)
    loader = make_loader(
        items, feed, workers=settings.workers, threads=settings.threads, pin=extractor.device.type == "cuda"
    )
    runner = FeatureRunner(extractor, ids=ids, paths=paths, depth=settings.depth)
    tuner = out = None
    try:
        batches = iter(loader)  # decoding processes start (fork) before the writer thread does
        tuner = ThreadTuner(_torch_threads()) if settings.tune_threads and settings.workers else None
        out = ShardWriter(writer, feed)
        collector = ShardCollector(tasks, feed.offsets, extractor.feature_shapes, out.put)
        for got in run_batches(batches, runner, tuner):
            collector.add(got.rows, got.values, got.failed)
            count(len(got.rows) + len(got.failed))
        out.close()
    finally:
        if out is not None:
            out.close(raise_error=False)
        if tuner is not None:
            tuner.close()
        feed.release_all()
    if runner.decoded["cpu_fallback"]:
        LOG.info(f"{runner.decoded['cpu_fallback']} JPEG(s) the device could not decode were decoded by Pillow")
    return [feed.records[pos] for pos in range(len(tasks))]


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()
