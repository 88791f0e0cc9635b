"""`aigi fakes vae`: VAE reconstructions decode(encode(real)) (model loading and batching: `aigi.fakes.vae`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from aigi.common.grammar import parse_side
from aigi.fakes.registry import FakeKind, FakeTransform, ModelOptions, register_kind

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VaeOptions(ModelOptions):
    """How to load the VAE and reconstruct the reals."""

    latent: Literal["mean", "sample"] = field(default="mean", metadata={"help": "latent mean or a seeded sample"})
    seed: int = field(default=0, metadata={"help": "seed of the latent sample (per image: seed + image_id)"})
    resize: int | None = field(
        default=None,
        metadata={"help": "none (native size) | N: bicubic NxN of real and fake alike", "parse": parse_side},
    )
    tile_size: int | None = field(
        default=None, metadata={"help": "tile side in pixels for large images (0: no tiling)"}
    )
    config: Path | None = field(default=None, metadata={"help": "diffusers config folder/json for a single file"})


def make(options: VaeOptions) -> FakeTransform:
    """Load the VAE the options name and wrap it as a transform."""
    from aigi.fakes.vae import VaeTransform, load_vae

    vae = load_vae(options.weights, name=options.name, config=options.config, device=options.device,
                   dtype=options.dtype, tile_size=options.tile_size)  # fmt: skip
    if options.latent == "sample" and not vae.stochastic:
        log.info(f"note: {vae.kind} encoders are deterministic; --latent sample equals the mean")
    return VaeTransform(vae, latent=options.latent, seed=options.seed)


KIND = register_kind(
    FakeKind(
        name="vae",
        help="VAE reconstructions: decode(encode(real))",
        weights="a diffusers AutoencoderKL/AutoencoderTiny folder, a pipeline folder with vae/, a single "
        ".safetensors/.ckpt AutoencoderKL file, or a folder with NAME_encoder.pth + NAME_decoder.pth (TAESD family, "
        "incl. TAEF2); or a hub name: hf-hub:ORG/REPO (a diffusers VAE), hf-hub:ORG/REPO:vae, hf-hub:ORG/REPO:FILE.",
        options=VaeOptions,
        make=make,
        resize=lambda options: options.resize,
    )
)
