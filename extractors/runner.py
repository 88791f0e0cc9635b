"""The device side of extraction: batches of pixels and JPEG bytes -> features on the host, the device kept busy.

Per batch: the pixels go to the device without blocking (pinned memory), the JPEGs are decoded there in one batched
call (nvjpeg on CUDA; a file it refuses is decoded by Pillow instead), cut by the policy's tensor geometry, then
the whole batch is normalised and forwarded. Features are copied back without blocking while the next batches are
forwarded: `depth` batches stay in flight. A forward that runs out of device memory is retried in halves, and every
later batch goes in pieces of that size (said once). On the CPU, `ThreadTuner` shares the cores with the decoding
workers.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .images import ImageLoadError, decode_image

LOG = logging.getLogger(__name__)


@dataclass
class Features:
    """What one batch gave: the features of `rows` (numpy, row order of `rows`) and the rows that failed."""

    rows: list[int]
    values: dict[str, np.ndarray]
    failed: list[tuple[int, str]] = field(default_factory=list)


def decode_jpegs(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """uint8 RGB [3, H, W] pixels of JPEG byte tensors, decoded on `device` in one call (nvjpeg on CUDA); when the
    batch fails, file by file, with None for a file the decoder refuses."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's decoders are deprecated in favour of torchcodec
        try:
            return list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            out: list[torch.Tensor | None] = []
            for data in datas:
                try:
                    out.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    out.append(None)
            return out


class FeatureRunner:
    """Batches (`loader.collate_items`) -> `Features`, in the order submitted.

    Args:
        extractor: the backbone (`run`, `transform`, `device`, `spec`).
        ids: image_id of every row (the policy's geometry may use it).
        paths: path of every row (named in errors).
        depth: batches kept in flight before their features are read back (2 on a GPU; 0 waits for each).
    """

    def __init__(self, extractor: Any, *, ids: list[str], paths: list[str], depth: int) -> None:
        self.extractor, self.ids, self.paths, self.depth = extractor, ids, paths, depth
        self.device = extractor.device
        self.piece: int | None = None  # images per forward once the device ran out of memory
        self.pending: deque = deque()
        self.decoded = {"device": 0, "cpu_fallback": 0}

    def submit(self, batch: dict[str, Any]) -> list[Features]:
        """Start a batch; returns the batches whose features are back (the oldest first)."""
        rows, x, failed = self._inputs(batch)
        host, event = {}, None
        if x is not None:
            out = self._forward(self.extractor.transform.normalize(x))
            host = {name: value.to("cpu", non_blocking=True) for name, value in out.items()}
            if self.device.type == "cuda":
                event = torch.cuda.Event()
                event.record()
        self.pending.append((rows, host, failed, event))
        done = []
        while len(self.pending) > self.depth:
            done.append(self._finish(*self.pending.popleft()))
        return done

    def flush(self) -> list[Features]:
        """Wait for every batch in flight."""
        return [self._finish(*self.pending.popleft()) for _ in range(len(self.pending))]

    def _finish(self, rows: list[int], host: dict, failed: list, event: Any) -> Features:
        if event is not None:
            event.synchronize()
        return Features(rows, {name: value.numpy() for name, value in host.items()}, failed)

    def _inputs(self, batch: dict[str, Any]) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
        """The batch's pixels on the device (CPU-decoded ones first, then the JPEGs decoded there) and failures."""
        rows, parts, failed = list(batch["rows"]), [], list(batch["failed"])
        if batch["pixels"] is not None:
            parts.append(batch["pixels"].to(self.device, non_blocking=True))
        if batch["jpeg"] is not None:
            starts = [0, *batch["jpeg_ends"][:-1]]
            datas = [batch["jpeg"][a:b] for a, b in zip(starts, batch["jpeg_ends"])]
            images = []
            for row, data, pixels in zip(batch["jpeg_rows"], datas, decode_jpegs(datas, self.device)):
                pixels, reason = self._jpeg_pixels(row, data, pixels)
                if pixels is None:
                    failed.append((row, reason))
                else:
                    rows.append(row)
                    images.append(pixels)
            if images:
                parts.append(torch.stack(images))
        return rows, (torch.cat(parts) if len(parts) > 1 else parts[0]) if parts else None, failed

    def _jpeg_pixels(self, row: int, data: torch.Tensor, pixels: torch.Tensor | None) -> tuple[Any, str]:
        """The policy's pixels of one device-decoded JPEG; a file the device refused is decoded by Pillow."""
        transform = self.extractor.transform
        if pixels is not None:
            self.decoded["device"] += 1
            return transform.pixels_from_tensor(pixels, self.ids[row]), ""
        self.decoded["cpu_fallback"] += 1
        try:
            img = decode_image(data.numpy().tobytes(), self.paths[row])
            return transform.pixels(img, self.ids[row]).to(self.device), ""
        except ImageLoadError as err:
            return None, err.reason
        except Exception as err:  # as on the CPU path: recorded, the run goes on
            return None, f"{type(err).__name__}: {err}"

    def _forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """`extractor.run` over `x` in pieces of `self.piece` images, halving the piece when memory runs out."""
        outs, start = [], 0
        while start < len(x):
            size = min(self.piece or len(x), len(x) - start)
            try:
                outs.append(self.extractor.run(x[start : start + size]))
                start += size
            except torch.OutOfMemoryError:
                if size == 1:
                    raise
                if self.piece is None:
                    LOG.warning(f"{self.device} ran out of memory forwarding {size} images; forwarding {size // 2} "
                                "at a time from now on (a smaller --batch-size starts there)")  # fmt: skip
                self.piece = size // 2
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        if len(outs) == 1:
            return outs[0]
        return {name: torch.cat([o[name] for o in outs]) for name in outs[0]}


