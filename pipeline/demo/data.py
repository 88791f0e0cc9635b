"""The demo's data: real photos shipped inside installed packages cut into crops, and where pretrained weights lie.

The photos and their crops come from `aigi.fakes.photos` (the small shipped fake makers are trained on other crops of
the same photos); this module adds the demo's notes and the lookup of shared pretrained weights.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from aigi.fakes.photos import PHOTO_SOURCES, Photo, collect_photos, cut_crops, load_rgb, psnr

__all__ = [
    "NO_ANIME_NOTE",
    "PHOTO_SOURCES",
    "SHARED_ENV",
    "SHARED_HINTS",
    "Photo",
    "collect_photos",
    "cut_crops",
    "find_shared_weights",
    "load_rgb",
    "photo_splits",
    "psnr",
    "shared_dirs",
    "split_by_photo",
]

NO_ANIME_NOTE = "no installed package ships an anime picture, so the demo has no `anime` domain"
SHARED_HINTS = {"vae": ("taesd",), "sr": ("sr",), "backbone": ("mobilenetv2",)}
SHARED_ENV = "AIGI_SHARED"  # a shared-data folder to use instead of ../shared (an empty folder: none)


def photo_splits(photos: list[Photo], *, seed: int = 0) -> dict[str, str]:
    """A split per photo (a group split: every crop of a photo, and so each of its fakes, shares one split).

    Within each domain the photos are shuffled (seeded); a domain with two photos or more gives its first to `test`,
    one with four or more its second to `val`, the rest go to `train` (a domain with one photo is trained on only).
    No pixel of a test photo is ever seen in training, so the test scores measure the fakes, not the photos.
    """
    out: dict[str, str] = {}
    domains = list(dict.fromkeys(p.domain for p in photos))
    for i, domain in enumerate(domains):
        names = [p.name for p in photos if p.domain == domain]
        order = np.random.default_rng([seed, i]).permutation(len(names))
        for rank, k in enumerate(order):
            split = "test" if rank == 0 and len(names) >= 2 else "val" if rank == 1 and len(names) >= 4 else "train"
            out[names[k]] = split
    return out


def split_by_photo(table: pd.DataFrame, photos: list[Photo], *, seed: int = 0) -> pd.DataFrame:
    """`cut_crops`'s rows with a `split` column from `photo_splits` (crop paths are `real/<photo>_<k>.png`)."""
    splits = photo_splits(photos, seed=seed)
    photo = table["path"].str.slice(len("real/")).str.rsplit("_", n=1).str[0]
    return table.assign(split=photo.map(splits))


def shared_dirs(roots: list[Path] | None = None) -> list[Path]:
    """Where shared data may lie: `$AIGI_SHARED`, else `../shared` beside the current directory and the repository.

    Args:
        roots: look beside these folders instead (`root/../shared`).
    """
    if roots is None and os.environ.get(SHARED_ENV) is not None:
        return [Path(os.environ[SHARED_ENV])]
    repo = Path(__file__).resolve().parents[2]
    return [root.parent / "shared" for root in (roots if roots is not None else [Path.cwd(), repo])]


def find_shared_weights(
    kind: str, *, explicit: str | Path | None = None, roots: list[Path] | None = None
) -> Path | None:
    """The weights to use for `kind` (`vae`, `sr` or `backbone`): the user's path, else `SHARED/data/<name>`.

    Raises:
        FileNotFoundError: an explicit path that does not exist.
    """
    if explicit:
        path = Path(explicit)
        if not path.exists():
            raise FileNotFoundError(f"--{kind}-weights {path} does not exist; give a weights file or folder")
        return path
    for shared in shared_dirs(roots):
        for name in SHARED_HINTS[kind]:
            hits = _weights_in(shared / "data" / name, kind)
            if hits is not None:
                return hits
    return None


def _weights_in(folder: Path, kind: str) -> Path | None:
    if not folder.is_dir():
        return None
    if kind == "vae":
        return folder if any(folder.glob("*_encoder.pth")) or (folder / "config.json").exists() else None
    files = sorted(p for p in folder.iterdir() if p.suffix in (".pth", ".pt", ".safetensors"))
    return files[0] if files else None
