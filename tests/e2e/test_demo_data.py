"""The demo's data part: bundled photos, seeded crops and the lookup of pretrained weights."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from aigi.fakes import photos as bundled_photos
from aigi.pipeline.demo.data import (
    PHOTO_SOURCES,
    Photo,
    collect_photos,
    cut_crops,
    find_shared_weights,
    psnr,
    shared_dirs,
)


def _photo(name: str, domain: str, seed: int, shape=(150, 200)) -> Photo:
    pixels = np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)
    return Photo(name, domain, "test", pixels)


def _digest(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.png"))}


def test_bundled_photos_are_rgb_and_cover_four_domains():
    pytest.importorskip("skimage")
    photos, skipped = collect_photos()
    assert {p.domain for p in photos} == {"human", "animal", "object", "scene"}
    assert len(photos) + len(skipped) == len(PHOTO_SOURCES)
    for p in photos:
        assert p.pixels.dtype == np.uint8 and p.pixels.ndim == 3 and p.pixels.shape[2] == 3
        assert min(p.pixels.shape[:2]) >= 256, p.name
        assert p.pixels.std() > 10, f"{p.name} looks blank"


def test_missing_or_gray_sources_are_skipped_with_a_reason():
    photos, skipped = collect_photos((("camera", "human", "skimage"), ("nope", "scene", "matplotlib"),
                                      ("astronaut", "human", "skimage")))  # fmt: skip
    assert [p.name for p in photos] == ["astronaut"]
    assert "grayscale" in skipped[0] and skipped[1].startswith("matplotlib:nope")


def test_crop_counts_are_balanced_over_domains_then_photos():
    # 10 crops over 3 domains: 4, 3, 3; the two "a" photos split 4 as 2 + 2, the three "c" photos 3 as 1 + 1 + 1
    assert bundled_photos.balanced_counts(["a", "a", "b", "c", "c", "c"], 10) == [2, 2, 3, 1, 1, 1]
    assert bundled_photos.balanced_counts(["a", "b"], 5) == [3, 2]


def test_crops_are_seeded_sized_and_indexed(tmp_path):
    photos = [_photo("p0", "human", 0), _photo("p1", "scene", 1, shape=(90, 300))]
    table = cut_crops(photos, tmp_path / "a", n_crops=9, size=64, seed=3)
    cut_crops(photos, tmp_path / "b", n_crops=9, size=64, seed=3)
    cut_crops(photos, tmp_path / "c", n_crops=9, size=64, seed=4)
    assert len(table) == 9 and list(table["domain"]).count("human") == 5
    assert set(table.columns) == {"path", "label", "source", "domain"} and set(table["label"]) == {0}
    a, b, c = (_digest(tmp_path / x / "real") for x in "abc")
    assert a == b and a != c and len(a) == 9
    for rel in table["path"]:
        with Image.open(tmp_path / "a" / rel) as img:
            assert img.size == (64, 64) and img.mode == "RGB"
    csv = (tmp_path / "a" / "real.csv").read_text().splitlines()
    assert csv[0] == "path,label,source,domain" and len(csv) == 10


def test_a_crop_at_scale_one_is_the_photo_pixels(tmp_path, monkeypatch):
    photo = _photo("p", "object", 5, shape=(80, 100))
    monkeypatch.setattr(bundled_photos, "crop_boxes", lambda p, n, *, size, rng: [(7, 11, size)] * n)
    cut_crops([photo], tmp_path, n_crops=1, size=32, seed=0)
    crop = np.asarray(Image.open(tmp_path / "real" / "p_000.png"))
    np.testing.assert_array_equal(crop, photo.pixels[11:43, 7:39])


def test_psnr_matches_the_formula():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0, 0] = 10  # MSE = 100 / 96
    assert psnr(a, b) == pytest.approx(10 * np.log10(255**2 * 96 / 100))
    assert psnr(a, a) == float("inf")


def test_shared_weights_lookup(tmp_path):
    (tmp_path / "shared" / "data" / "taesd").mkdir(parents=True)
    (tmp_path / "shared" / "data" / "taesd" / "taef2_encoder.pth").write_bytes(b"x")
    (tmp_path / "shared" / "data" / "sr").mkdir()
    (tmp_path / "shared" / "data" / "sr" / "model.pth").write_bytes(b"x")
    repo = tmp_path / "aigi"
    assert find_shared_weights("vae", roots=[repo]) == tmp_path / "shared" / "data" / "taesd"
    assert find_shared_weights("sr", roots=[repo]) == tmp_path / "shared" / "data" / "sr" / "model.pth"
    assert find_shared_weights("vae", roots=[tmp_path / "elsewhere" / "x"]) is None
    assert find_shared_weights("sr", explicit=tmp_path / "shared" / "data" / "sr" / "model.pth").name == "model.pth"
    with pytest.raises(FileNotFoundError, match="--vae-weights"):
        find_shared_weights("vae", explicit=tmp_path / "missing")


def test_aigi_shared_names_the_shared_folder(tmp_path, monkeypatch):
    (tmp_path / "mine" / "data" / "mobilenetv2").mkdir(parents=True)
    (tmp_path / "mine" / "data" / "mobilenetv2" / "w.pt").write_bytes(b"x")
    monkeypatch.setenv("AIGI_SHARED", str(tmp_path / "mine"))
    assert shared_dirs() == [tmp_path / "mine"]
    assert find_shared_weights("backbone") == tmp_path / "mine" / "data" / "mobilenetv2" / "w.pt"
    monkeypatch.setenv("AIGI_SHARED", str(tmp_path / "empty"))  # no shared data at all, as on a user's machine
    assert find_shared_weights("backbone") is None and find_shared_weights("vae") is None
    monkeypatch.delenv("AIGI_SHARED")
    assert shared_dirs(roots=[tmp_path / "aigi"]) == [tmp_path / "shared"]
