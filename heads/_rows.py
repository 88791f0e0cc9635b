"""Where the fit loop's rows come from: tensors in memory, or a batch source streamed from disk; one interface.

A batch source is any object with `__len__`, `dims` (feature name -> per-row shape) and
`batches(batch_size, *, rows=None, shuffle=False, seed=0)` yielding `(features, positions)`: numpy arrays of some
rows (any float dtype; float16 is widened here, one batch at a time) and their positions in the source.
`cache.FeatureStream` is one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

Prep = Callable[[dict[str, Tensor]], dict[str, Tensor]]
Batch = tuple[dict[str, Tensor], Tensor]


def is_source(X: Any) -> bool:
    """Whether `X` is a batch source (as opposed to arrays in memory)."""
    return not isinstance(X, (Mapping, np.ndarray)) and callable(getattr(X, "batches", None))


def _identity(xb: dict[str, Tensor]) -> dict[str, Tensor]:
    return xb


class _Widen:
    """Copies batches into reused float32 buffers (a fresh allocation per batch costs page faults: ~10x slower)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.buffers, self.reuse = device, {}, device.type == "cpu"

    def __call__(self, name: str, x: Tensor) -> Tensor:
        if not self.reuse:
            return x.to(self.device, dtype=torch.float32)
        buf = self.buffers.get(name)
        if buf is None or buf.shape[0] < x.shape[0] or buf.shape[1:] != x.shape[1:]:
            buf = self.buffers[name] = torch.empty(x.shape, dtype=torch.float32)
        out = buf[: x.shape[0]]
        out.copy_(x)
        return out


class MemoryRows:
    """Rows held as tensors on the device, float32 or float16 (float16 widened per batch)."""

    def __init__(self, x: dict[str, Tensor], y: np.ndarray, prep: Prep = _identity) -> None:
        self.x, self.y, self.prep = x, y, prep
        self.device = next(iter(x.values())).device
        self._widen = _Widen(self.device)

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: np.ndarray) -> MemoryRows:
        index = torch.from_numpy(idx).to(self.device)
        return MemoryRows({k: v.index_select(0, index) for k, v in self.x.items()}, self.y[idx], self.prep)

    def batches(self, batch_size: int, *, gen: torch.Generator | None = None, raw: bool = False) -> Iterator[Batch]:
        """(prepared float32 features, row index) in a seeded random order (gen) or in order (gen None).
        `raw`: float16 features come as stored when there is nothing to prepare (the consumer widens them)."""
        n = len(self)
        keep = raw and self.prep is _identity
        if gen is not None:
            for index in torch.randperm(n, generator=gen).to(self.device).split(batch_size):
                yield self._take(lambda v, i=index: v.index_select(0, i), keep), index
            return
        for lo in range(0, n, batch_size):
            index = torch.arange(lo, min(lo + batch_size, n), device=self.device)
            yield self._take(lambda v, lo=lo: v[lo : lo + batch_size], keep), index

    def _take(self, pick: Callable[[Tensor], Tensor], keep: bool) -> dict[str, Tensor]:
        xb = {}
        for k, v in self.x.items():
            part = pick(v)
            xb[k] = part if part.dtype == torch.float32 or keep else self._widen(k, part)
        return self.prep(xb)


class StreamRows:
    """Rows of a batch source (optionally a sorted subset of its positions), widened to float32 per batch."""

    def __init__(
        self, source: Any, names: list[str], y: np.ndarray, device: torch.device, prep: Prep = _identity, pos=None
    ) -> None:
        self.source, self.names, self.y, self.device, self.prep, self.pos = source, names, y, device, prep, pos
        self._widen = _Widen(device)

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: np.ndarray) -> StreamRows:
        pos = idx if self.pos is None else self.pos[idx]
        return StreamRows(self.source, self.names, self.y[idx], self.device, self.prep, pos)

    def batches(self, batch_size: int, *, gen: torch.Generator | None = None, raw: bool = False) -> Iterator[Batch]:
        """As `MemoryRows.batches`; the order is the source's seeded chunk order plus shuffle buffer."""
        seed = 0 if gen is None else int(torch.randint(0, 2**62, (1,), generator=gen))
        keep = raw and self.prep is _identity and self.device.type == "cpu"
        for feats, pos in self.source.batches(batch_size, rows=self.pos, shuffle=gen is not None, seed=seed):
            local = pos if self.pos is None else np.searchsorted(self.pos, pos)
            xb = {}
            for k in self.names:
                x = torch.from_numpy(np.ascontiguousarray(feats[k]))
                xb[k] = x if keep and x.dtype in (torch.float16, torch.float32) else self._widen(k, x)
            yield self.prep(xb), torch.from_numpy(np.asarray(local, dtype=np.int64)).to(self.device)


def memory_tensors(X: Mapping[str, np.ndarray], device: torch.device) -> dict[str, Tensor]:
    """Features as tensors on the device: float16 kept as float16 (half the memory), anything else float32."""
    out = {}
    for k, v in X.items():
        arr = np.asarray(v)
        dtype = np.float16 if arr.dtype == np.float16 else np.float32
        out[k] = torch.as_tensor(np.ascontiguousarray(arr, dtype=dtype)).to(device)
    return out
