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

_KINDS = ("orig", "jpeg", "webp", "blur", "resize", "crop")
_QUALITY = ("jpeg", "webp")
DEFAULT_CROP = 0.5


def _parse(view: str) -> tuple[str, float | int | None]:
    kind, sep, arg = view.strip().partition(":")
    if kind not in _KINDS:
        raise ValueError(
            f"unknown view {view!r}; views are orig, jpeg:Q, webp:Q, blur:SIGMA, resize:SCALE, crop:FRACTION"
        )
    if kind == "crop" and not sep:
        return kind, DEFAULT_CROP
    if kind == "orig":
        if sep:
            raise ValueError(f"view 'orig' takes no parameter, got {view!r}")
        return kind, None
    try:
        value = int(arg) if kind in _QUALITY else float(arg)
    except ValueError:
        what = "whole number" if kind in _QUALITY else "number"
        raise ValueError(f"view {view!r}: {arg!r} is not a {what}") from None
    if kind in _QUALITY and not 1 <= value <= 100:
        raise ValueError(f"view {view!r}: {kind.upper()} quality must be in 1..100")
    if kind not in _QUALITY and not (math.isfinite(value) and value > 0):
        raise ValueError(f"view {view!r}: {kind} needs a positive number")
    if kind == "crop" and value > 1:
        raise ValueError(f"view {view!r}: crop keeps a fraction of each side, in (0, 1]")
    return kind, value


def canonical_view(view: str) -> str:
    """The canonical spelling of a view ("jpeg:075" -> "jpeg:75", "blur:1" -> "blur:1.0"); validates."""
    kind, value = _parse(view)
    return kind if value is None else f"{kind}:{value!r}"


def parse_views(text: str) -> list[str]:
    """Comma-separated views -> canonical names, in order; errors on unknown, malformed or repeated views."""
    views = [canonical_view(v) for v in text.split(",") if v.strip()]
    if not views:
        raise ValueError("no view given; e.g. --views orig,jpeg:75,blur:1.0,resize:0.5")
    repeated = sorted({v for v in views if views.count(v) > 1})
    if repeated:
        raise ValueError(f"views repeated: {', '.join(repeated)}")
    return views


def apply_view(img: Image.Image, view: str) -> Image.Image:
    """The perturbed RGB image for `view` (see the module doc); `orig` returns the image unchanged."""
    kind, value = _parse(view)
    img = img.convert("RGB")
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
