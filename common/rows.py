"""Rows: the one contract for a set of feature rows, held in memory or streamed from disk, and rows over arrays.

Whatever trains, scores or evaluates a head reads its rows through `Rows`. Three implementations stand behind it:

- `ArrayRows` (here): feature arrays in memory, optionally with a meta table; `cache.FeatureSet` is one with meta
  (what `Cache.load` returns);
- `cache.FeatureStream`: the rows of one cache read from disk in bounded memory;
- `cache.JoinedStream`: the rows of several caches joined on (image_id, view), streamed.

The fit loop (`heads.bank`) asks a `Rows` once whether its features are in memory (`arrays()`), and otherwise reads
`batches` pass after pass; nothing else distinguishes the three. A run's rows (which caches, which selection, in
memory or streamed within the memory budget) are chosen in one place, `pipeline.rows`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

Batch = tuple[dict[str, np.ndarray], np.ndarray]


@runtime_checkable
class Rows(Protocol):
    """A set of feature rows: their count, per-row shapes, meta table and batches.

    `batches(batch_size, rows=None, shuffle=False, seed=0)` yields `(features, positions)`: numpy arrays of at most
    `batch_size` rows (float32 or the stored float16; a batch's arrays may be reused once the next one is asked for)
    and those rows' positions in the set; `rows` restricts a pass to some positions (sorted, each read once),
    `shuffle` makes the order seeded-random. `arrays()` is every row's features when they are held in memory (the
    fit loop then keeps them as tensors on the device), else None.
    """

    def __len__(self) -> int: ...

    @property
    def dims(self) -> dict[str, tuple[int, ...]]: ...

    @property
    def meta(self) -> Any: ...

    def batches(
        self, batch_size: int, *, rows: np.ndarray | None = None, shuffle: bool = False, seed: int = 0
    ) -> Iterator[Batch]: ...

    def arrays(self) -> dict[str, np.ndarray] | None: ...


def is_rows(value: Any) -> bool:
    """Whether `value` is a `Rows` (as opposed to a mapping of arrays or one array)."""
    return not isinstance(value, Mapping | np.ndarray) and isinstance(value, Rows)


class ArrayRows:
    """Rows whose features are arrays in memory (float16 stays float16; anything else is read as float32).

    Attributes:
        features: feature name -> array [N, ...].
        meta: a table with one row per feature row, or None (bare arrays).
    """

    def __init__(self, features: Mapping[str, Any], meta: Any = None) -> None:
        self.features = {name: _as_rows_array(arr) for name, arr in features.items()}
        self.meta = meta
        counts = {name: len(arr) for name, arr in self.features.items()}
        if len(set(counts.values())) > 1:
            raise ValueError(f"input features have different row counts: {counts}")

    def __len__(self) -> int:
        if self.meta is not None:
            return len(self.meta)
        return len(next(iter(self.features.values()))) if self.features else 0

    @property
    def dims(self) -> dict[str, tuple[int, ...]]:
        """Per-row shape of every feature."""
        return {k: tuple(v.shape[1:]) for k, v in self.features.items()}

    def arrays(self) -> dict[str, np.ndarray]:
        """Every row's features (held in memory)."""
        return self.features

    def batches(
        self, batch_size: int, *, rows: np.ndarray | None = None, shuffle: bool = False, seed: int = 0
    ) -> Iterator[Batch]:
        """Batches of the rows (see `Rows`), gathered from the arrays."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        pos = np.arange(len(self)) if rows is None else np.unique(np.asarray(rows, dtype=np.int64))
        if shuffle:
            pos = np.random.default_rng(seed).permutation(pos)
        for lo in range(0, len(pos), batch_size):
            take = pos[lo : lo + batch_size]
            yield {k: v[take] for k, v in self.features.items()}, take


def _as_rows_array(arr: Any) -> np.ndarray:
    arr = np.asarray(arr)
    return arr if arr.dtype in (np.float16, np.float32) else np.asarray(arr, dtype=np.float32)
