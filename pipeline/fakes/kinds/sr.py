"""`aigi fakes sr`: GAN super-resolution fakes upsample(downsample(real, S), S) (the model: `pipeline.fakes.sr`)."""

from __future__ import annotations

import argparse

from aigi.pipeline.fakes.registry import FakeKind, FakeTransform


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scale", type=int, default=None, help="factor S (default: the model's own scale; must match)")


def make(args: argparse.Namespace) -> FakeTransform:
    from aigi.pipeline.fakes.sr import SrTransform, load_sr

    model = load_sr(args.weights, name=args.name, device=args.device, dtype=args.dtype)
    return SrTransform(model, scale=args.scale)


KIND = FakeKind(
    name="sr",
    help="GAN super-resolution fakes: upsample(downsample(real, S), S)",
    weights="a .pth/.safetensors super-resolution model spandrel recognises (ESRGAN/RRDBNet, Real-ESRGAN Compact, "
    "SRGAN/SRResNet, ...).",
    add_arguments=add_arguments,
    make=make,
)
