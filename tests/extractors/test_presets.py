"""Each preset's extraction recipe (the `aigi extract` line in its config) gives the reference code's input tensors.

The references are written here with torchvision exactly as the methods' public code does it; the tensors must be
identical (max |delta| = 0), not merely close.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from torchvision import transforms as T

from aigi import extractors

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
# narrow random-weight backbones: the preprocessing only depends on the name and the input size
NARROW = {
    "clip-l14": {"embed_dim": 64, "depth": 1, "num_heads": 2, "proj_dim": 32},
    "clip-l14-336": {"embed_dim": 64, "depth": 1, "num_heads": 2, "proj_dim": 32},
    "aim-v1-3b": {"embed_dim": 32, "depth": 2, "num_heads": 2, "probe_layers": (0, 1)},
}


def _images() -> list[Image.Image]:
    """Noise of odd and even sizes, smaller and larger than the crops, a photo, a grey and an RGBA image."""
    from skimage import data

    rng = np.random.default_rng(0)
    sizes = [(500, 375), (1024, 768), (301, 257), (336, 336), (200, 150), (223, 400), (224, 224)]
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    images.append(Image.fromarray(data.astronaut()))
    images.append(Image.fromarray(data.camera()))  # mode L
    rgba = rng.integers(0, 256, (260, 310, 4), dtype=np.uint8)
    return [*images, Image.fromarray(rgba, mode="RGBA")]


def recipe(preset: str) -> tuple[str, str | None]:
    """(backbone, --preprocess or None) of the `aigi extract` command in a preset's description."""
    description = yaml.safe_load((CONFIGS / f"{preset}.yaml").read_text(encoding="utf-8"))["description"]
    match = re.search(r"`aigi extract ([^`]+)`", description)
    assert match, f"{preset}.yaml does not say how to extract its features"
    args = shlex.split(match.group(1))
    value = lambda flag: args[args.index(flag) + 1] if flag in args else None  # noqa: E731
    return value("--backbone"), value("--preprocess")


def our_transform(preset: str):
    backbone, preprocess = recipe(preset)
    feature = "probe" if backbone.startswith("aim") else "pooler"
    ex = extractors.build(backbone, features=[feature], preprocess=preprocess, device="cpu", **NARROW[backbone])
    return ex.transform


REFERENCES = {
    # OmniAID data/datasets.py: Resize([336, 336]) (torchvision's default filter: bilinear), CLIP statistics
    "omniaid_mirage": T.Compose([T.Resize([336, 336]), T.ToTensor(), T.Normalize(*CLIP)]),
    "omniaid_genimage": T.Compose([T.Resize([336, 336]), T.ToTensor(), T.Normalize(*CLIP)]),
    # GAPL inference.py: CenterCrop(224), ImageNet statistics
    "gapl": T.Compose([T.CenterCrop(224), T.ToTensor(), T.Normalize(*IMAGENET)]),
    # UnivFD validate.py: CenterCrop(224), CLIP statistics for the CLIP backbone
    "univfd": T.Compose([T.CenterCrop(224), T.ToTensor(), T.Normalize(*CLIP)]),
}


@pytest.mark.parametrize("preset", sorted(REFERENCES))
def test_preset_inputs_equal_the_reference_transform(preset: str) -> None:
    ours, reference = our_transform(preset), REFERENCES[preset]
    for i, img in enumerate(_images()):
        expected = reference(img.convert("RGB"))
        got = ours(img, f"img{i}")
        assert got.shape == expected.shape, (preset, img.size)
        assert (got - expected).abs().max().item() == 0.0, (preset, img.size, img.mode)


def _uar_fluctuation(x: np.ndarray) -> float:
    """UAR's pixel fluctuation, on the float32 array as UAR computes it."""
    total = np.sum(np.abs(x[:, :-1] - x[:, 1:])) + np.sum(np.abs(x[:-1, :] - x[1:, :]))
    return total + np.sum(np.abs(x[:-1, :-1] - x[1:, 1:])) + np.sum(np.abs(x[1:, :-1] - x[:-1, 1:]))


def test_uar_inputs_equal_uars_crop_and_transform() -> None:
    """UAR feature_extract.py: of 192 random 224 crops keep the one of largest fluctuation (argsort's last); an
    image under 224 px is Resize((224, 224))d instead; then ToTensor + ImageNet Normalize. UAR draws its crops
    unseeded; ours come from a generator seeded by image_id, so the same draws are replayed here."""
    ours = our_transform("uar")
    assert recipe("uar") == ("aim-v1-3b", None)
    to_input = T.Compose([T.ToTensor(), T.Normalize(*IMAGENET)])
    from aigi.extractors.preprocess import seed_from_id

    for i, img in enumerate(_images()):
        rgb, image_id = img.convert("RGB"), f"img{i}"
        w, h = rgb.size
        if w < 224 or h < 224:
            expected = to_input(T.Resize((224, 224))(rgb))
        else:
            rng = np.random.default_rng(seed_from_id(image_id))
            ys, xs = rng.integers(0, h - 224 + 1, 192), rng.integers(0, w - 224 + 1, 192)
            x = np.array(rgb).astype(np.float32)
            patches = [x[y : y + 224, c : c + 224] for y, c in zip(ys, xs)]
            best = patches[np.argsort(np.array([_uar_fluctuation(p) for p in patches]))[-1]]
            expected = to_input(Image.fromarray(best.astype(np.uint8)))
        assert (ours(img, image_id) - expected).abs().max().item() == 0.0, (img.size, img.mode)
