"""Decode any image file a user may have into an RGB PIL image, or say precisely why it cannot be read."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Larger images are refused as decompression bombs (PIL's own default is ~89 M pixels and only warns).
MAX_PIXELS = 178_956_970
_ORIENTATION_SWAPS = {5, 6, 7, 8}


class ImageLoadError(ValueError):
    """An image that cannot be used; `reason` is a short human-readable cause."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def read_image_bytes(path: str | Path) -> bytes:
    """The bytes of an image file, read once (decode them with `decode_image`, hash them for the image_id).

    Raises:
        ImageLoadError: a missing or empty file, or one that cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(path, "no such file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ImageLoadError(path, f"cannot read: {err}") from None
    if not data:
        raise ImageLoadError(path, "empty file (0 bytes)")
    return data


def _open(path: Path, data: bytes | None = None) -> Image.Image:
    """PIL's lazy open of `path` (or of its bytes `data`, read already), refusing decompression bombs."""
    if data is None:
        if not path.is_file():
            raise ImageLoadError(path, "no such file")
        if path.stat().st_size == 0:
            raise ImageLoadError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path if data is None else io.BytesIO(data))
            if img.width * img.height > MAX_PIXELS:
                raise ImageLoadError(path, f"decompression bomb: {img.width}x{img.height} exceeds {MAX_PIXELS} px")
            return img
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageLoadError(path, f"decompression bomb: {err}") from None
    except UnidentifiedImageError:
        raise ImageLoadError(path, "not an image (unknown or corrupt format)") from None
    except OSError as err:
        raise ImageLoadError(path, f"cannot open: {err}") from None


def probe_image(path: str | Path) -> tuple[int, int, str]:
    """Width, height (after EXIF rotation) and format from the header, without decoding pixels."""
    path = Path(path)
    with _open(path) as img:
        width, height, fmt = img.width, img.height, (img.format or "").lower()
        try:
            orientation = img.getexif().get(0x0112, 1)
        except Exception:  # a broken EXIF block must not make the image unreadable
            orientation = 1
    if orientation in _ORIENTATION_SWAPS:
        width, height = height, width
    return width, height, fmt


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        scale = 257.0 if arr.max(initial=0) > 255 or img.mode != "I" else 1.0
        img = Image.fromarray(np.clip(arr / scale + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(arr * (255.0 if arr.max(initial=0) <= 1.0 else 1.0), 0, 255).astype(np.uint8))
    elif img.mode == "P" or img.mode == "PA":
        img = img.convert("RGBA")
    return img if img.mode == "RGB" else img.convert("RGB")  # an RGB image is not copied


def load_image(path: str | Path) -> Image.Image:
    """Decode `path` fully into an RGB image with EXIF orientation applied.

    Handles CMYK, 16-bit, palette and alpha images (alpha is dropped), animated files (first frame) and
    EXIF rotation; raises ImageLoadError for missing, empty, truncated, non-image and oversized files.
    """
    return _decode(Path(path), None)


def decode_image(data: bytes, path: str | Path = "<bytes>") -> Image.Image:
    """`load_image` of a file's bytes read already (`read_image_bytes`); `path` names it in errors."""
    if not data:
        raise ImageLoadError(path, "empty file (0 bytes)")
    return _decode(Path(path), data)


def _decode(path: Path, data: bytes | None) -> Image.Image:
    img = _open(path, data)
    out = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # palette-transparency and EXIF warnings are handled here
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
            out = _to_rgb(img)
            if out is img and getattr(img, "n_frames", 1) > 1:  # keep no file of a multi-frame image open
                out = img.copy()
            return out
    except ImageLoadError:
        raise
    except (OSError, SyntaxError, ValueError) as err:
        reason = "truncated file" if "truncated" in str(err) else f"cannot decode: {err}"
        raise ImageLoadError(path, reason) from None
    finally:
        if out is not img:
            img.close()
