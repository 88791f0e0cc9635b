"""The manifest schema: one row per image, validated column by column, with deterministic split assignment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from aigi.common.files import atomic_path

# column -> (pandas dtype, default when absent or None). `image_id`, `path`, `label`, `source` are required.
MANIFEST_COLUMNS: dict[str, tuple[str, object]] = {
    "image_id": ("string", None),
    "path": ("string", None),
    "label": ("int8", None),
    "source": ("string", None),
    "domain": ("string", ""),
    "split": ("string", ""),
    "pair_id": ("string", ""),
    "width": ("int32", -1),
    "height": ("int32", -1),
    "format": ("string", ""),
}
REQUIRED_COLUMNS = tuple(c for c, (_, default) in MANIFEST_COLUMNS.items() if default is None)
SPLITS = ("train", "val", "test", "")


def validate_manifest(df: pd.DataFrame, *, name: str = "manifest", extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """Return a copy of `df` with the manifest's dtypes and defaults, or raise a ValueError naming the problem.

    Args:
        df: the rows to check.
        name: what to call the table in error messages (usually its file path).
        extra: further columns allowed beside the manifest's (a cache adds `view`).
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{name}: missing column(s) {missing}; a manifest needs {list(REQUIRED_COLUMNS)}")
    unknown = [c for c in df.columns if c not in MANIFEST_COLUMNS and c not in extra]
    if unknown:
        raise ValueError(f"{name}: unknown column(s) {unknown}; known columns are {list(MANIFEST_COLUMNS)}")
    out = df.copy()
    for col, (dtype, default) in MANIFEST_COLUMNS.items():
        if col not in out.columns:
            out[col] = default
        elif default is not None:
            out[col] = out[col].fillna(default) if dtype == "string" else out[col].fillna(default)
        try:
            out[col] = out[col].astype(dtype)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name}: column {col!r} cannot be read as {dtype}: {err}") from None
    if out[list(REQUIRED_COLUMNS)].isna().any().any():
        bad = out[list(REQUIRED_COLUMNS)].isna().any()
        raise ValueError(f"{name}: empty values in required column(s) {list(bad[bad].index)}")
    labels = set(out["label"].unique().tolist())
    if not labels <= {0, 1}:
        raise ValueError(f"{name}: column 'label' must be 0 (real) or 1 (fake), found {sorted(labels - {0, 1})}")
    splits = set(out["split"].unique().tolist())
    if not splits <= set(SPLITS):
        raise ValueError(f"{name}: column 'split' must be one of {SPLITS[:3]} or empty, found {sorted(splits)}")
    return out[list(MANIFEST_COLUMNS) + [c for c in out.columns if c not in MANIFEST_COLUMNS]]


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read and validate a `manifest.parquet` (or a `.csv` with the same columns)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"manifest {path} does not exist; build one with `aigi index ROOT -o {path}`")
    if path.is_dir():
        raise IsADirectoryError(f"manifest {path} is a folder; pass the manifest file (e.g. {path}/manifest.parquet)")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False) if path.suffix == ".csv" else pd.read_parquet(path)
    except (ValueError, OSError, pd.errors.ParserError) as err:  # pyarrow's ArrowInvalid is a ValueError
        kind = "CSV" if path.suffix == ".csv" else "Parquet"
        reason = " ".join(str(err).split())[:160]
        raise ValueError(
            f"manifest {path} is not a readable {kind} file ({reason}); build one with `aigi index ROOT -o {path}`"
        ) from None
    return refuse_repeats(validate_manifest(df, name=str(path)), name=str(path))


def refuse_repeats(df: pd.DataFrame, *, name: str) -> pd.DataFrame:
    """Raise a ValueError naming the paths when an image_id or a path occurs on more than one row."""
    for col in ("image_id", "path"):
        dup = df[col].duplicated(keep=False)
        if dup.any():
            paths = df.loc[dup, "path"].astype(str).tolist()
            raise ValueError(
                f"{name}: {int(dup.sum())} rows repeat a {col} ({int(df.loc[dup, col].nunique())} value(s)), at "
                f"paths {paths[:6]}; keep one row per image (`aigi index` writes each image once)"
            )
    return df


def write_manifest(df: pd.DataFrame, path: str | Path) -> Path:
    """Validate `df` and write it atomically as Parquet."""
    path = Path(path)
    df = refuse_repeats(validate_manifest(df, name=str(path)), name=str(path))
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    return path


def assign_splits(df: pd.DataFrame, ratios: dict[str, float], *, seed: int = 0) -> pd.DataFrame:
    """Assign `split` by pair, so a real image and its aligned fakes always land in the same split.

    Pairs are keyed by `pair_id` (or `image_id` when it is empty), sorted, shuffled with `seed`, and cut in
    the given proportions: the result depends only on the set of pairs and the seed, not on row order.
    """
    out = df.copy()
    key = out["pair_id"].where(out["pair_id"].astype(str) != "", out["image_id"]).astype(str)
    groups = np.array(sorted(set(key)))
    order = np.random.default_rng(seed).permutation(len(groups))
    bounds = np.round(np.cumsum([0.0] + list(ratios.values())) * len(groups)).astype(int)
    assigned: dict[str, str] = {}
    for (name, _), lo, hi in zip(ratios.items(), bounds[:-1], bounds[1:]):
        assigned.update((g, name) for g in groups[order[lo:hi]])
    out["split"] = key.map(assigned).astype("string")
    return out
