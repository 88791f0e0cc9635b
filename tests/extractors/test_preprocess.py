"""Preprocessing policies: UAR's rich patch, GAPL's center crop, OmniAID's resize, and policy parsing."""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest
import torch
from PIL import Image

from aigi.extractors.preprocess import (
    NORMS,
    CenterCrop,
    Resize,
    RichPatch,
    crop_fluctuations,
    parse_policy,
    resolve_policy,
)

MEAN, STD = NORMS["imagenet"]


def _normalized(arr: np.ndarray) -> torch.Tensor:
    """[H, W, 3] uint8 -> normalised CHW tensor, written out plainly."""
    x = torch.from_numpy(arr.astype(np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def _plain_fluctuation(patch: np.ndarray) -> float:
    """UAR's definition on one crop, with float arithmetic and no tricks."""
    x = patch.astype(np.float64)
    return float(
        np.abs(x[:, :-1] - x[:, 1:]).sum()
        + np.abs(x[:-1, :] - x[1:, :]).sum()
        + np.abs(x[:-1, :-1] - x[1:, 1:]).sum()
        + np.abs(x[1:, :-1] - x[:-1, 1:]).sum()
    )


@pytest.mark.parametrize("crops", [12, 100])  # 12: crop-by-crop branch; 100: whole-image cumulative sums
def test_crop_fluctuations_match_plain_definition(crops: int) -> None:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    ys, xs = rng.integers(0, 70 - 32 + 1, crops), rng.integers(0, 90 - 32 + 1, crops)
    fast = crop_fluctuations(pixels, ys, xs, 32)
    plain = [_plain_fluctuation(pixels[y : y + 32, x : x + 32]) for y, x in zip(ys, xs)]
    np.testing.assert_array_equal(fast, plain)


def test_rich_patch_picks_the_textured_corner() -> None:
    # 226x226 allows 9 crop positions; 192 draws miss one with probability ~1e-10. Only the bottom-right
    # 2x2 pixels are textured, so the crop at (2, 2) is the only one holding all of them.
    arr = np.full((226, 226, 3), 128, dtype=np.uint8)
    arr[224:, 224:] = [[[0, 255, 0], [255, 0, 255]], [[255, 255, 0], [0, 0, 255]]]
    out = RichPatch(size=224, mean=MEAN, std=STD)(Image.fromarray(arr), "some-image-id")
    torch.testing.assert_close(out, _normalized(arr[2:, 2:]), rtol=0, atol=1e-6)


def test_rich_patch_choice_is_the_best_drawn_crop_and_seeded_by_id() -> None:
    rng = np.random.default_rng(2)
    arr = np.full((400, 600, 3), 90, dtype=np.uint8)
    arr[100:300, 350:550] = rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)  # texture block
    img = Image.fromarray(arr)
    rich = RichPatch(size=224, mean=MEAN, std=STD, crops=192)
    y, x = rich.crop_box(img, "id-1")
    assert y <= 100 and 300 <= y + 224 and x <= 350 and 550 <= x + 224  # covers the whole textured block
    assert rich.crop_box(img, "id-1") == (y, x)  # reproducible
    noise = Image.fromarray(rng.integers(0, 256, (400, 600, 3), dtype=np.uint8))
    boxes = {rich.crop_box(noise, f"id-{i}") for i in range(6)}
    assert len(boxes) > 1  # other ids draw other windows


def test_rich_patch_small_image_is_squashed_bilinear() -> None:
    rng = np.random.default_rng(3)
    img = Image.fromarray(rng.integers(0, 256, (150, 300, 3), dtype=np.uint8))  # height under 224
    out = RichPatch(size=224, mean=MEAN, std=STD)(img, "x")
    expected = np.asarray(img.resize((224, 224), Image.BILINEAR))
    torch.testing.assert_close(out, _normalized(expected), rtol=0, atol=1e-6)


def test_rich_patch_is_fast_on_a_large_image() -> None:
    rng = np.random.default_rng(4)
    img = Image.fromarray(rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8))
    rich = RichPatch(size=224, mean=MEAN, std=STD)
    start = time.perf_counter()
    rich(img, "speed")
    assert time.perf_counter() - start < 2.0  # ~0.1 s here; a per-crop loop takes ~2 s


