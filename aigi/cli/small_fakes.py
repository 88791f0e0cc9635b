"""`python -m aigi.cli.small_fakes`: retrain the small fake makers shipped in `aigi.fakes` (fixed steps and seeds).

A developer's command, not an `aigi` sub-command: it rewrites the package's own weights unless `--out` names another
folder (settings and measured PSNR are recorded in `weights/training.json`).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Parse the options and retrain; returns the exit code."""
    from aigi.fakes.small import (
        DATA_SETTINGS,
        SR_SETTINGS,
        VAE_SETTINGS,
        WEIGHTS_DIR,
        DataSettings,
        TrainSettings,
        train_and_save,
    )

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="folder to write (default: the package's own)")
    p.add_argument("--vae-steps", type=int, default=VAE_SETTINGS.steps, help="training steps of the autoencoder")
    p.add_argument("--sr-steps", type=int, default=SR_SETTINGS.steps, help="training steps of the upsampler")
    p.add_argument("--models", default="vae,sr", help="which to train (default vae,sr; the others' files are kept)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    train_and_save(
        args.out,
        vae=TrainSettings(**{**asdict(VAE_SETTINGS), "steps": args.vae_steps}),
        sr=TrainSettings(**{**asdict(SR_SETTINGS), "steps": args.sr_steps}),
        data=DATA_SETTINGS,
        check=DataSettings(crops=240, size=224, seed=0),
        models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
