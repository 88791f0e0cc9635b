"""Preprocessing policies (resize, center_crop, rich_patch) as picklable `(image, image_id) -> Tensor` callables.

- `resize`: the whole image squashed to size x size (OmniAID: 336, CLIP mean/std); aspect ratio is not kept. The
  filter defaults to bilinear, torchvision's `Resize` default and so OmniAID's (`interpolation=bicubic|nearest`
  picks another).
- `center_crop`: the central size x size pixels without resizing (GAPL: 224, ImageNet mean/std). Images smaller
  than the crop are zero-padded around the centre (`small="pad"`, what torchvision's CenterCrop does, so the
  features match GAPL's) or, with `small="resize"`, upscaled so the short side equals the crop first.
- `rich_patch`: UAR's texture-rich crop: of `crops` random size x size windows keep the one whose pixel fluctuation
  (sum of absolute differences to the right, down and both diagonal neighbours, over RGB) is largest; images whose
  width or height is under `size` are squashed to size x size (bilinear) instead. The windows are drawn from a
  generator seeded by the image_id, so a feature is reproducible; ties go to the first window drawn.

Each policy is `pixels` (the geometry on a PIL image, uint8 [3, size, size]) then `normalize` (x / 255, minus mean,
over std, on any device). `pixels_from_tensor` is the same geometry on uint8 pixels already decoded on a device
(JPEGs decoded by nvjpeg), where it matches: `center_crop` exactly (same decoded pixels, same crop), `resize` with the
bilinear filter to one level per pixel (torchvision's antialiased filter in float32, rounded; Pillow computes in fixed
point). Bicubic resizes (Pillow rounds between its horizontal and vertical passes: up to 12 levels apart), nearest
ones (torch and Pillow pick other source pixels), the upscale of `center_crop:small=resize` and `rich_patch` decode on
the CPU.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

NORMS = {"imagenet": (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD), "clip": (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)}
POLICY_PARAMS: dict[str, dict[str, Any]] = {
    "resize": {"interpolation": "bilinear"},
    "center_crop": {"small": "pad"},
    "rich_patch": {"crops": 192},
}
_COMMON = ("size", "norm")
_CHOICES = {"interpolation": ("bicubic", "bilinear", "nearest"), "small": ("pad", "resize"), "norm": tuple(NORMS)}


def parse_policy(text: str) -> tuple[str, dict[str, Any]]:
    """ "rich_patch:crops=64,size=224" -> ("rich_patch", {"crops": 64, "size": 224}), validated."""
    name, _, rest = text.partition(":")
    if name not in POLICY_PARAMS:
        raise ValueError(f"unknown preprocessing policy {name!r}; choose one of {', '.join(POLICY_PARAMS)}")
    params: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        allowed = (*_COMMON, *POLICY_PARAMS[name])
        if not eq or key not in allowed:
            raise ValueError(f"bad parameter {item!r} for policy {name}; use key=value with key in {allowed}")
        if key in ("size", "crops"):
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"{name}: {key} must be a positive integer, got {value!r}")
            params[key] = int(value)
        elif value not in _CHOICES[key]:
            raise ValueError(f"{name}: {key} must be one of {_CHOICES[key]}, got {value!r}")
        else:
            params[key] = value
    return name, params


def rgb(img: Image.Image) -> Image.Image:
    """The image in RGB mode (an RGB image itself, not a copy)."""
    return img if img.mode == "RGB" else img.convert("RGB")


def to_pixels(img: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a uint8 tensor [3, H, W] (what `TF.to_tensor` makes before scaling to 0-1)."""
    return torch.from_numpy(np.array(img, np.uint8, copy=True)).permute(2, 0, 1).contiguous()


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """A float tensor of pixel values rounded and clamped to uint8 (what a uint8 resize rounds to)."""
    return x.round_().clamp_(0, 255).to(torch.uint8)