class ThreadTuner:
    """On a CPU device, where decoding workers and the forward share the cores: the forward runs on one torch thread
    while the loop waits for images (decoding is the bottleneck; more threads would only take cores from it). More
    threads are tried for a window of batches only when images wait for the forward and its one thread had a core
    to itself (its CPU time near its wall time: the workers idle, no other load), and kept only if the loop's images/s
    rose by a tenth (on a loaded machine more threads are slower); a failed trial rests `cooldown` windows. Decided
    every `window` batches from the loop's own timings."""

    def __init__(self, threads: int, *, window: int = 4, cooldown: int = 16) -> None:
        self.threads, self.window, self.cooldown = max(1, threads), window, cooldown
        self.original = torch.get_num_threads()
        self.wait = self.busy = self.cpu = 0.0
        self.images = self.seen = self.rest = 0
        self.trial_base: float | None = None  # the images/s on one thread while `threads` are on trial
        torch.set_num_threads(1)

    @property
    def current(self) -> int:
        """The torch threads the forward runs on now."""
        return torch.get_num_threads()

    def observe(self, wait_s: float, busy_s: float, images: int = 1, cpu_s: float | None = None) -> None:
        """Account one batch of `images`: seconds waiting for it, seconds forwarding it, and the CPU seconds of this
        thread while forwarding (None: as many as `busy_s`)."""
        self.seen += 1
        if self.seen == 1:  # the first batch waits for the workers to start
            return
        self.wait, self.busy, self.images = self.wait + wait_s, self.busy + busy_s, self.images + images
        self.cpu += busy_s if cpu_s is None else cpu_s
        if (self.seen - 1) % self.window == 0:
            total = max(self.wait + self.busy, 1e-9)
            self._decide(self.images / total, self.wait / total, self.cpu / max(self.busy, 1e-9))
            self.wait = self.busy = self.cpu = 0.0
            self.images = 0

    def _decide(self, rate: float, starved: float, own_core: float) -> None:
        if self.current == 1:
            if self.rest:
                self.rest -= 1
            elif starved < 0.05 and own_core > 0.9 and self.threads > 1:  # the forward is the bottleneck, cores free
                self.trial_base = rate
                torch.set_num_threads(self.threads)
        elif self.trial_base is not None:  # the trial's window: keep the threads only if they paid
            if rate < 1.1 * self.trial_base:
                torch.set_num_threads(1)
                self.rest = self.cooldown
            self.trial_base = None
        elif starved > 0.2:  # decoding became the bottleneck
            torch.set_num_threads(1)

    def close(self) -> None:
        """Give torch its threads back."""
        torch.set_num_threads(self.original)


def run_batches(loader: Iterable, runner: FeatureRunner, tuner: ThreadTuner | None = None) -> Iterator[Features]:
    """Feed every batch of `loader` to `runner`, yielding features as they come back (the tuner told the times)."""
    source = iter(loader)
    try:
        while True:
            start = time.perf_counter()
            batch = next(source, None)
            got, cpu = time.perf_counter(), time.thread_time()
            if batch is None:
                break
            done = runner.submit(batch)
            if tuner is not None:
                images = len(batch["rows"]) + len(batch["jpeg_rows"])
                tuner.observe(got - start, time.perf_counter() - got, images, time.thread_time() - cpu)
            yield from done
        yield from runner.flush()
    finally:
        if tuner is not None:
            tuner.close()
