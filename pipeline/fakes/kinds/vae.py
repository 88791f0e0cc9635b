"""`aigi fakes vae`: VAE reconstructions decode(encode(real)) (model loading and batching: `pipeline.fakes.vae`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from aigi.common.grammar import parse_side
from aigi.pipeline.fakes.registry import FakeKind, FakeTransform


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--latent", default="mean", choices=["mean", "sample"], help="latent mean or a seeded sample")
    p.add_argument("--seed", type=int, default=0, help="seed of the latent sample (per image: seed + image_id)")
    p.add_argument("--resize", default="none", help="none (native size) | N: bicubic NxN of real and fake alike")
    p.add_argument("--tile-size", type=int, default=None, help="tile side in pixels for large images (0: no tiling)")
    p.add_argument("--config", type=Path, default=None, help="diffusers config folder/json for a single file")


def make(args: argparse.Namespace) -> FakeTransform:
    from aigi.pipeline.fakes.vae import VaeTransform, load_vae

    vae = load_vae(args.weights, name=args.name, config=args.config, device=args.device, dtype=args.dtype,
                   tile_size=args.tile_size)  # fmt: skip
    if args.latent == "sample" and not vae.stochastic:
        print(f"note: {vae.kind} encoders are deterministic; --latent sample equals the mean")
    return VaeTransform(vae, latent=args.latent, seed=args.seed)


KIND = FakeKind(
    name="vae",
    help="VAE reconstructions: decode(encode(real))",
    weights="a diffusers AutoencoderKL/AutoencoderTiny folder, a pipeline folder with vae/, a single "
    ".safetensors/.ckpt AutoencoderKL file, or a folder with NAME_encoder.pth + NAME_decoder.pth (TAESD family, "
    "incl. TAEF2).",
    add_arguments=add_arguments,
    make=make,
    resize=lambda args: parse_side(args.resize, option="--resize"),
)