class _Policy:
    """What every policy shares: the split of its transform into pixels (geometry, uint8) and normalisation.

    `policy(img, image_id)` == `policy.normalize(policy.pixels(img, image_id))`, bit for bit what
    `TF.normalize(TF.to_tensor(...))` gives: the decoding workers send uint8 pixels (4x fewer bytes) and the
    normalisation runs once per batch where the batch is, on the extraction device.
    """

    size: int
    mean: tuple
    std: tuple

    def tensor_ok(self, width: int, height: int) -> bool:
        """Whether `pixels_from_tensor` gives this image's `pixels` (to one level per pixel; see the module doc)."""
        return False

    def pixels_from_tensor(self, pixels: torch.Tensor, image_id: str = "") -> torch.Tensor:
        """The policy's pixels from decoded uint8 pixels [3, H, W] on any device (only where `tensor_ok`)."""
        raise NotImplementedError(f"{type(self).__name__} measures its crop on the CPU: decode there")

    def pixels(self, img: Image.Image, image_id: str = "") -> torch.Tensor:  # pragma: no cover - abstract
        """The policy's uint8 [3, size, size] pixels of an RGB image."""
        raise NotImplementedError

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels [..., 3, H, W] on any device -> float32 (x / 255 - mean) / std on that device."""
        mean = torch.as_tensor(self.mean, dtype=torch.float32, device=pixels.device).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=torch.float32, device=pixels.device).view(-1, 1, 1)
        return pixels.to(torch.float32, copy=True).div_(255).sub_(mean).div_(std)  # in place: no temporary batch

    def __call__(self, img: Image.Image, image_id: str = "") -> torch.Tensor:
        return self.normalize(self.pixels(img, image_id))


class Resize(_Policy):
    """Squash the whole image to size x size, then normalise."""

    def __init__(self, *, size: int, mean: tuple, std: tuple, interpolation: str = "bilinear") -> None:
        self.size, self.mean, self.std, self.interpolation = size, tuple(mean), tuple(std), interpolation

    def pixels(self, img: Image.Image, image_id: str = "") -> torch.Tensor:
        """The image resized with Pillow's antialiased filter, as uint8 [3, size, size]."""
        mode = InterpolationMode(self.interpolation)
        return to_pixels(TF.resize(rgb(img), [self.size, self.size], interpolation=mode, antialias=True))

    def tensor_ok(self, width: int, height: int) -> bool:
        """The bilinear resize matches Pillow's (to one level); bicubic and nearest do not: they stay on the CPU."""
        return self.interpolation == "bilinear"

    def pixels_from_tensor(self, pixels: torch.Tensor, image_id: str = "") -> torch.Tensor:
        """The bilinear resize of decoded uint8 pixels [3, H, W] (any device) in float32, rounded back to uint8."""
        mode = InterpolationMode.BILINEAR
        return _to_uint8(TF.resize(pixels.float(), [self.size, self.size], interpolation=mode, antialias=True))


class CenterCrop(_Policy):
    """The central size x size pixels without resizing; smaller images are padded or upscaled (see module doc)."""

    def __init__(self, *, size: int, mean: tuple, std: tuple, small: str = "pad") -> None:
        self.size, self.mean, self.std, self.small = size, tuple(mean), tuple(std), small

    def pixels(self, img: Image.Image, image_id: str = "") -> torch.Tensor:
        """The central crop (padded with black, or upscaled first) as uint8 [3, size, size]."""
        img = rgb(img)
        if self.small == "resize" and min(img.size) < self.size:
            img = TF.resize(img, self.size, interpolation=InterpolationMode.BICUBIC, antialias=True)
        return to_pixels(TF.center_crop(img, [self.size, self.size]))

    def tensor_ok(self, width: int, height: int) -> bool:
        """A crop (or black padding) is exact; the bicubic upscale of a small image stays on the CPU."""
        return self.small == "pad" or min(width, height) >= self.size

    def pixels_from_tensor(self, pixels: torch.Tensor, image_id: str = "") -> torch.Tensor:
        """The same crop of decoded uint8 pixels [3, H, W] (any device), padded with black like Pillow's."""
        return TF.center_crop(pixels, [self.size, self.size]).contiguous()


