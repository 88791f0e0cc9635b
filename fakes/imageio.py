"""Encodings of aligned fakes: the output format a real image asks for, and JPEG quality estimation."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, JpegImagePlugin

from aigi.common.grammar import parse_format

# The example tables of the JPEG standard (ITU T.81 Annex K), natural (row-major) order; libjpeg scales them.
_BASE_LUMA = np.array(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    dtype=np.int64,
).ravel()
_BASE_CHROMA = np.full((8, 8), 99, dtype=np.int64)
_BASE_CHROMA[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]
_BASE_CHROMA = _BASE_CHROMA.ravel()

LOSSLESS = "png"
EXTENSIONS = {"png": ".png", "jpeg": ".jpg"}


def ijg_table(base: np.ndarray, quality: int) -> np.ndarray:
    """The quantization table libjpeg writes for `quality` (1..100), with baseline clamping to 1..255."""
    quality = min(max(int(quality), 1), 100)
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return np.clip((base * scale + 50) // 100, 1, 255)


def estimate_jpeg_quality(tables: dict[int, list[int]]) -> tuple[int, bool]:
    """Invert libjpeg's quality scaling: the quality whose IJG tables are closest to `tables`.

    Args:
        tables: PIL's `Image.quantization` (table index -> 64 values in natural order); table 0 is luma,
            table 1 (if any) chroma.

    Returns:
        (quality, exact): the best quality in 1..100 and whether its tables match every value exactly
        (False for encoders that do not use IJG scaling, e.g. some cameras; the nearest quality is returned).
    """
    if not tables:
        raise ValueError("a JPEG without quantization tables")
    luma = np.asarray(tables[min(tables)], dtype=np.int64)
    chroma = np.asarray(tables[sorted(tables)[1]], dtype=np.int64) if len(tables) > 1 else None
    best, best_err = 75, None
    for q in range(1, 101):
        err = np.abs(ijg_table(_BASE_LUMA, q) - luma).sum()
        if chroma is not None:
            err += np.abs(ijg_table(_BASE_CHROMA, q) - chroma).sum()
        if best_err is None or err < best_err:  # ties go to the lower quality (first found)
            best, best_err = q, err
    return best, best_err == 0


@dataclass(frozen=True)
class Encoding:
    """How to write an output image: PIL format name, file extension and encoder options."""

    fmt: str  # "png" | "jpeg"
    options: dict = field(default_factory=dict, hash=False, compare=True)

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.fmt]

    def encode(self, img: Image.Image) -> bytes:
        """The encoded file bytes of `img`."""
        buf = io.BytesIO()
        img.save(buf, format=self.fmt.upper(), **self.options)
        return buf.getvalue()


def encoding_for(spec: str, source: str | Path) -> Encoding:
    """The encoding that `--format spec` asks for when the real image is the file `source`.

    `same` keeps a JPEG a JPEG at its own estimated quality and chroma subsampling, and writes every other
    input (PNG, WebP, BMP, TIFF, ...) losslessly as PNG so no new compression trace is added.
    """
    spec = parse_format(spec)
    if spec == "png":
        return Encoding("png")
    if spec.startswith("jpeg:"):
        return Encoding("jpeg", {"quality": int(spec[5:]), "subsampling": 2})
    with Image.open(source) as img:
        if img.format != "JPEG":
            return Encoding("png")
        quality, _ = estimate_jpeg_quality(img.quantization)
        sampling = JpegImagePlugin.get_sampling(img)
    return Encoding("jpeg", {"quality": quality, "subsampling": sampling if sampling in (0, 1, 2) else 2})
