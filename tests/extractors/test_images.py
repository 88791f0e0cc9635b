"""Robust decoding: every kind of bad or unusual file is converted correctly or refused with its reason."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aigi.extractors.images import ImageLoadError, load_image, probe_image


def _jpeg(path: Path, size: tuple[int, int] = (64, 48)) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def test_truncated_jpeg_is_refused(tmp_path: Path) -> None:
    data = _jpeg(tmp_path / "full.jpg").read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError) as err:
        load_image(cut)
    assert err.value.reason == "truncated file"


def test_zero_byte_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty file"):
        load_image(tmp_path / "empty.png")


def test_text_named_jpg_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("this is not an image\n")
    with pytest.raises(ImageLoadError, match="not an image"):
        load_image(tmp_path / "notes.jpg")
    with pytest.raises(ImageLoadError, match="not an image"):
        probe_image(tmp_path / "notes.jpg")


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "absent.png")


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    # Pure cyan ink (C=255, M=Y=K=0) is RGB (0, 255, 255) under PIL's CMYK conversion.
    Image.new("CMYK", (32, 24), (255, 0, 0, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    img = load_image(tmp_path / "cmyk.jpg")
    assert img.mode == "RGB" and img.size == (32, 24)
    assert np.abs(np.asarray(img, dtype=int)[12, 16] - [0, 255, 255]).max() <= 3


def test_16bit_png_is_scaled_to_8bit(tmp_path: Path) -> None:
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    img = load_image(tmp_path / "deep.png")
    assert img.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(img)[0], [[0, 0, 0], [100, 100, 100], [255, 255, 255]])


def test_palette_with_transparency_drops_alpha(tmp_path: Path) -> None:
    pal = Image.new("P", (4, 2))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((0, 0), 1)
    pal.info["transparency"] = 0  # palette entry 0 (red) is transparent
    pal.save(tmp_path / "pal.png", transparency=0)
    img = load_image(tmp_path / "pal.png")
    assert img.mode == "RGB"
    assert np.asarray(img)[0, 0].tolist() == [0, 0, 255]
    assert np.asarray(img)[1, 3].tolist() == [255, 0, 0]  # transparent pixels keep their colour, alpha dropped


def test_animated_gif_gives_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(tmp_path / "anim.gif").n_frames == 3
    img = load_image(tmp_path / "anim.gif")
    assert img.size == (8, 8) and np.asarray(img)[4, 4].tolist() == [255, 0, 0]


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = (255, 0, 0)  # left half red
    arr[:, 20:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(arr).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    assert probe_image(tmp_path / "rot.jpg") == (20, 40, "jpeg")
    out = np.asarray(load_image(tmp_path / "rot.jpg"), dtype=int)
    assert out.shape == (40, 20, 3)
    assert out[5, 10, 0] > 200 and out[5, 10, 2] < 60  # the left (red) half is now on top
    assert out[35, 10, 2] > 200 and out[35, 10, 0] < 60


def test_one_pixel_image(tmp_path: Path) -> None:
    Image.new("L", (1, 1), 77).save(tmp_path / "dot.png")
    img = load_image(tmp_path / "dot.png")
    assert img.size == (1, 1) and np.asarray(img)[0, 0].tolist() == [77, 77, 77]


def test_decompression_bomb_header_is_refused(tmp_path: Path) -> None:
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)  # claims 10^10 RGB pixels
    idat = zlib.compress(b"\x00" * 16)
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    (tmp_path / "bomb.png").write_bytes(data)
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        load_image(tmp_path / "bomb.png")
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        probe_image(tmp_path / "bomb.png")


def test_unicode_file_name(tmp_path: Path) -> None:
    path = _jpeg(tmp_path / "ünïcødé_画像 photo.jpg", size=(30, 20))
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (30, 20)
    assert probe_image(path) == (30, 20, "jpeg")


def test_rgba_png_drops_alpha(tmp_path: Path) -> None:
    Image.new("RGBA", (5, 5), (10, 20, 30, 0)).save(tmp_path / "alpha.png")
    assert np.asarray(load_image(tmp_path / "alpha.png"))[2, 2].tolist() == [10, 20, 30]