def _window_sums(diff: np.ndarray, ys: np.ndarray, xs: np.ndarray, h: int, w: int) -> np.ndarray:
    """Sum of `diff` over the h x w windows whose top-left corners are (ys, xs).

    One cumulative sum down the columns gives each window's row band as a difference of two rows; a second,
    small cumulative sum along those bands gives the window sums: O(H*W + crops*W), not O(crops*h*w).
    """
    dtype = np.int32 if 1530 * diff.size < 2**31 else np.int64  # the largest possible sum must fit
    columns = np.zeros((diff.shape[0] + 1, diff.shape[1]), dtype=dtype)
    for r in range(diff.shape[0]):  # row by row: ~8x faster than np.cumsum(axis=0) on large images
        np.add(columns[r], diff[r], out=columns[r + 1])
    bands = np.zeros((len(ys), diff.shape[1] + 1), dtype=np.int64)
    np.cumsum(columns[ys + h] - columns[ys], axis=1, out=bands[:, 1:])
    rows = np.arange(len(ys))
    return bands[rows, xs + w] - bands[rows, xs]


def _abs_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| summed over the 3 channel planes of [3, H, W] int16 arrays."""
    d = a - b
    np.abs(d, out=d)
    return d[0] + d[1] + d[2]


def _crop_fluctuation(crop: np.ndarray) -> int:
    px = np.ascontiguousarray(crop.transpose(2, 0, 1), dtype=np.int16)
    total = _abs_diff(px[:, :, 1:], px[:, :, :-1]).sum(dtype=np.int64)
    total += _abs_diff(px[:, 1:, :], px[:, :-1, :]).sum(dtype=np.int64)
    total += _abs_diff(px[:, 1:, 1:], px[:, :-1, :-1]).sum(dtype=np.int64)
    return int(total + _abs_diff(px[:, 1:, :-1], px[:, :-1, 1:]).sum(dtype=np.int64))


def crop_fluctuations(pixels: np.ndarray, ys: np.ndarray, xs: np.ndarray, size: int) -> np.ndarray:
    """UAR's pixel fluctuation of each size x size crop at (ys, xs) of an [H, W, 3] uint8 array.

    The fluctuation of a crop sums |a - b| over RGB for every pair of neighbours inside it: right, down,
    down-right and down-left diagonals. Cost: a few passes over the image whatever the number of crops; images over
    crops * size^2 / 2 pixels are measured crop by crop instead, which is then cheaper.
    """
    if pixels.shape[0] * pixels.shape[1] > len(ys) * size * size // 2:  # huge image: crop by crop is cheaper
        return np.array([_crop_fluctuation(pixels[y : y + size, x : x + size]) for y, x in zip(ys, xs)], np.int64)
    px = np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.int16)
    right = _abs_diff(px[:, :, 1:], px[:, :, :-1])
    down = _abs_diff(px[:, 1:, :], px[:, :-1, :])
    diagonals = _abs_diff(px[:, 1:, 1:], px[:, :-1, :-1]) + _abs_diff(px[:, 1:, :-1], px[:, :-1, 1:])
    s = size
    return (
        _window_sums(right, ys, xs, s, s - 1)
        + _window_sums(down, ys, xs, s - 1, s)
        + _window_sums(diagonals, ys, xs, s - 1, s - 1)
    )


def seed_from_id(image_id: str) -> int:
    """A 64-bit seed derived from an image_id string (stable across processes and machines)."""
    return int.from_bytes(hashlib.sha256(image_id.encode("utf-8")).digest()[:8], "little")


class RichPatch(_Policy):
    """UAR's texture-rich crop (see module doc), seeded by image_id; it measures the pixels on the CPU."""

    def __init__(self, *, size: int, mean: tuple, std: tuple, crops: int = 192) -> None:
        self.size, self.mean, self.std, self.crops = size, tuple(mean), tuple(std), crops

    def crop_box(self, img: Image.Image, image_id: str) -> tuple[int, int] | None:
        """Top-left (y, x) of the chosen crop, or None when the image is smaller than the crop."""
        w, h = img.size
        if w < self.size or h < self.size:
            return None
        rng = np.random.default_rng(seed_from_id(image_id))
        ys = rng.integers(0, h - self.size + 1, self.crops)
        xs = rng.integers(0, w - self.size + 1, self.crops)
        best = int(np.argmax(crop_fluctuations(np.asarray(rgb(img)), ys, xs, self.size)))
        return int(ys[best]), int(xs[best])

    def pixels(self, img: Image.Image, image_id: str = "") -> torch.Tensor:
        """The chosen crop (or the squashed small image) as uint8 [3, size, size]."""
        img = rgb(img)
        box = self.crop_box(img, image_id)
        if box is None:
            img = TF.resize(img, [self.size, self.size], interpolation=InterpolationMode.BILINEAR, antialias=True)
        else:
            img = img.crop((box[1], box[0], box[1] + self.size, box[0] + self.size))
        return to_pixels(img)


