"""`aigi fakes vae|sr`: aligned fakes of a manifest's real images (VAE reconstructions, GAN super-resolution)."""

from __future__ import annotations

import argparse
from pathlib import Path

FAKES_HELP = """Aligned fakes: each real image of the manifest gets a fake of the same size and file stem, written under
DIR/<source>/1_fake/ (re-encoded reals under DIR/<source>/0_real/); the new rows (label 1, pair_id = the real's
image_id, the real's split and domain) are appended to the manifest. Re-running skips finished outputs."""


class _OutOnce(argparse.Action):
    """`-o/--out` given twice is remembered: `-o` used to name the new manifest, so `--out DIR -o M` is an old call."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if getattr(namespace, self.dest, None) is not None:
            namespace.out_twice = True
        setattr(namespace, self.dest, values)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", type=Path, required=True, help="manifest.parquet (or .csv) listing the real images")
    p.add_argument("--weights", type=Path, required=True, help="model weights (file or folder, see above)")
    p.add_argument("-o", "--out", type=Path, required=True, action=_OutOnce, metavar="DIR",
                   help="output folder for the images")  # fmt: skip
    p.add_argument("--name", default=None, help="model name in the source column (default: from --weights)")
    p.add_argument("--output-manifest", type=Path, default=None, help="new manifest (default: update --manifest)")
    p.add_argument("--root", type=Path, default=None, help="folder manifest paths are relative to (default: its own)")
    p.add_argument("--format", default="same", help="same (PNG stays PNG, JPEG keeps its quality) | png | jpeg:Q")
    p.add_argument("--resave-real", action="store_true", help="also write each real through the same encoder")
    p.add_argument("--splits", default=None, help="comma-separated splits to process (default: all), e.g. train,val")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass (same padded size)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"], help="auto: fp16 on GPU")


def register(subparsers) -> None:
    """Add `aigi fakes vae` and `aigi fakes sr`."""
    fakes = subparsers.add_parser("fakes", help="make aligned fakes (VAE reconstruction, GAN upsampling)",
                                  description=FAKES_HELP)  # fmt: skip
    sub = fakes.add_subparsers(dest="fakes_command", metavar="KIND", required=True)
    vae = sub.add_parser(
        "vae",
        help="VAE reconstructions: decode(encode(real))",
        description=FAKES_HELP + " --weights: a diffusers AutoencoderKL/AutoencoderTiny folder, a pipeline folder "
        "with vae/, a single .safetensors/.ckpt AutoencoderKL file, or a folder with NAME_encoder.pth + "
        "NAME_decoder.pth (TAESD family, incl. TAEF2).",
    )
    _common(vae)
    vae.add_argument("--latent", default="mean", choices=["mean", "sample"], help="latent mean or a seeded sample")
    vae.add_argument("--seed", type=int, default=0, help="seed of the latent sample (per image: seed + image_id)")
    vae.add_argument("--resize", default="none", help="none (native size) | N: bicubic NxN of real and fake alike")
    vae.add_argument("--tile-size", type=int, default=None, help="tile side in pixels for large images (0: no tiling)")
    vae.add_argument("--config", type=Path, default=None, help="diffusers config folder/json for a single file")
    vae.set_defaults(func=run_vae)
    sr = sub.add_parser(
        "sr",
        help="GAN super-resolution fakes: upsample(downsample(real, S), S)",
        description=FAKES_HELP + " --weights: a .pth/.safetensors super-resolution model spandrel recognises "
        "(ESRGAN/RRDBNet, Real-ESRGAN Compact, SRGAN/SRResNet, ...).",
    )
    _common(sr)
    sr.add_argument("--scale", type=int, default=None, help="factor S (default: the model's own scale; must match)")
    sr.set_defaults(func=run_sr)


def _parse_resize(text: str | None) -> int | None:
    if text is None or str(text).lower() == "none":
        return None
    if not str(text).isdigit() or int(text) < 8:
        raise ValueError(f"bad --resize {text!r}: none or a side length in pixels >= 8")
    return int(text)


def _config(args: argparse.Namespace, resize: int | None = None):
    from cache import read_manifest
    from pipeline.fakes.runner import FakesConfig

    if getattr(args, "out_twice", False) or args.out.suffix.lower() in {".parquet", ".csv"}:
        raise ValueError(
            f"-o/--out {args.out} names the images folder; give it once, and the new manifest as --output-manifest FILE"
        )
    read_manifest(args.manifest)  # a missing or broken manifest fails before a model is loaded
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    splits = tuple(s.strip() for s in args.splits.split(",") if s.strip()) if args.splits else None
    return FakesConfig(
        manifest=args.manifest,
        out_dir=args.out,
        output_manifest=args.output_manifest,
        root=args.root,
        fmt=args.format,
        resave_real=args.resave_real,
        resize=resize,
        splits=splits,
        batch_size=args.batch_size,
    )


def _finish(transform, cfg) -> int:
    from pipeline.fakes.runner import run_fakes

    result = run_fakes(transform, cfg)
    print(result.summary(transform.source))
    return 0


def run_vae(args: argparse.Namespace) -> int:
    """`aigi fakes vae`."""
    from pipeline.fakes.imageio import parse_format
    from pipeline.fakes.vae import VaeTransform, load_vae

    parse_format(args.format)  # fail before loading a model
    cfg = _config(args, _parse_resize(args.resize))
    vae = load_vae(args.weights, name=args.name, config=args.config, device=args.device, dtype=args.dtype,
                   tile_size=args.tile_size)  # fmt: skip
    if args.latent == "sample" and not vae.stochastic:
        print(f"note: {vae.kind} encoders are deterministic; --latent sample equals the mean")
    return _finish(VaeTransform(vae, latent=args.latent, seed=args.seed), cfg)


def run_sr(args: argparse.Namespace) -> int:
    """`aigi fakes sr`."""
    from pipeline.fakes.imageio import parse_format
    from pipeline.fakes.sr import SrTransform, load_sr

    parse_format(args.format)
    cfg = _config(args)
    model = load_sr(args.weights, name=args.name, device=args.device, dtype=args.dtype)
    return _finish(SrTransform(model, scale=args.scale), cfg)
