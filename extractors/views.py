"""Deterministic image perturbations ("views") applied before preprocessing, for robustness tables.

- `orig`: the image itself.
- `jpeg:Q`: encoded to JPEG at quality Q (1-100, PIL's encoder, 4:2:0 chroma subsampling) in memory and decoded.
- `blur:SIGMA`: Gaussian blur with standard deviation SIGMA pixels (kernel 2*ceil(3*SIGMA)+1, reflected borders;
  images smaller than half the kernel use PIL's box-filter approximation of the same blur).
- `resize:SCALE`: the image rescaled by SCALE (bicubic, antialiased; each side rounded, at least 1 px). Nothing
  scales it back: the preprocessing policy then sees the smaller (or larger) image, as a detector would.
- `webp:Q`: encoded to lossy WebP at quality Q (1-100, PIL's libwebp encoder, method 4) in memory and decoded.
- `crop:FRACTION`: the central crop keeping FRACTION (0 < FRACTION <= 1) of each side (each side rounded, at least
  1 px; the left/top margin is the smaller one when the leftover is odd); a bare `crop` means `crop:0.5`.
"""

from __future__ import annotations

import io
import math

from PIL import Image, ImageFilter
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from aigi.common.grammar import canonical_view, parse_view, parse_views

__all__ = ["apply_view", "canonical_view", "parse_view", "parse_views"]

_QUALITY = ("jpeg", "webp")


def apply_view(img: Image.Image, view: str) -> Image.Image:
    """The perturbed RGB image for `view` (see the module doc); `orig` returns the image unchanged."""
    kind, value = parse_view(view)
    img = img if img.mode == "RGB" else img.convert("RGB")
    if kind == "orig":
        return img
    if kind in _QUALITY:
        return _recode(img, "JPEG" if kind == "jpeg" else "WEBP", quality=int(value))
    if kind == "crop":
        w, h = max(1, round(img.width * value)), max(1, round(img.height * value))
        left, top = (img.width - w) // 2, (img.height - h) // 2
        return img.crop((left, top, left + w, top + h))
    if kind == "blur":
        kernel = 2 * math.ceil(3 * value) + 1
        if min(img.size) <= kernel // 2:  # reflection needs a margin; tiny images get PIL's approximation
            return img.filter(ImageFilter.GaussianBlur(value))
        return TF.gaussian_blur(img, [kernel, kernel], [value, value])
    size = [max(1, round(img.height * value)), max(1, round(img.width * value))]
    return TF.resize(img, size, interpolation=InterpolationMode.BICUBIC, antialias=True)


def _recode(img: Image.Image, fmt: str, *, quality: int) -> Image.Image:
    """`img` encoded in memory with PIL's `fmt` encoder at `quality`, then decoded to RGB."""
    buf = io.BytesIO()
    img.save(buf, format=fmt, quality=quality, **({"method": 4} if fmt == "WEBP" else {}))
    buf.seek(0)
    with Image.open(buf) as out:
        return out.convert("RGB")
