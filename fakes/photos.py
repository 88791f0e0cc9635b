"""Real photos that ship inside installed packages (scikit-image, scikit-learn, matplotlib), cut into seeded crops.

The small shipped fake makers are trained on these crops (`aigi.fakes.small`) and the demo indexes them as its reals
(`aigi.pipeline.demo`): both cut them the same way, with different seeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from aigi.common.files import atomic_path

# name, semantic domain, origin. No package ships an anime picture, so there is no `anime` domain.
PHOTO_SOURCES: tuple[tuple[str, str, str], ...] = (
    ("astronaut", "human", "skimage"),
    ("grace_hopper", "human", "matplotlib"),
    ("chelsea", "animal", "skimage"),  # skimage's `cat` is the same picture: used once
    ("coffee", "object", "skimage"),
    ("rocket", "object", "skimage"),
    ("motorcycle_left", "object", "skimage"),
    ("motorcycle_right", "object", "skimage"),
    ("flower", "object", "sklearn"),
    ("china", "scene", "sklearn"),
    ("hubble_deep_field", "scene", "skimage"),
    ("retina", "scene", "skimage"),
    ("immunohistochemistry", "scene", "skimage"),
)


@dataclass(frozen=True)
class Photo:
    """One real photograph: its name, semantic domain, the package it comes from, and RGB pixels [H, W, 3] uint8."""

    name: str
    domain: str
    origin: str
    pixels: np.ndarray


def _load_pixels(name: str, origin: str) -> np.ndarray:
    if origin == "skimage":
        import skimage.data

        if name.startswith("motorcycle_"):
            left, right, _ = skimage.data.stereo_motorcycle()
            return left if name.endswith("left") else right
        return getattr(skimage.data, name)()
    if origin == "sklearn":
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")
    if origin == "matplotlib":
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data(f"{name}.jpg") as fh:
            return np.asarray(Image.open(fh).convert("RGB"))
    raise ValueError(f"unknown photo origin {origin!r}")


def collect_photos(sources: tuple[tuple[str, str, str], ...] = PHOTO_SOURCES) -> tuple[list[Photo], list[str]]:
    """Load the shipped photos that are available offline; grayscale ones and missing packages are skipped.

    Returns:
        The photos, and one note per skipped source saying why.
    """
    photos, skipped = [], []
    for name, domain, origin in sources:
        try:
            pixels = np.asarray(_load_pixels(name, origin))
        except Exception as err:  # a package missing, or a file that needs a download: skip it, say why
            skipped.append(f"{origin}:{name}: {type(err).__name__}: {str(err).splitlines()[0][:120]}")
            continue
        if pixels.ndim != 3 or pixels.shape[2] < 3:
            skipped.append(f"{origin}:{name}: grayscale, skipped (a gray real would make colour a shortcut)")
            continue
        photos.append(Photo(name, domain, origin, np.ascontiguousarray(pixels[..., :3].astype(np.uint8))))
    if not photos:
        raise FileNotFoundError("no demo photo could be loaded: install scikit-image and scikit-learn (`.[demo]`)")
    return photos, skipped


def crop_boxes(photo: Photo, count: int, *, size: int, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """`count` seeded square boxes (x, y, side) inside the photo, side uniform in [size, min(size / 0.4, H, W)]."""
    h, w = photo.pixels.shape[:2]
    top = min(size / 0.4, h, w)
    boxes = []
    for _ in range(count):
        side = int(rng.uniform(size, top)) if top > size else int(top)
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        boxes.append((x, y, side))
    return boxes


def balanced_counts(domains: list[str], total: int) -> list[int]:
    """Split `total` evenly over the distinct domains, then evenly over each domain's photos (in order)."""
    names = list(dict.fromkeys(domains))
    per_domain = {d: total // len(names) + (i < total % len(names)) for i, d in enumerate(names)}
    counts, seen = [], {d: 0 for d in names}
    for d in domains:
        n_d, k = domains.count(d), seen[d]
        counts.append(per_domain[d] // n_d + (k < per_domain[d] % n_d))
        seen[d] += 1
    return counts


def cut_crops(
    photos: list[Photo], out_dir: str | Path, *, n_crops: int, size: int = 128, seed: int = 0
) -> pd.DataFrame:
    """Cut about `n_crops` square crops (seeded positions and scales, resized to `size`) and save them as PNG.

    Crops are spread evenly over the domains, then over each domain's photos, and written to
    `out_dir/real/<photo>_<k>.png`; existing files are kept (the crops depend only on the photos, `n_crops`,
    `size` and `seed`). A CSV index for `aigi index` is
    written to `out_dir/real.csv` with the columns path, label, source, domain.

    Returns:
        The CSV's rows.
    """
    out_dir = Path(out_dir)
    (out_dir / "real").mkdir(parents=True, exist_ok=True)
    per_photo = balanced_counts([p.domain for p in photos], n_crops)
    rows = []
    for index, (photo, count) in enumerate(zip(photos, per_photo)):
        rng = np.random.default_rng([seed, index])
        for k, (x, y, side) in enumerate(crop_boxes(photo, int(count), size=size, rng=rng)):
            rel = f"real/{photo.name}_{k:03d}.png"
            if not (out_dir / rel).exists():
                crop = Image.fromarray(photo.pixels[y : y + side, x : x + side])
                if side != size:
                    crop = crop.resize((size, size), Image.Resampling.LANCZOS)
                with atomic_path(out_dir / rel) as tmp:
                    crop.save(tmp, format="PNG")
            rows.append({"path": rel, "label": 0, "source": "real", "domain": photo.domain})
    table = pd.DataFrame(rows)
    table.to_csv(out_dir / "real.csv", index=False)
    return table


def load_rgb(paths: list[str | Path]) -> np.ndarray:
    """Read same-sized images into one uint8 array [N, H, W, 3]."""
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


def psnr(real: np.ndarray, fake: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of uint8 (or [0, 255]) images, over all pixels of all images."""
    mse = float(np.mean((np.asarray(real, np.float64) - np.asarray(fake, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)
