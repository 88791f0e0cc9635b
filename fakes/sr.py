"""GAN super-resolution fakes (SEF): downscale a real image by S, upsample it by S with a spandrel-loaded model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from aigi.common.device import resolve_device
from aigi.common.extras import require
from aigi.common.hub import resolve_path
from aigi.fakes.ops import padded_size, read_checkpoint, stack_padded, to_image, to_tensor


@dataclass
class SrModel:
    """A spandrel `ImageModelDescriptor` for super-resolution, with its name, scale, device and dtype."""

    name: str
    descriptor: object
    scale: int
    device: torch.device
    dtype: torch.dtype

    @property
    def architecture(self) -> str:
        return str(self.descriptor.architecture.name)

    @torch.inference_mode()
    def upscale(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, h, w] in [0, 1] -> [B, 3, h*scale, w*scale] in [0, 1], fp32 on the CPU."""
        return self.descriptor(x.to(self.device, self.dtype)).float().clamp(0, 1).cpu()


def load_sr(weights: str | Path, *, name: str | None = None, device: str = "auto", dtype: str = "auto") -> SrModel:
    """Load a super-resolution model (ESRGAN/RRDBNet, Real-ESRGAN Compact, SRGAN/SRResNet, ... as spandrel knows).

    The file is read by `read_checkpoint` (safetensors or `torch.load(weights_only=True)`) and handed to spandrel
    as a state dict: spandrel's own `load_from_file` would try `torch.jit.load` (TorchScript: code) on `.pt` files.

    Args:
        weights: a `.pth`, `.pt`, `.ckpt` or `.safetensors` file (bare state dict or wrapped as `params`/`params_ema`),
            or a hub name `hf-hub:ORG/REPO:FILE[@REVISION]` (downloaded through huggingface_hub's cache).
        name: the model's name in `sr:<name>-x<S>` (default: the file stem).
        device: `auto`, `cpu`, `cuda`, ...
        dtype: `auto` (fp16 on CUDA when the architecture supports it, else fp32), `fp32`, `fp16`, `bf16`.
    """
    spandrel = require("spandrel", needed_for="a super-resolution model")
    weights, _ = resolve_path(weights)  # a hf-hub: name -> its file in huggingface_hub's cache
    state = read_checkpoint(weights)
    if not isinstance(state, dict):
        kind = type(state).__name__
        raise ValueError(f"--weights {weights} holds a {kind}, not the state dict of a super-resolution model")
    try:
        desc = spandrel.ModelLoader().load_from_state_dict(state)
    except spandrel.UnsupportedModelError:
        raise ValueError(f"--weights {weights}: spandrel recognises no architecture in this state dict") from None
    if not isinstance(desc, spandrel.ImageModelDescriptor) or desc.purpose != "SR" or desc.scale < 2:
        raise ValueError(f"--weights {weights}: a {desc.architecture.name} {desc.purpose} model, not super-resolution")
    dev = resolve_device(device)
    dt = _sr_dtype(desc, dtype, dev)
    desc.to(dev).eval()
    if dt != torch.float32:
        desc.to(dt)
    return SrModel(name or weights.stem, desc, int(desc.scale), dev, dt)


def _sr_dtype(desc, dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" and desc.supports_half else torch.float32
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if dtype not in table:
        raise ValueError(f"bad --dtype {dtype!r}: choose auto, fp32, fp16 or bf16")
    supported = {"fp16": desc.supports_half, "bf16": desc.supports_bfloat16}.get(dtype, True)
    if not supported:
        raise ValueError(f"--dtype {dtype}: spandrel says {desc.architecture.name} does not support it; use fp32")
    return table[dtype]


def downscale(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Antialiased bicubic downscaling of [B, 3, H, W] (H, W multiples of `factor`) by `factor`, clamped to [0, 1]."""
    h, w = x.shape[-2:]
    out = F.interpolate(x, size=(h // factor, w // factor), mode="bicubic", antialias=True, align_corners=False)
    return out.clamp(0, 1)


class SrTransform:
    """Image -> same-size GAN-upsampled copy: reflect-pad to a multiple of S, bicubic down by S, model up by S, crop.

    Padding first makes the down/up round trip exact in geometry, so the crop aligns pixel for pixel with the real.
    """

    def __init__(self, model: SrModel, *, scale: int | None = None) -> None:
        scale = model.scale if scale is None else int(scale)
        if scale != model.scale:
            raise ValueError(
                f"--scale {scale} differs from the model's own scale x{model.scale} ({model.architecture}): "
                f"a x{model.scale} model cannot undo a x{scale} downscale; pass --scale {model.scale} or other weights"
            )
        self.model, self.scale = model, scale
        self.source = f"sr:{model.name}-x{scale}"

    def batch_key(self, width: int, height: int) -> tuple[int, int]:
        """Images with equal keys (their padded size) can share a batch."""
        return padded_size(height, width, self.scale)

    def __call__(self, images: list[Image.Image], image_ids: list[str]) -> list[Image.Image]:
        """Degrade and restore `images` (all with the same batch key); `image_ids` are unused (deterministic)."""
        tensors = [to_tensor(img) for img in images]
        height, width = self.batch_key(images[0].width, images[0].height)
        out = self.model.upscale(downscale(stack_padded(tensors, height, width), self.scale))
        return [to_image(y[:, : x.shape[1], : x.shape[2]]) for x, y in zip(tensors, out)]
