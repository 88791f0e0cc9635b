"""The decoding side of extraction: image rows -> batches of uint8 pixels (and JPEG bytes for a device decoder).

Each row's file is read once: its bytes are hashed (an image whose sha256 is no longer its `image_id` changed on
disk since `aigi index`, and is refused) and decoded from memory. A JPEG that the device decodes exactly like the CPU
(`device_jpeg_size`) travels as bytes when the run decodes on the device; everything else is decoded with Pillow,
given its view, and cut by the preprocessing policy into uint8 pixels. Batches come from worker processes (a
DataLoader), from a pool of threads (inside daemonic processes, which may not start processes), or inline.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import re
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from PIL import Image

from .images import MAX_PIXELS, ImageLoadError, decode_image, read_image_bytes
from .views import apply_view

MAX_WORKERS = 32
PREFETCH = 4  # batches each worker prepares ahead
_SHA256 = re.compile(r"[0-9a-f]{64}")
_JPEG_START, _JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"
Item = tuple[int, str, Any]  # (row, "pixels" | "jpeg" | "failed", uint8 pixels | JPEG bytes | reason)


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def auto_workers(device_type: str, *, devices: int = 1) -> int:
    """Decoding processes for `--num-workers auto`: this device's share of the cores, at most MAX_WORKERS.

    On a GPU one core stays with the process that drives it; on the CPU the forward and the workers share the
    cores (`ThreadTuner` gives the forward one thread while the loop waits for images).
    """
    share = max(1, available_cores() // max(1, devices))
    if device_type != "cpu":
        share = max(1, share - 1)
    return min(share, MAX_WORKERS)


def changed_since_indexed(data: bytes, image_id: str) -> str:
    """The reason an image is refused when its bytes' sha256 is no longer its image_id ('' when it is, or when the
    id is not a sha256: a manifest made by hand)."""
    if not _SHA256.fullmatch(image_id):
        return ""
    now = hashlib.sha256(data).hexdigest()
    if now == image_id:
        return ""
    return (
        f"changed on disk since it was indexed (sha256 {now[:12]}..., image_id {image_id[:12]}...); "
        "re-run `aigi index` to index it again"
    )


def device_jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a JPEG a device decoder gives the same pixels for, else None (decode it on the CPU).

    Kept for the device: complete (ends with the EOI marker) baseline YCbCr or greyscale JPEGs without an EXIF
    rotation, within the pixel limit. CMYK / YCCK, progressive, rotated, truncated or otherwise odd files go to
    Pillow, which decodes them or says why not.
    """
    if not data.startswith(_JPEG_START) or not data.rstrip(b"\x00\r\n ").endswith(_JPEG_END):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                plain = img.format == "JPEG" and img.mode in ("RGB", "L") and not img.info.get("progressive")
                if not plain or img.width * img.height > MAX_PIXELS or img.getexif().get(0x0112, 1) != 1:
                    return None
                return img.width, img.height
    except Exception:  # an odd header: Pillow decides on the CPU
        return None


class ImageItems:
    """A map-style dataset over rows (path, image_id, view): item i is `(i, kind, payload)`, never an exception.

    Args:
        paths: the image files.
        ids: their image_ids (a sha256 id is checked against the bytes read).
        views: the view of each row (`orig`, `jpeg:75`, ...).
        transform: the preprocessing policy (`pixels`, `tensor_ok`).
        device_jpeg: send the JPEGs a device decodes exactly (`orig` view, `transform.tensor_ok`) as bytes.
    """

    def __init__(
        self, paths: Sequence[str], ids: Sequence[str], views: Sequence[str], *, transform: Any, device_jpeg: bool
    ) -> None:
        self.paths, self.ids, self.views = list(paths), list(ids), list(views)
        self.transform, self.device_jpeg = transform, device_jpeg

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Item:
        try:
            data = read_image_bytes(self.paths[i])
            reason = changed_since_indexed(data, self.ids[i])
            if reason:
                return i, "failed", reason
            if self.device_jpeg and self.views[i] == "orig":
                size = device_jpeg_size(data)
                if size is not None and self.transform.tensor_ok(*size):
                    return i, "jpeg", data
            img = apply_view(decode_image(data, self.paths[i]), self.views[i])
            return i, "pixels", self.transform.pixels(img, self.ids[i])
        except ImageLoadError as err:
            return i, "failed", err.reason
        except Exception as err:  # a broken file must never stop the run: record it
            return i, "failed", f"{type(err).__name__}: {err}"


