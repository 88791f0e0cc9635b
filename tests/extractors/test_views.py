"""Views: deterministic perturbations with canonical names and clear errors."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from aigi.extractors import apply_view, canonical_view, parse_views


def _noise(h: int = 40, w: int = 60, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_orig_is_identity() -> None:
    img = _noise()
    assert np.array_equal(np.asarray(apply_view(img, "orig")), np.asarray(img))


def test_jpeg_matches_a_manual_round_trip_and_is_deterministic() -> None:
    img = _noise()
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=50)
    expected = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    out = np.asarray(apply_view(img, "jpeg:50"))
    assert np.array_equal(out, expected)
    assert np.array_equal(out, np.asarray(apply_view(img, "jpeg:50")))
    assert not np.array_equal(out, np.asarray(img))


def test_blur_of_an_impulse_is_the_gaussian_kernel() -> None:
    sigma = 1.5
    arr = np.zeros((31, 31, 3), dtype=np.uint8)
    arr[15, 15] = 255
    out = np.asarray(apply_view(Image.fromarray(arr), f"blur:{sigma}"), dtype=float)[..., 0]
    radius = math.ceil(3 * sigma)
    g = np.exp(-(np.arange(-radius, radius + 1) ** 2) / (2 * sigma**2))
    g /= g.sum()
    expected = np.zeros((31, 31))
    expected[15 - radius : 16 + radius, 15 - radius : 16 + radius] = 255 * np.outer(g, g)
    assert np.abs(out - expected).max() <= 1.0  # uint8 rounding


def test_blur_keeps_a_flat_image_flat_even_when_tiny() -> None:
    for size in [(1, 1), (3, 2), (50, 50)]:
        img = Image.new("RGB", size, (40, 80, 120))
        assert set(map(tuple, np.asarray(apply_view(img, "blur:2.0")).reshape(-1, 3))) == {(40, 80, 120)}


def test_resize_rescales_each_side() -> None:
    img = _noise(40, 61)
    assert apply_view(img, "resize:0.5").size == (30, 20)  # round(30.5) = 30 (banker's), round(20) = 20
    assert apply_view(img, "resize:2.0").size == (122, 80)
    assert apply_view(Image.new("RGB", (3, 3)), "resize:0.1").size == (1, 1)


def test_webp_matches_a_manual_round_trip_and_quality_matters() -> None:
    img = _noise()
    buf = io.BytesIO()
    img.save(buf, format="WEBP", quality=40, method=4)
    expected = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    out = np.asarray(apply_view(img, "webp:40"))
    assert np.array_equal(out, expected)
    assert np.array_equal(out, np.asarray(apply_view(img, "webp:40")))
    error = lambda q: np.abs(np.asarray(apply_view(img, f"webp:{q}"), dtype=float) - np.asarray(img)).mean()
    assert 0 < error(95) < error(10)


def test_crop_keeps_the_centre() -> None:
    arr = np.arange(10 * 20 * 3, dtype=np.uint8).reshape(10, 20, 3)
    out = apply_view(Image.fromarray(arr), "crop:0.5")
    assert out.size == (10, 5)
    assert np.array_equal(np.asarray(out), arr[2:7, 5:15])  # 10 rows -> 5 kept, top margin (10 - 5) // 2 = 2
    assert np.array_equal(np.asarray(apply_view(Image.fromarray(arr), "crop")), np.asarray(out))
    assert apply_view(Image.fromarray(arr), "crop:1.0").size == (20, 10)
    assert apply_view(Image.new("RGB", (3, 3)), "crop:0.01").size == (1, 1)


def test_views_return_rgb_from_any_mode() -> None:
    img = Image.new("L", (16, 16), 100)
    for view in ["orig", "jpeg:90", "webp:90", "blur:1.0", "resize:0.5", "crop:0.8"]:
        assert apply_view(img, view).mode == "RGB"


def test_parse_views_canonicalises() -> None:
    assert parse_views("orig, jpeg:075,blur:1,resize:0.50") == ["orig", "jpeg:75", "blur:1.0", "resize:0.5"]
    assert canonical_view("blur:1.0") == canonical_view("blur:1") == "blur:1.0"
    assert parse_views("webp:080,crop,crop:0.75") == ["webp:80", "crop:0.5", "crop:0.75"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no view given"),
        ("orig,orig", "repeated"),
        ("jpeg:75,jpeg:075", "repeated"),
        ("sharpen:2", "unknown view"),
        ("jpeg:0", "1..100"),
        ("jpeg:high", "not a whole number"),
        ("blur:-1", "positive"),
        ("resize:nan", "positive"),
        ("orig:1", "takes no parameter"),
        ("webp:101", "1..100"),
        ("crop:1.5", r"\(0, 1\]"),
        ("crop:0", "positive"),
        ("crop,crop:0.5", "repeated"),
    ],
)
def test_parse_views_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_views(text)
