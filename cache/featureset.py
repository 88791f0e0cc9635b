"""FeatureSet: feature matrices plus their meta rows in memory (a `common.rows.Rows`); filtering and joining."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from aigi.common.rows import ArrayRows

KEY = ("image_id", "view")


def where_mask(meta: pd.DataFrame, where: dict | None) -> np.ndarray:
    """Boolean mask of the rows of `meta` matching every `column: value or list of values` of `where`."""
    mask = np.ones(len(meta), dtype=bool)
    for col, value in (where or {}).items():
        if col not in meta.columns:
            raise ValueError(f"cannot filter on unknown column {col!r}; columns are {list(meta.columns)}")
        values = list(value) if isinstance(value, (list, tuple, set, frozenset, np.ndarray)) else [value]
        mask &= meta[col].isin(values).to_numpy(dtype=bool, na_value=False)
    return mask


@dataclass
class FeatureSet(ArrayRows):
    """Features (`name -> array [N, ...]`, float32 unless asked otherwise) and their meta rows (a DataFrame): the
    in-memory `common.rows.Rows` with a meta table (`batches`, `arrays` come from `ArrayRows`)."""

    features: dict[str, np.ndarray]
    meta: pd.DataFrame

    def __post_init__(self) -> None:
        index = self.meta.index
        if not (isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1):
            self.meta = self.meta.reset_index(drop=True)
        feats = {}
        for name, arr in self.features.items():
            arr = np.asarray(arr)
            if arr.dtype != np.float16:  # float16 is kept only when a reader was asked for it
                arr = np.asarray(arr, dtype=np.float32)
            if arr.shape[:1] != (len(self.meta),):
                raise ValueError(f"feature {name!r} has {arr.shape[0]} rows but meta has {len(self.meta)}")
            feats[name] = arr
        self.features = feats

    def __len__(self) -> int:
        return len(self.meta)

    def __repr__(self) -> str:
        dims = {k: tuple(v.shape[1:]) for k, v in self.features.items()}
        return f"FeatureSet(rows={len(self)}, features={dims})"

    @property
    def labels(self) -> np.ndarray:
        """Labels as an int64 array (0 real, 1 fake)."""
        return self.meta["label"].to_numpy(dtype=np.int64)

    @property
    def dims(self) -> dict[str, tuple[int, ...]]:
        """Per-row shape of every feature."""
        return {k: tuple(v.shape[1:]) for k, v in self.features.items()}

    def column(self, name: str) -> np.ndarray:
        """One meta column as a numpy array."""
        if name not in self.meta.columns:
            raise ValueError(f"unknown meta column {name!r}; columns are {list(self.meta.columns)}")
        col = self.meta[name]
        return col.to_numpy(dtype=object) if col.dtype == "string" else col.to_numpy()

    def subset(self, rows: np.ndarray | Sequence[int] | Sequence[bool]) -> FeatureSet:
        """The rows selected by a boolean mask or by integer indices (in that order)."""
        idx = np.asarray(rows)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise ValueError(f"mask has shape {idx.shape}, expected ({len(self)},)")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64, copy=False)
        if len(idx) == len(self) and (len(idx) == 0 or (idx[0] == 0 and (np.diff(idx) == 1).all())):
            return FeatureSet(dict(self.features), self.meta.copy(deep=False))  # every row in order: no copy
        return FeatureSet({k: v[idx] for k, v in self.features.items()}, self.meta.iloc[idx])

    def with_meta(self, meta: pd.DataFrame) -> FeatureSet:
        """The same rows with another meta table (same length and order, e.g. with a `domain` column added)."""
        return FeatureSet(self.features, meta)

    def where(self, **filters) -> FeatureSet:
        """Rows whose meta columns match every filter (a value or a list of values), e.g. `where(split="train")`."""
        return self.subset(where_mask(self.meta, filters))


def _key_frame(fs: FeatureSet, alias: str) -> pd.DataFrame:
    missing = [c for c in KEY if c not in fs.meta.columns]
    if missing:
        raise ValueError(f"join: set {alias!r} has no column(s) {missing}")
    keys = fs.meta[list(KEY)].astype(str)
    if keys.duplicated().any():
        raise ValueError(
            f"join: set {alias!r} has duplicate (image_id, view) keys, e.g. {keys[keys.duplicated()].iloc[0].tolist()}"
        )
    return keys.assign(**{f"_row_{alias}": np.arange(len(fs))})


def join(sets: dict[str, FeatureSet]) -> FeatureSet:
    """Inner join of several FeatureSets on (image_id, view), in the first set's row order.

    Meta comes from the first set. A feature name present in more than one set becomes `<alias>/<name>`.

    Raises:
        ValueError: when fewer than one set is given, keys repeat, labels disagree, or no row is shared.
    """
    if not sets:
        raise ValueError("join needs at least one FeatureSet")
    aliases = list(sets)
    merged = _key_frame(sets[aliases[0]], aliases[0])
    for alias in aliases[1:]:
        merged = merged.merge(_key_frame(sets[alias], alias), on=list(KEY), how="inner", sort=False)
    if merged.empty:
        raise ValueError(f"join of {aliases} is empty: no (image_id, view) key is shared by all sets")
    counts: dict[str, int] = {}
    for fs in sets.values():
        for name in fs.features:
            counts[name] = counts.get(name, 0) + 1
    features, first = {}, sets[aliases[0]]
    meta = first.meta.iloc[merged[f"_row_{aliases[0]}"].to_numpy()].reset_index(drop=True)
    for alias, fs in sets.items():
        rows = merged[f"_row_{alias}"].to_numpy()
        if "label" in fs.meta.columns and (fs.meta["label"].to_numpy()[rows] != meta["label"].to_numpy()).any():
            raise ValueError(f"join: labels of set {alias!r} disagree with {aliases[0]!r} for the same keys")
        for name, arr in fs.features.items():
            features[f"{alias}/{name}" if counts[name] > 1 else name] = arr[rows]
    return FeatureSet(features, meta)
