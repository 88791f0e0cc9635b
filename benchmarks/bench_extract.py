"""Benchmark `aigi extract` end to end against a bare forward of the same model over the same preprocessed batches.

Usage: python benchmarks/bench_extract.py [--images 512] [--backbone timm:vit_tiny_patch16_224] [--num-workers 1]
Prints a table and writes benchmarks/out/bench_extract.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

OUT = Path(__file__).resolve().parent / "out"


def make_images(folder: Path, n: int, size: int = 256) -> Path:
    """`n` smooth random JPEGs (like photos, unlike white noise) and their manifest."""
    from aigi import cache
    from aigi.common.files import sha256_file

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        low = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
        img = Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC)
        path = folder / f"{i:05d}.jpg"
        img.save(path, quality=90)
        rows.append(
            {
                "image_id": sha256_file(path),
                "path": path.name,
                "label": i % 2,
                "source": "gen" if i % 2 else "real",
                "split": "train",
            }
        )
    return cache.write_manifest(pd.DataFrame(rows), folder / "manifest.parquet")


def random_weights(backbone: str, path: Path) -> Path:
    """Save a random-weight timm model's state dict, loaded back by `aigi extract --weights` like real weights."""
    import timm
    import torch

    torch.save(timm.create_model(backbone.removeprefix("timm:"), pretrained=False).state_dict(), path)
    return path


def extract_argv(manifest: Path, backbone: str, weights: Path, cache_dir: Path, *extra: str) -> list[str]:
    """`aigi extract` arguments for the benchmarks."""
    return ["extract", "--manifest", str(manifest), "--backbone", backbone, "--weights", str(weights),
            "--cache", str(cache_dir), *extra]  # fmt: skip


def bare_forward(backbone: str, weights: Path, manifest: Path, batch_size: int) -> tuple[float, int]:
    """Images/s of `model(x)` alone over batches preprocessed beforehand (nothing else timed)."""
    import torch

    from aigi import extractors
    from aigi.extractors.images import load_image

    ex = extractors.build(backbone, weights=weights)
    rows = pd.read_parquet(manifest)
    tensors = [ex.transform(load_image(manifest.parent / p), i) for p, i in zip(rows["path"], rows["image_id"])]
    batches = [torch.stack(tensors[i : i + batch_size]) for i in range(0, len(tensors), batch_size)]
    with torch.inference_mode():
        ex.model(batches[0])  # warm-up
        start = time.perf_counter()
        for b in batches:
            ex.model(b)
        seconds = time.perf_counter() - start
    return len(tensors) / seconds, len(tensors)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--backbone", default="timm:vit_tiny_patch16_224")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--num-workers", type=int, default=1)
    args = ap.parse_args()

    import torch

    from aigi.cli import main as aigi

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifest = make_images(tmp / "img", args.images)
        weights = random_weights(args.backbone, tmp / "w.pth")
        bare, n = bare_forward(args.backbone, weights, manifest, args.batch_size)

        cmd = extract_argv(
            manifest,
            args.backbone,
            weights,
            tmp / "cache",
            "--batch-size",
            str(args.batch_size),
            "--shard-size",
            "256",
            "--num-workers",
            str(args.num_workers),
        )
        start = time.perf_counter()
        assert aigi(cmd) == 0
        e2e = n / (time.perf_counter() - start)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "images": n,
        "backbone": args.backbone,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "torch_threads": torch.get_num_threads(),
        "bare_img_s": round(bare, 2),
        "extract_img_s": round(e2e, 2),
        "ratio": round(e2e / bare, 3),
        "peak_rss_mb": round(rss_mb, 1),
    }
    print("| images | bare model(x) img/s | aigi extract img/s (end to end) | ratio | peak RSS MB |")
    print("|---|---|---|---|---|")
    print(f"| {n} | {bare:.1f} | {e2e:.1f} | {e2e / bare:.2f} | {rss_mb:.0f} |")
    OUT.mkdir(exist_ok=True)
    (OUT / "bench_extract.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
