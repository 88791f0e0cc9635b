"""Benchmark `aigi extract` when decoding is the bottleneck: its images/s against a bare decode+resize Pool.

A model that costs almost nothing (`timm:test_vit`, random weights) over JPEG photos (made from the photos the
installed packages ship, resized to 1024x768, quality 90) leaves decoding as the work: `aigi extract` with its
default settings is measured against a bare `multiprocessing.Pool` with one process per core that decodes each file
with Pillow and resizes it to the model's input side (bilinear). The two alternate `--reps` times; each `aigi
extract` is a fresh command (`python -m aigi extract`, a new cache each time) and both its own rate and the whole
command's wall time are kept. `--extra-args` adds arguments to every `aigi extract` (e.g. "--num-workers 0").

`--long N` also extracts N images: the difference between the two commands' wall times gives the marginal images/s
of a longer run, whatever the version measured (start-up cancels out).

Usage: python benchmarks/bench_extract.py [--images 400] [--long 2000] [--reps 3] [--backbone timm:test_vit]
       [--extra-args ""]
Prints a table and writes benchmarks/out/bench_extract.json. Runs against whichever aigi the interpreter imports.
"""

from __future__ import annotations

import argparse
import functools
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

from aigi import cache

OUT = Path(__file__).resolve().parent / "out"
RATE = re.compile(r"([0-9.]+) img/s")
LOOP_RATE = re.compile(r"\(([0-9.]+) img/s after ([0-9.]+) s of start-up\)")


def make_images(folder: Path, n: int, size: int = 256) -> Path:
    """`n` smooth random JPEGs (like photos, unlike white noise) and their manifest."""
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


@functools.lru_cache(maxsize=1)
def _shipped_photos() -> list:
    from aigi.fakes.photos import collect_photos

    return collect_photos()[0]


def _photo_file(args: tuple[Path, int, tuple[int, int], int]) -> str:
    """Write photo `i`: a random crop (at least half of each side) of a shipped photo, maybe mirrored, resized."""
    folder, i, (width, height), quality = args
    photos = _shipped_photos()
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
    it prints one: not before the extraction loop was measured apart), and the whole command's seconds."""
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
        "wall_s": wall,
    }


def input_side(backbone: str) -> int:
    """The network input side of a timm backbone (what the Pool resizes to)."""
    from aigi import extractors

    return extractors.build(backbone, device="cpu").spec.input_size


def one_rep(rep: int, args: argparse.Namespace, data: dict, tmp: Path) -> dict:
    """The Pool over the first `args.images` files, then `aigi extract` over them and over all of them: the second
    minus the first gives the marginal images/s of a longer run (start-up cancels out, whatever the version)."""
    load = os.getloadavg()[0]
    pool = pool_rate(data["paths"][: args.images], data["side"], data["cores"])
    extra = shlex.split(args.extra_args)
    short = extract_run(data["short"], args.backbone, tmp / f"s{rep}", extra)
    run = {"load_1min": round(load, 2), "pool_img_s": round(pool, 1), "extract_img_s": round(short["rate"], 1),
           "extract_after_startup_img_s": short["loop_rate"], "startup_s": short["startup_s"],
           "whole_command_img_s": round(args.images / short["wall_s"], 1)}  # fmt: skip
    if data["long"] is not None:
        long = extract_run(data["long"], args.backbone, tmp / f"l{rep}", extra)
        run["marginal_img_s"] = round((args.long - args.images) / (long["wall_s"] - short["wall_s"]), 1)
        run["long_after_startup_img_s"] = long["loop_rate"]
        run["long_whole_command_img_s"] = round(args.long / long["wall_s"], 1)
    run["load_1min_after"] = round(os.getloadavg()[0], 2)
    print(f"rep {rep}: {json.dumps(run)}", flush=True)
    return run


def measure(args: argparse.Namespace, tmp: Path) -> dict:
    """`args.reps` repetitions of `one_rep`; each measurement's load average beside it."""
    total = max(args.images, args.long or 0)
    manifest = make_photos(tmp / "img", total)
    table = pd.read_parquet(manifest)
    short = cache.write_manifest(table.iloc[: args.images], tmp / "img" / "short.parquet")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    data = {"paths": [str(tmp / "img" / p) for p in table["path"]], "side": input_side(args.backbone),
            "cores": cores, "short": short, "long": manifest if args.long else None}  # fmt: skip
    runs = [one_rep(rep, args, data, tmp) for rep in range(args.reps)]
    median = {k: statistics.median(r[k] for r in runs) if runs[0][k] is not None else None for k in runs[0]}
    return {"images": args.images, "long": args.long, "backbone": args.backbone, "cores": cores,
            "input_side": data["side"], "extra_args": args.extra_args, "runs": runs, "median": median}  # fmt: skip


def print_table(result: dict, args: argparse.Namespace) -> None:
    m, pool = result["median"], result["median"]["pool_img_s"]
    what = f"`aigi extract {args.extra_args}`" if args.extra_args else "`aigi extract` (defaults)"
    rows = [(f"bare Pool({result['cores']}) decode + resize to {result['input_side']}", pool),
            (f"{what}: the rate it prints (start-up included)", m["extract_img_s"]),
            (f"{what}: after its start-up ({m['startup_s']} s)", m["extract_after_startup_img_s"]),
            (f"{what}: whole command", m["whole_command_img_s"])]  # fmt: skip
    if result["long"]:
        rows += [(f"{what}, {result['long']} images: after its start-up", m["long_after_startup_img_s"]),
                 (f"{what}, {result['long']} images: whole command", m["long_whole_command_img_s"]),
                 (f"{what}: marginal, {result['long']} vs {result['images']} images", m["marginal_img_s"])]  # fmt: skip
    print(f"\n| {args.images} JPEGs 1024x768 q90, {result['cores']} cores | img/s (median of {args.reps}) | vs Pool |")
    print("| --- | --- | --- |")
    for label, value in rows:
        if value is not None:
            print(f"| {label} | {value:.1f} | {value / pool:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--long", type=int, default=0, help="also extract this many images: the marginal img/s")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--backbone", default="timm:test_vit")
    ap.add_argument("--extra-args", default="", help="arguments added to every `aigi extract`")
    ap.add_argument("--out", default=str(OUT / "bench_extract.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(args, Path(tmp))
    print_table(result, args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