def _shared(numel: int, dtype: torch.dtype) -> torch.Tensor:
    """An empty tensor in shared memory inside a worker process (sent without a copy), a plain one elsewhere."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(numel, dtype=dtype)
    return torch.empty(numel, dtype=dtype).share_memory_()


def collate_items(items: list[Item]) -> dict[str, Any]:
    """A batch: `pixels` [n, 3, S, S] uint8 for `rows`, the JPEG bytes of `jpeg_rows` end to end in `jpeg` (file k
    ends at `jpeg_ends[k]`), and `failed` (row, reason) pairs."""
    pixels = [(i, t) for i, kind, t in items if kind == "pixels"]
    jpegs = [(i, d) for i, kind, d in items if kind == "jpeg"]
    failed = [(i, reason) for i, kind, reason in items if kind == "failed"]
    batch: dict[str, Any] = {"rows": [i for i, _ in pixels], "pixels": None, "jpeg_rows": [i for i, _ in jpegs],
                             "jpeg": None, "jpeg_ends": [], "failed": failed}  # fmt: skip
    if pixels:
        first = pixels[0][1]
        out = _shared(len(pixels) * first.numel(), torch.uint8).view(len(pixels), *first.shape)
        batch["pixels"] = torch.stack([t for _, t in pixels], out=out)
    if jpegs:
        ends, total = [], 0
        for _, data in jpegs:
            total += len(data)
            ends.append(total)
        blob = _shared(total, torch.uint8)
        blob.numpy()[:] = np.frombuffer(b"".join(d for _, d in jpegs), np.uint8)
        batch["jpeg"], batch["jpeg_ends"] = blob, ends
    return batch


class ThreadLoader:
    """Batches made by a pool of threads (Pillow, hashlib and torch release the GIL while they work), in order; their
    tensors pinned when `pin` (for a GPU)."""

    def __init__(
        self, dataset: Any, batches: Iterable[list[int]], *, threads: int, collate: Callable, pin: bool = False
    ) -> None:
        self.dataset, self.batches, self.threads, self.collate, self.pin = dataset, batches, threads, collate, pin

    def _make(self, rows: list[int]) -> Any:
        batch = self.collate([self.dataset[i] for i in rows])
        if self.pin:
            batch = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        return batch

    def __iter__(self) -> Iterator[Any]:
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="aigi-decode")
        pending: deque = deque()
        source = iter(self.batches)
        try:
            while True:
                while len(pending) < self.threads * 2:
                    rows = next(source, None)
                    if rows is None:
                        break
                    pending.append(pool.submit(self._make, rows))
                if not pending:
                    return
                yield pending.popleft().result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def in_daemon() -> bool:
    """Whether this process is daemonic (a dask worker by default): it may not start worker processes."""
    return bool(multiprocessing.current_process().daemon)


def make_loader(dataset: Any, batches: Iterable[list[int]], *, workers: int, threads: bool, pin: bool) -> Iterable:
    """Batches of `dataset` over the row lists `batches`: `workers` processes (a DataLoader, PREFETCH batches ahead
    each, pinned for a GPU), or as many threads when `threads` (or in a daemonic process), or inline for 0."""
    from torch.utils.data import DataLoader

    if workers and (threads or in_daemon()):
        return ThreadLoader(dataset, batches, threads=workers, collate=collate_items, pin=pin)
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=collate_items,
        pin_memory=pin,
        prefetch_factor=PREFETCH if workers else None,
    )
