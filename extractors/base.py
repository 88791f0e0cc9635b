"""The extractor interface: the spec the cache fingerprints, device/dtype handling and the batched call."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

SPEC_VERSION = 1
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_LAYER_FEATURE = re.compile(r"^l(\d+)\.(cls|mean|tokens)$")


@dataclass(frozen=True)
class ExtractorSpec:
    """Everything that changes a feature; `dataclasses.asdict(spec)` is what a cache fingerprints.

    Attributes:
        name: registry name, e.g. "clip-l14-336", "aim-v1-3b", "timm:vit_tiny_patch16_224".
        arch: the architecture actually built (timm model name or family + size).
        arch_params: sorted (key, value) pairs of architecture overrides (empty for the published sizes).
        weights_sha256: sha256 of the weights file(s) loaded, "+"-joined; "random-init" when none was given.
        input_size: side of the square network input in pixels.
        mean: per-channel normalisation mean (RGB, 0-1 scale).
        std: per-channel normalisation std.
        interpolation: resampling filter used by the preprocessing when it resizes.
        preprocess: policy name: "resize", "center_crop" or "rich_patch".
        preprocess_params: sorted (key, value) pairs of the policy's parameters.
        features: requested feature names, in order.
        dims: per-row shape of each feature, aligned with `features`.
        dtype: compute dtype: "fp32", "bf16" or "fp16".
        spec_version: version of this spec's schema.
    """

    name: str
    arch: str
    arch_params: tuple[tuple[str, Any], ...]
    weights_sha256: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    preprocess: str
    preprocess_params: tuple[tuple[str, Any], ...]
    features: tuple[str, ...]
    dims: tuple[tuple[int, ...], ...]
    dtype: str
    spec_version: int = SPEC_VERSION


def resolve_dtype(dtype: str, device: torch.device) -> str:
    """ "auto" -> fp32 on the CPU, bf16 on a GPU that supports it, else fp16; validates explicit choices."""
    if dtype == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of auto, {', '.join(_DTYPES)}")
    if dtype != "fp32" and device.type != "cuda":
        raise ValueError(f"dtype {dtype} (autocast) is only used on a GPU; on {device.type} use fp32")
    return dtype


def parse_layer_feature(name: str) -> tuple[int, str] | None:
    """("l23.cls") -> (23, "cls"), ("l20.tokens") -> (20, "tokens"); None for names that are not per-block features."""
    match = _LAYER_FEATURE.match(name)
    return (int(match.group(1)), match.group(2)) if match else None


class Extractor:
    """A frozen backbone: `extractor(batch) -> {feature name: float32 CPU tensor [B, ...]}`.

    Attributes:
        spec: the ExtractorSpec of this build.
        transform: picklable `(PIL image, image_id) -> Tensor[3, H, W]` preprocessing.
        model: the underlying torch module (eval mode, on `device`).
        device: where the forward runs.
    """

    def __init__(
        self,
        *,
        spec: ExtractorSpec,
        model: nn.Module,
        transform: Callable[..., torch.Tensor],
        forward: Callable[[torch.Tensor], dict[str, torch.Tensor]],
        device: torch.device,
    ) -> None:
        self.spec = spec
        self.model = model.eval().requires_grad_(False).to(device)
        self.transform = transform
        self.device = device
        self.channels_last = False
        self._forward = forward

    @property
    def feature_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-row shape of each requested feature, e.g. {"l23.cls": (1024,)}."""
        return dict(zip(self.spec.features, self.spec.dims))

    def tune(self, *, channels_last: bool = False, compile: bool | str = False) -> None:
        """Speed knobs that keep the features: `channels_last` memory layout (the convolutions of a GPU prefer it) and
        `torch.compile` of the forward (True: inductor; a string names another backend, e.g. "eager"), compiled on
        the first batch, and once more for the first batch of another size (the batch size then stays dynamic)."""
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
            self.channels_last = True
        if compile:
            self._forward = torch.compile(self._forward, backend="inductor" if compile is True else compile)

    def run(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features of a normalised batch already on the device, float32, left there (nothing waits for them)."""
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if self.spec.dtype == "fp32":
                out = self._forward(batch)
            else:
                with torch.autocast(device_type=self.device.type, dtype=_DTYPES[self.spec.dtype]):
                    out = self._forward(batch)
            return {name: out[name].float() for name in self.spec.features}

    def __call__(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features of a preprocessed batch [B, 3, H, W], float32 on the CPU."""
        return {name: value.cpu() for name, value in self.run(batch.to(self.device, non_blocking=True)).items()}

    def __repr__(self) -> str:
        return f"Extractor({self.spec.name}, features={list(self.spec.features)}, device={self.device})"
