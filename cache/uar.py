"""UAR-style `.npy` feature folders (`**/0_real/*.npy`, `**/1_fake/*.npy`): scan them into meta rows, load safely."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

LABEL_DIRS = {"0_real": 0, "1_fake": 1}
DEFAULT_SOURCE = "uar"
UAR_FEATURE = "probe"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def scan_uar(root: str | Path, *, source: str | None = None) -> pd.DataFrame:
    """Meta rows for every `.npy` below a `0_real` / `1_fake` folder of `root`, sorted by path.

    Rules (also used by `aigi import uar`):
      - `label`: 0 under `0_real`, 1 under `1_fake`.
      - `source`: the first folder under `root` (a generator folder; category sub-folders such as ForenSynths'
        `progan/airplane/0_real` merge into it), for reals and fakes alike. When `0_real`/`1_fake` sit directly in
        `root`, `source` is the given `source` (default "uar").
      - `path`: the file's path relative to `root`, prefixed with `<source>/` when the folders sit directly in
        `root` (so two such folders imported under different sources never collide); `image_id` = sha256 of it.
      - `pair_id`: a real and a fake with the same file stem in the same parent folder share the real's
        `image_id`; an unpaired real keeps its own `image_id`, an unpaired fake gets "".
      - column `file`: the absolute file path (not a manifest column).

    Raises:
        FileNotFoundError: when `root` is missing or holds no such `.npy` file.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory; pass the folder of .npy features to import")
    files = sorted(p for name in LABEL_DIRS for p in root.rglob(f"{name}/*.npy") if p.is_file())
    if not files:
        raise FileNotFoundError(
            f"{root}: no **/0_real/*.npy or **/1_fake/*.npy files (UAR layout) found; pass the folder that holds "
            "0_real/ and 1_fake/ (or <source>/0_real, <source>/1_fake)"
        )
    rows = []
    for file in files:
        rel = file.relative_to(root)
        bare = len(rel.parts) == 2
        src = (source or DEFAULT_SOURCE) if bare else rel.parts[0]
        path = f"{src}/{rel.as_posix()}" if bare else rel.as_posix()
        group = "/".join(Path(path).parts[:-2])
        rows.append((_sha(path), path, LABEL_DIRS[rel.parts[-2]], src, group, file.stem, str(file.resolve())))
    df = pd.DataFrame(rows, columns=["image_id", "path", "label", "source", "_group", "_stem", "file"])
    df = df.sort_values("path", kind="stable").reset_index(drop=True)
    reals = df[df["label"] == 0].set_index(["_group", "_stem"])["image_id"]
    pair = pd.Series(list(zip(df["_group"], df["_stem"]))).map(reals.to_dict()).fillna("")
    df["pair_id"] = pair.to_numpy()
    df["view"] = "orig"
    return df.drop(columns=["_group", "_stem"])


def load_npy(path: str | Path, *, dim: int | None = None) -> np.ndarray:
    """One feature vector `(D,)` float32 from a `(1, D)` or `(D,)` `.npy`, never unpickling.

    Raises:
        ValueError: naming the file for pickled/unreadable files, wrong shapes, other dims than `dim`, NaN/inf.
    """
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as err:
        raise ValueError(f"{path}: refused, it needs pickle to load ({err}); save plain numeric arrays") from None
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: not a readable .npy file ({err})") from None
    if not isinstance(arr, np.ndarray) or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"{path}: holds {getattr(arr, 'dtype', type(arr))}, expected real numbers")
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1 or arr.shape[0] == 0:
        raise ValueError(f"{path}: shape {np.shape(arr)}, expected (1, D) or (D,)")
    if dim is not None and arr.shape[0] != dim:
        raise ValueError(f"{path}: has {arr.shape[0]} values but earlier files have {dim} (mixed dims in one folder)")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{path}: contains NaN/inf values")
    return arr


def load_npy_batch(files: list[str], *, dim: int) -> np.ndarray:
    """Stack several `.npy` vectors into `[n, dim]` float32 (checked one by one)."""
    out = np.empty((len(files), dim), dtype=np.float32)
    for i, file in enumerate(files):
        out[i] = load_npy(file, dim=dim)
    return out


def uar_spec(dim: int, *, extractor: str | None = None) -> dict:
    """The spec recorded for shipped UAR features of width `dim` (AIM-v1 3B attention probe when 3072-d)."""
    name = extractor or ("aim-v1-3b" if dim == 3072 else "unknown")
    return {"extractor": {"name": name, "feature": UAR_FEATURE, "source": "uar-shipped"}, "dim": int(dim)}