def make_transform(policy: str, params: dict[str, Any]) -> Resize | CenterCrop | RichPatch:
    """The transform object of a policy; `params` holds size, mean, std and the policy's own parameters."""
    cls = {"resize": Resize, "center_crop": CenterCrop, "rich_patch": RichPatch}[policy]
    return cls(**params)


@dataclass(frozen=True)
class Policy:
    """A resolved preprocessing policy: its name, transform kwargs, spec params and resampling filter."""

    name: str
    kwargs: dict[str, Any]
    params: dict[str, Any]
    interpolation: str

    def transform(self) -> Resize | CenterCrop | RichPatch:
        """A fresh picklable transform object."""
        return make_transform(self.name, self.kwargs)


def _interpolation(name: str, params: dict[str, Any]) -> str:
    if name == "resize":
        return params["interpolation"]
    if name == "center_crop":
        return "bicubic" if params["small"] == "resize" else "none"
    return "bilinear"


def resolve_policy(text: str | None, *, default: str, size: int, norm: str | tuple[tuple, tuple]) -> Policy:
    """The policy from user text or the backbone's default.

    Args:
        text: user choice ("resize", "center_crop:small=resize", ...) or None for `default`.
        default: the backbone's default policy text.
        size: the network input size (a `size=` parameter must equal it).
        norm: the backbone's default normalisation: a name in NORMS or explicit (mean, std).

    Returns:
        The resolved Policy; `params` (what the spec records) excludes size, mean and std.
    """
    name, params = parse_policy(text or default)
    if params.pop("size", size) != size:
        raise ValueError(f"preprocessing size must equal the network input size {size} for this backbone")
    norm_name = params.pop("norm", None)
    mean, std = NORMS[norm_name] if norm_name else (NORMS[norm] if isinstance(norm, str) else norm)
    params = {**POLICY_PARAMS[name], **params}
    kwargs = {"size": size, "mean": tuple(float(m) for m in mean), "std": tuple(float(s) for s in std), **params}
    return Policy(name, kwargs, params, _interpolation(name, params))


def policy_fields(policy: Policy) -> dict[str, Any]:
    """The ExtractorSpec fields a policy fixes: input_size, mean, std, interpolation, preprocess(_params)."""
    return {
        "input_size": policy.kwargs["size"],
        "mean": policy.kwargs["mean"],
        "std": policy.kwargs["std"],
        "interpolation": policy.interpolation,
        "preprocess": policy.name,
        "preprocess_params": tuple(sorted(policy.params.items())),
    }
