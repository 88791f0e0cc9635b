"""Benchmark `aigi extract` when decoding is the bottleneck: its images/s against a bare decode+resize Pool.

A model that costs almost nothing (`timm:test_vit`, random weights) over JPEG photos (made from the photos the
installed packages ship, resized to 1024x768, quality 90) leaves decoding as the work: `aigi extract` with its
default settings is measured against a bare `multiprocessing.Pool` with one process per core that decodes each file
with Pillow and resizes it to the model's input side (bilinear). The two alternate `--reps` times; each `aigi
extract` is a fresh command (`python -m aigi extract`, a new cache each time) and both its own rate and the whole
command's wall time are kept. `--extra-args` adds arguments to every `aigi extract` (e.g. "--num-workers 0").

Usage: python benchmarks/bench_extract.py [--images 400] [--reps 3] [--backbone timm:test_vit] [--extra-args ""]
Prints a table and writes benchmarks/out/bench_extract.json. Runs against whichever aigi the interpreter imports.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

OUT = Path(__file__).resolve().parent / "out"
RATE = re.compile(r"([0-9.]+) img/s")
LOOP_RATE = re.compile(r"\(([0-9.]+) img/s after ([0-9.]+) s of start-up\)")


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
        rows.append({"image_id": sha256_file(path), "path": path.name, "label": i % 2,
                     "source": "gen" if i % 2 else "real", "split": "train"})  # fmt: skip
    return cache.write_manifest(pd.DataFrame(rows), folder / "manifest.parquet")


def _photo_file(args: tuple[Path, int, tuple[int, int], int]) -> str:
    """Write photo `i`: a random crop (at least half of each side) of a shipped photo, maybe mirrored, resized."""
    from aigi.fakes.photos import collect_photos

    folder, i, (width, height), quality = args
    photos = collect_photos()[0]
    rng = np.random.default_rng(i)
    pixels = photos[i % len(photos)].pixels
    h, w = pixels.shape[:2]
    ch, cw = int(rng.integers(h // 2, h + 1)), int(rng.integers(w // 2, w + 1))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    img = Image.fromarray(pixels).crop((x, y, x + cw, y + ch)).resize((width, height), Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    path = folder / f"{i:06d}.jpg"
    img.save(path, quality=quality)
    return path.name


def make_photos(folder: Path, n: int, *, size: tuple[int, int] = (1024, 768), quality: int = 90) -> Path:
    """`n` JPEG photos of `size` (width, height) made from the shipped photos, and their manifest (sha256 ids)."""
    from aigi import cache
    from aigi.common.files import sha256_file

    folder.mkdir(parents=True, exist_ok=True)
    with Pool(os.cpu_count() or 1) as pool:
        names = pool.map(_photo_file, [(folder, i, size, quality) for i in range(n)], chunksize=16)
    rows = [{"image_id": sha256_file(folder / name), "path": name, "label": i % 2,
             "source": "gen" if i % 2 else "real", "split": "train"} for i, name in enumerate(names)]  # fmt: skip
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


def _decode_resize(args: tuple[str, int]) -> tuple[int, ...]:
    path, side = args
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB").resize((side, side), Image.Resampling.BILINEAR)).shape


def pool_rate(paths: list[str], side: int, processes: int) -> float:
    """Images/s of a bare Pool(processes) decoding each file with Pillow and resizing it to side x side."""
    with Pool(processes) as pool:
        pool.map(_decode_resize, [(p, side) for p in paths[: 2 * processes]])  # workers started and warm
        start = time.perf_counter()
        pool.map(_decode_resize, [(p, side) for p in paths], chunksize=4)
        return len(paths) / (time.perf_counter() - start)


def extract_run(manifest: Path, backbone: str, cache_dir: Path, extra: list[str]) -> dict:
    """One fresh `aigi extract` command: the rate it prints (start-up included), the rate after its start-up (when
    it prints one: not before the extraction loop was measured apart) and images / the whole command's seconds."""
    argv = [sys.executable, "-m", "aigi", "extract", "--manifest", str(manifest), "--backbone", backbone,
            "--random-weights", "--cache", str(cache_dir), *extra]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"aigi extract failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    loop = LOOP_RATE.search(done.stdout)
    return {
        "rate": float(RATE.findall(done.stdout)[0]),
        "loop_rate": float(loop.group(1)) if loop else None,
        "startup_s": float(loop.group(2)) if loop else None,
        "whole": len(pd.read_parquet(manifest)) / wall,
    }


def input_side(backbone: str) -> int:
    """The network input side of a timm backbone (what the Pool resizes to)."""
    from aigi import extractors

    return extractors.build(backbone, device="cpu").spec.input_size


def measure(args: argparse.Namespace, tmp: Path) -> dict:
    """Alternate the Pool and `aigi extract` `args.reps` times; each measurement's load average beside it."""
    manifest = make_photos(tmp / "img", args.images)
    paths = [str(tmp / "img" / p) for p in pd.read_parquet(manifest)["path"]]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    side = input_side(args.backbone)
    runs = []
    for rep in range(args.reps):
        load = os.getloadavg()[0]
        pool = pool_rate(paths, side, cores)
        got = extract_run(manifest, args.backbone, tmp / f"c{rep}", shlex.split(args.extra_args))
        loop = got["loop_rate"]
        runs.append({"load_1min": round(load, 2), "pool_img_s": round(pool, 1), "extract_img_s": round(got["rate"], 1),
                     "extract_after_startup_img_s": None if loop is None else round(loop, 1),
                     "startup_s": got["startup_s"], "whole_command_img_s": round(got["whole"], 1),
                     "ratio": round(got["rate"] / pool, 3),
                     "ratio_after_startup": None if loop is None else round(loop / pool, 3)})  # fmt: skip
        print(f"rep {rep}: load {load:.2f}, pool {pool:.1f} img/s, extract {got['rate']:.1f} img/s "
              f"(after start-up {loop}, whole command {got['whole']:.1f})", flush=True)  # fmt: skip
    median = {k: statistics.median(r[k] for r in runs) if runs[0][k] is not None else None for k in runs[0]}
    return {"images": args.images, "backbone": args.backbone, "cores": cores, "input_side": side,
            "extra_args": args.extra_args, "runs": runs, "median": median}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--backbone", default="timm:test_vit")
    ap.add_argument("--extra-args", default="", help="arguments added to every `aigi extract`")
    ap.add_argument("--out", default=str(OUT / "bench_extract.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(args, Path(tmp))
    m = result["median"]
    print(f"\n| {args.images} JPEGs 1024x768 q90, {result['cores']} cores | img/s (median of {args.reps}) | vs Pool |")
    print("| --- | --- | --- |")
    print(f"| bare Pool({result['cores']}) decode + resize to {result['input_side']} | {m['pool_img_s']:.1f} | 1 |")
    what = f"`aigi extract {args.extra_args}`" if args.extra_args else "`aigi extract` (defaults)"
    print(f"| {what}, its printed rate | {m['extract_img_s']:.1f} | {m['ratio']:.2f} |")
    if m["extract_after_startup_img_s"] is not None:
        print(f"| {what}, after its start-up ({m['startup_s']:.1f} s) | {m['extract_after_startup_img_s']:.1f} | "
              f"{m['ratio_after_startup']:.2f} |")  # fmt: skip
    print(
        f"| {what}, whole command | {m['whole_command_img_s']:.1f} | {m['whole_command_img_s'] / m['pool_img_s']:.2f} |"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
