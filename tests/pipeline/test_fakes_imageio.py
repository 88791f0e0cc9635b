"""Output formats of aligned fakes: JPEG quality estimation from quantization tables, format choice, output names."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aigi.common.grammar import parse_format
from aigi.fakes.imageio import (
    _BASE_LUMA,
    Encoding,
    encoding_for,
    estimate_jpeg_quality,
    ijg_table,
)
from aigi.pipeline.fakes import safe_relative, slug


def photo(seed: int = 0, size: tuple[int, int] = (48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    low = Image.fromarray(rng.integers(0, 255, (5, 5, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
    noise = rng.normal(0, 8, (size[1], size[0], 3))
    return Image.fromarray(np.clip(np.asarray(low) + noise, 0, 255).astype(np.uint8))


def test_ijg_table_hand_values() -> None:
    assert ijg_table(_BASE_LUMA, 50).tolist() == _BASE_LUMA.tolist()  # quality 50 is the base table
    assert set(ijg_table(_BASE_LUMA, 100).tolist()) == {1}
    # quality 75: scale 50 -> (16*50+50)//100 = 8, (11*50+50)//100 = 6, (10*50+50)//100 = 5
    assert ijg_table(_BASE_LUMA, 75)[:3].tolist() == [8, 6, 5]
    # quality 10: scale 500 -> 16*5 = 80, 121*5 = 605 clamped to 255
    assert ijg_table(_BASE_LUMA, 10)[0] == 80 and ijg_table(_BASE_LUMA, 10).max() == 255


@pytest.mark.parametrize("quality", [50, 75, 90, 95, 10, 33, 100])
def test_quality_of_files_saved_at_known_quality(tmp_path: Path, quality: int) -> None:
    path = tmp_path / "x.jpg"
    photo().save(path, quality=quality)
    with Image.open(path) as img:
        assert estimate_jpeg_quality(img.quantization) == (quality, True)
    gray = tmp_path / "g.jpg"
    photo().convert("L").save(gray, quality=quality)  # a single (luma) table
    with Image.open(gray) as img:
        assert len(img.quantization) == 1 and estimate_jpeg_quality(img.quantization) == (quality, True)


def test_non_ijg_tables_give_nearest_quality() -> None:
    tables = {0: (ijg_table(_BASE_LUMA, 80) + 1).tolist()}  # a custom encoder, one step coarser everywhere
    quality, exact = estimate_jpeg_quality(tables)
    assert not exact and 75 <= quality <= 80


def test_parse_format() -> None:
    assert [parse_format(t) for t in ("same", "PNG", "jpeg:95", "jpg:7")] == ["same", "png", "jpeg:95", "jpeg:7"]
    for bad in ("gif", "jpeg:0", "jpeg:101", "jpeg:", "jpeg:x"):
        with pytest.raises(ValueError, match="bad --format"):
            parse_format(bad)


def test_encoding_for_same_keeps_format_quality_and_subsampling(tmp_path: Path) -> None:
    photo().save(tmp_path / "a.jpg", quality=88, subsampling=0)
    photo().save(tmp_path / "b.png")
    photo().save(tmp_path / "c.webp", lossless=True)
    assert encoding_for("same", tmp_path / "a.jpg") == Encoding("jpeg", {"quality": 88, "subsampling": 0})
    assert encoding_for("same", tmp_path / "b.png") == Encoding("png")
    assert encoding_for("same", tmp_path / "c.webp") == Encoding("png")  # other formats: lossless PNG
    assert encoding_for("jpeg:70", tmp_path / "b.png").options["quality"] == 70
    data = encoding_for("same", tmp_path / "a.jpg").encode(photo(1))
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "JPEG" and estimate_jpeg_quality(img.quantization) == (88, True)
    with Image.open(io.BytesIO(Encoding("png").encode(photo(1)))) as img:
        np.testing.assert_array_equal(np.asarray(img), np.asarray(photo(1)))


def test_output_names() -> None:
    assert slug("vae:sd14") == "vae_sd14" and slug("sr:esrgan-x4") == "sr_esrgan-x4"
    assert safe_relative("a/b/c.JPEG").as_posix() == "a/b/c.JPEG"
    assert safe_relative("/abs/x.png").as_posix() == "abs/x.png"
    assert safe_relative("../up/./x.png").as_posix() == "_/up/x.png"
    assert safe_relative("C:\\data\\x.png").as_posix() == "data/x.png"