def test_center_crop_takes_the_centre_without_resizing() -> None:
    rng = np.random.default_rng(5)
    arr = rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)
    out = CenterCrop(size=224, mean=MEAN, std=STD)(Image.fromarray(arr))
    top, left = (300 - 224) // 2, (260 - 224) // 2
    torch.testing.assert_close(out, _normalized(arr[top : top + 224, left : left + 224]), rtol=0, atol=1e-6)


def test_center_crop_pads_small_images_with_black() -> None:
    arr = np.full((100, 224, 3), 200, dtype=np.uint8)
    out = CenterCrop(size=224, mean=MEAN, std=STD)(Image.fromarray(arr))
    black = _normalized(np.zeros((1, 1, 3), dtype=np.uint8))[:, 0, 0]
    grey = _normalized(np.full((1, 1, 3), 200, dtype=np.uint8))[:, 0, 0]
    torch.testing.assert_close(out[:, 0, 5], black)
    torch.testing.assert_close(out[:, 112, 5], grey)
    torch.testing.assert_close(out[:, 223, 5], black)


def test_center_crop_resize_option_upscales_small_images() -> None:
    arr = np.full((100, 150, 3), 200, dtype=np.uint8)
    out = CenterCrop(size=224, mean=MEAN, std=STD, small="resize")(Image.fromarray(arr))
    grey = _normalized(np.full((1, 1, 3), 200, dtype=np.uint8))[:, 0, 0]
    torch.testing.assert_close(out, grey.view(3, 1, 1).expand(3, 224, 224), rtol=0, atol=1e-5)


@pytest.mark.parametrize(("option", "pil_filter"), [(None, Image.BILINEAR), ("bicubic", Image.BICUBIC)])
def test_resize_squashes_to_square_with_clip_stats(option: str | None, pil_filter: int) -> None:
    rng = np.random.default_rng(6)
    img = Image.fromarray(rng.integers(0, 256, (90, 200, 3), dtype=np.uint8))
    mean, std = NORMS["clip"]
    out = Resize(size=64, mean=mean, std=std, **({"interpolation": option} if option else {}))(img)
    expected = np.asarray(img.resize((64, 64), pil_filter)).astype(np.float32) / 255.0
    expected = (torch.from_numpy(expected).permute(2, 0, 1) - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(
        std
    ).view(3, 1, 1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_transforms_are_picklable() -> None:
    for t in [
        Resize(size=8, mean=MEAN, std=STD),
        CenterCrop(size=8, mean=MEAN, std=STD),
        RichPatch(size=8, mean=MEAN, std=STD),
    ]:
        clone = pickle.loads(pickle.dumps(t))
        img = Image.new("RGB", (20, 12), (1, 2, 3))
        torch.testing.assert_close(clone(img, "a"), t(img, "a"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("resize", ("resize", {})),
        ("rich_patch:crops=64", ("rich_patch", {"crops": 64})),
        ("center_crop:small=resize,norm=clip", ("center_crop", {"small": "resize", "norm": "clip"})),
    ],
)
def test_parse_policy(text: str, expected: tuple) -> None:
    assert parse_policy(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("crop", "unknown preprocessing policy"),
        ("resize:crops=3", "bad parameter"),
        ("rich_patch:crops=-1", "positive integer"),
        ("center_crop:small=stretch", "must be one of"),
        ("resize:size=999", "must equal the network input size"),
    ],
)
def test_bad_policies_are_explained(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_policy(text, default="resize", size=224, norm="clip")


def test_resolve_policy_records_params_and_norm() -> None:
    policy = resolve_policy(None, default="rich_patch", size=224, norm="imagenet")
    assert policy.params == {"crops": 192} and policy.interpolation == "bilinear"
    assert policy.kwargs["mean"] == tuple(MEAN)
    policy = resolve_policy("resize:norm=clip", default="rich_patch", size=336, norm="imagenet")
    assert policy.kwargs["std"] == tuple(NORMS["clip"][1]) and policy.interpolation == "bilinear"
    assert resolve_policy("resize:interpolation=bicubic", default="resize", size=336, norm="clip").interpolation == (
        "bicubic"
    )
