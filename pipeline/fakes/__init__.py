"""`aigi fakes KIND`: aligned fakes of a manifest's real images, one kind per file in `pipeline/fakes/kinds/`."""

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


def _common(p: argparse.ArgumentParser, *, weights: bool) -> None:
    p.add_argument("--manifest", type=Path, required=True, help="manifest.parquet (or .csv) listing the real images")
    if weights:
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
    """Add `aigi fakes KIND` for every kind of the registry (`pipeline.fakes.registry`: vae, sr, ...)."""
    from aigi.pipeline.fakes.registry import fake_kinds

    kinds = fake_kinds()
    fakes = subparsers.add_parser("fakes", help=f"make aligned fakes ({', '.join(kinds)})", description=FAKES_HELP)
    sub = fakes.add_subparsers(dest="fakes_command", metavar="KIND", required=True)
    for kind in kinds.values():
        weights = f" --weights: {kind.weights}" if kind.weights else ""
        p = sub.add_parser(kind.name, help=kind.help, description=FAKES_HELP + weights)
        _common(p, weights=bool(kind.weights))
        kind.add_arguments(p)
        p.set_defaults(func=run_kind)


def _config(args: argparse.Namespace, resize: int | None = None):
    from aigi.cache import read_manifest
    from aigi.pipeline.fakes.runner import FakesConfig

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
    from aigi.pipeline.fakes.runner import run_fakes

    result = run_fakes(transform, cfg)
    print(result.summary(transform.source))
    return 0


def run_kind(args: argparse.Namespace) -> int:
    """`aigi fakes KIND`: check the options and the manifest, load the kind's model, make the fakes."""
    from aigi.common.grammar import parse_format
    from aigi.pipeline.fakes.registry import fake_kind

    kind = fake_kind(args.fakes_command)
    parse_format(args.format)  # fail before loading a model
    cfg = _config(args, kind.resize(args))
    return _finish(kind.make(args), cfg)
