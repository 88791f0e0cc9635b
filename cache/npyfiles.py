"""The UAR `.npy` storage kind (`NpyFiles`): a group of one-vector `.npy` files read as rows of one feature."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from aigi.cache.shards import prepare_meta
from aigi.cache.storage import Storage
from aigi.cache.uar import UAR_FEATURE, load_npy_batch


class NpyFiles(Storage):
    """Rows of a UAR folder held one per `.npy` file (meta rows from `scan_uar`, with their `file` column).

    Only the files of the rows asked for are read, and a read already runs on several threads (`threaded`).
    """

    threaded = True

    def __init__(self, rows: pd.DataFrame, header: dict) -> None:
        self.rows, self.header, self.n = rows, header, len(rows)
        self.dim = int(header["features"][UAR_FEATURE][0])
        self.path = Path(rows["file"].iloc[0]).parent

    def _load(self, rows: np.ndarray | slice) -> np.ndarray:
        return load_npy_batch(self.rows["file"].iloc[rows].tolist(), dim=self.dim)

    def meta(self) -> pd.DataFrame:
        return prepare_meta(self.rows.drop(columns=["file"]), where=str(self.path))

    def stored_header(self) -> dict | None:
        """None: `.npy` files store no header."""
        return None

    def read(self, names: list[str]) -> dict[str, np.ndarray]:
        return {UAR_FEATURE: self._load(slice(None))}

    def read_range(self, dest: dict[str, np.ndarray], lo: int, hi: int) -> int:
        got = self._load(slice(lo, hi))
        dest[UAR_FEATURE][: hi - lo] = got
        return got.nbytes

    def read_selected(self, dest: dict[str, np.ndarray], lo: int, hi: int, rows: np.ndarray) -> int:
        """Only the selected rows' files are read."""
        got = self._load(rows)
        dest[UAR_FEATURE][: len(rows)] = got
        return got.nbytes

    def read_rows(self, names: list[str], rows: np.ndarray) -> dict[str, np.ndarray]:
        return {UAR_FEATURE: self._load(rows)}

    def bounds(self, chunk: int) -> np.ndarray:
        """One read per group of files."""
        return np.array([self.n])

    def files(self) -> list[Path]:
        return [Path(f) for f in self.rows["file"]]
