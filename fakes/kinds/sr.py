"""`aigi fakes sr`: GAN super-resolution fakes upsample(downsample(real, S), S) (the model: `aigi.fakes.sr`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from aigi.fakes.registry import FakeKind, FakeTransform, ModelOptions, register_kind


@dataclass(frozen=True)
class SrOptions(ModelOptions):
    """How to load the upsampler and by how much to scale."""

    scale: int | None = field(default=None, metadata={"help": "factor S (default: the model's own scale; must match)"})


def make(options: SrOptions) -> FakeTransform:
    """Load the super-resolution model the options name and wrap it as a transform."""
    from aigi.fakes.sr import SrTransform, load_sr

    model = load_sr(options.weights, name=options.name, device=options.device, dtype=options.dtype)
    return SrTransform(model, scale=options.scale)


KIND = register_kind(
    FakeKind(
        name="sr",
        help="GAN super-resolution fakes: upsample(downsample(real, S), S)",
        weights="a .pth/.safetensors super-resolution model spandrel recognises (ESRGAN/RRDBNet, Real-ESRGAN "
        "Compact, SRGAN/SRResNet, ...), or a hub name hf-hub:ORG/REPO:FILE[@REVISION].",
        options=SrOptions,
        make=make,
    )
)
