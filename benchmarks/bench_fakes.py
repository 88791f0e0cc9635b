"""CPU images/s of `aigi fakes vae` (SD-VAE architecture, random weights) against a bare decode(encode(x)).

Both paths run in the same process on the same images and the same loaded model; the pipeline path adds reading
the PNGs, padding, writing PNGs atomically, hashing and the manifest. Target: pipeline >= 0.9x bare.

    python benchmarks/bench_fakes.py [--sizes 256,512] [--images 2] [--threads N] [--json bench_fakes.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The SD-1.x VAE (diffusers AutoencoderKL config of stable-diffusion-v1-5/vae): 83.7 M parameters.
SD_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
}


def photos(size: int, count: int):
    """`count` real photos (scikit-image, else smooth noise) resized to size x size."""
    from PIL import Image

    try:
        from skimage import data

        arrays = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    except ImportError:
        rng = np.random.default_rng(0)
        arrays = [rng.integers(0, 255, (8, 8, 3), dtype=np.uint8) for _ in range(4)]
    return [Image.fromarray(arrays[i % len(arrays)]).resize((size, size), Image.BICUBIC) for i in range(count)]


def write_manifest_for(folder: Path, images) -> Path:
    import pandas as pd

    from aigi.cache import write_manifest
    from aigi.common.files import sha256_file

    rows = []
    for i, img in enumerate(images):
        path = folder / f"img{i:03d}.png"
        img.save(path)
        rows.append({"image_id": sha256_file(path), "path": path.name, "label": 0,
                     "source": "real", "width": img.width, "height": img.height, "format": "png"})  # fmt: skip
    return write_manifest(pd.DataFrame(rows), folder / "manifest.parquet")


def bare(model, images) -> float:
    """Seconds for decode(encode(x)).sample, latent mean, one image at a time, tensors prepared beforehand."""
    import torch

    from aigi.fakes.ops import to_tensor

    tensors = [to_tensor(img)[None] * 2 - 1 for img in images]
    start = time.perf_counter()
    with torch.inference_mode():
        for x in tensors:
            _ = model.decode(model.encode(x).latent_dist.mean).sample
    return time.perf_counter() - start


def pipeline(vae, manifest: Path, out: Path) -> float:
    """Seconds for the whole `fakes vae` run (read, pad, reconstruct, crop, write PNG, hash, manifest)."""
    from aigi.fakes.vae import VaeTransform
    from aigi.pipeline.fakes import FakesConfig, run_fakes

    cfg = FakesConfig(manifest=manifest, out_dir=out, output_manifest=out / "m.parquet", batch_size=1)
    start = time.perf_counter()
    result = run_fakes(VaeTransform(vae), cfg, progress=False)
    elapsed = time.perf_counter() - start
    assert result.written == len(read_rows(manifest)) and not result.errors, result.errors
    return elapsed


def read_rows(manifest: Path):
    from aigi.cache import read_manifest

    return read_manifest(manifest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,512", help="square image sides")
    parser.add_argument("--images", type=int, default=2, help="images per size (512^2 takes ~17 s each on 2 cores)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=1, help="alternate bare/fakes runs this often, keep the best")
    parser.add_argument(
        "--json",
        type=Path,
        default=Path(__file__).resolve().parent / "out" / "bench_fakes.json",
        help="where to write the results",
    )
    args = parser.parse_args(argv)

    import torch
    from diffusers import AutoencoderKL

    from aigi.fakes.vae import load_vae

    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        AutoencoderKL(**SD_VAE).save_pretrained(tmp / "sd-vae")
        vae = load_vae(tmp / "sd-vae", device="cpu", dtype="fp32")
        for size in (int(s) for s in args.sizes.split(",")):
            images = photos(size, args.images)
            folder = tmp / f"real{size}"
            folder.mkdir()
            manifest = write_manifest_for(folder, images)
            bare(vae.model, images[:1])  # warm-up at this size, outside both timings
            t_bare, t_pipe = float("inf"), float("inf")
            for rep in range(args.repeats):  # alternating, so both see the same load on a shared machine
                t_bare = min(t_bare, bare(vae.model, images))
                t_pipe = min(t_pipe, pipeline(vae, manifest, tmp / f"out{size}-{rep}"))
            results.append({"size": size, "images": len(images), "bare_img_s": len(images) / t_bare,
                            "pipeline_img_s": len(images) / t_pipe, "ratio": t_bare / t_pipe})  # fmt: skip
    print(f"aigi fakes vae, SD-VAE (random weights), CPU, {torch.get_num_threads()} threads, fp32, batch 1, "
          f"best of {args.repeats}")  # fmt: skip
    print(f"{'size':>6} {'images':>6} {'bare img/s':>11} {'fakes img/s':>12} {'ratio':>6}")
    for r in results:
        row = (r["size"], r["images"], r["bare_img_s"], r["pipeline_img_s"], r["ratio"])
        print("{:>6} {:>6} {:>11.3f} {:>12.3f} {:>6.2f}".format(*row))
    meta = {"benchmark": "fakes_vae", "threads": torch.get_num_threads(), "repeats": args.repeats}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({**meta, "rows": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
