"""Measure extraction on a GPU: bare forward, compiled forward, `aigi extract` from JPEGs (CPU and GPU decoding), MFU.

For each backbone, built with random weights in its real architecture (nothing is downloaded):
- the bare forward (`Extractor.run` on synthetic normalised tensors already on the device) at the best batch size of
  a few it tries, and the same with `torch.compile`;
- the extract stage (`aigi extract`'s library call, default settings: decoding workers, two batches in flight,
  bf16 autocast; shards of 256 rows, batches of the bare forward's best size) over JPEG photos it writes first (made
  from the photos the installed packages ship), with Pillow decoding in the workers (`--decode cpu`) and with JPEGs
  decoded on the GPU (`--decode device`): its steady images/s (between the first and the last shard written), the
  images/s after the start-up (the backbone is built once and reused by both), and the ratio steady / bare forward;
- FLOP per image (torch's FLOP counter), achieved TFLOP/s and MFU against the device's dense bf16 peak (PEAK_TFLOPS,
  from NVIDIA's datasheets), peak GPU memory of the bare forward, and the CPU decode rate alone (a Pool with one
  process per core running the decoding workers' own per-image function).
The compiled forwards run last, while the time budget (`--budget-s`) lasts; one skipped is recorded as skipped.

Usage: python benchmarks/bench_gpu.py                 (one GPU; built to finish within 8 minutes on an H100)
       python benchmarks/bench_gpu.py --cpu-smoke     (the same code paths on tiny models and small images, CPU)
Prints a table and writes benchmarks/out/bench_gpu.json (bench_gpu_smoke.json for the smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from multiprocessing import Pool
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_extract import OUT, make_photos  # noqa: E402

# Dense (no sparsity) BF16 tensor-core TFLOP/s from NVIDIA's product datasheets (V100: FP16, it has no BF16); the
# first key found in the device's name wins, so the more specific names come first.
PEAK_TFLOPS = {
    "GH200": 989.4,
    "H200 NVL": 835.5,
    "H200": 989.4,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.5,
    "H100": 989.4,
    "B200": 2250.0,
    "A100": 312.0,
    "L40S": 362.1,
    "L40": 181.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
    "RTX 6000 Ada": 364.2,
    "A6000": 154.8,
    "RTX 4090": 165.2,
    "V100": 125.0,
}
PEAK_SOURCE = "NVIDIA datasheets, dense BF16 tensor-core TFLOP/s (no sparsity); V100: FP16"
BACKBONES = ("clip-l14", "clip-l14-336", "aim-v1-3b")
COMPILE_ALLOWANCE_S = 100.0  # what one compiled measurement may take (compiling included) before the budget ends
BATCHES = {"clip-l14": (64, 128, 256, 512), "clip-l14-336": (32, 64, 128, 256), "aim-v1-3b": (16, 32, 64, 128)}
# the smoke run: the same architectures, tiny (tests/extractors/tiny.py's sizes)
SMOKE_ARCH = {
    "clip-l14": {"img_size": 56, "embed_dim": 64, "depth": 2, "num_heads": 2, "proj_dim": 32},
    "clip-l14-336": {"img_size": 56, "embed_dim": 64, "depth": 2, "num_heads": 2, "proj_dim": 32},
    "aim-v1-3b": {"img_size": 56, "embed_dim": 32, "depth": 4, "num_heads": 2, "probe_layers": (1, 2)},
}


def peak_tflops(name: str) -> float | None:
    """The dense bf16 peak of a device named `name` (PEAK_TFLOPS), None when unknown (or a CPU)."""
    return next((tflops for key, tflops in PEAK_TFLOPS.items() if key in name), None)


def sync(device: Any) -> None:
    """Wait for the device's queued work (nothing to wait for on the CPU)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_rate(ex: Any, batch: int, seconds: float) -> float:
    """Images/s of `ex.run` on a synthetic normalised batch on the device, over about `seconds` after a warm-up."""
    import torch

    size = ex.spec.input_size
    x = torch.randn(batch, 3, size, size, device=ex.device)
    for _ in range(2):
        ex.run(x)
    sync(ex.device)
    done, start = 0, time.perf_counter()
    while done == 0 or time.perf_counter() - start < seconds:
        ex.run(x)
        done += batch
        if done % (batch * 4) == 0:
            sync(ex.device)
    sync(ex.device)
    return done / (time.perf_counter() - start)


def best_forward(ex: Any, batches: tuple[int, ...], seconds: float) -> dict:
    """The bare forward at each batch size (stopping at the first that runs out of memory); the best, and its peak
    device memory."""
    import torch

    tried = {}
    for batch in batches:
        try:
            if ex.device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(ex.device)
            tried[batch] = {"img_s": forward_rate(ex, batch, seconds)}
            if ex.device.type == "cuda":
                tried[batch]["peak_mem_gb"] = torch.cuda.max_memory_allocated(ex.device) / 1e9
        except torch.OutOfMemoryError:
            tried[batch] = {"img_s": None, "note": "out of memory"}
            break
    best = max((b for b in tried if tried[b]["img_s"]), key=lambda b: tried[b]["img_s"])
    return {"batch": best, **tried[best], "tried": {str(b): v["img_s"] for b, v in tried.items()}}


def gflop_per_image(ex: Any) -> float:
    """GFLOP of one image's forward, counted by torch's FLOP counter (matmuls, convolutions, attention)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 3, ex.spec.input_size, ex.spec.input_size, device=ex.device)
    with FlopCounterMode(display=False) as counter:
        ex.run(x)
    return counter.get_total_flops() / 1e9


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)  # as in a DataLoader worker: one process per core, one thread each


def _decode_one(args: tuple[Any, str, str]) -> bool:
    items_transform, path, image_id = args
    from aigi.extractors.loader import ImageItems

    return ImageItems([path], [image_id], ["orig"], transform=items_transform, device_jpeg=False)[0][1] == "pixels"


def cpu_decode_rate(transform: Any, paths: list[str], ids: list[str]) -> float:
    """Images/s of the decoding workers' per-image work (read, hash, decode, policy) on a Pool of every core."""
    from aigi.extractors.loader import available_cores

    jobs = [(transform, p, i) for p, i in zip(paths, ids)]
    with Pool(available_cores(), initializer=_one_thread) as pool:
        pool.map(_decode_one, jobs[:32])
        start = time.perf_counter()
        assert all(pool.map(_decode_one, jobs, chunksize=16))
        return len(jobs) / (time.perf_counter() - start)


def extract_rate(options: Any, decode: str) -> dict:
    """The extract stage over the JPEGs into a fresh cache: its steady images/s (between the first and the last shard
    written), its images/s after the start-up (workers starting and the first batches included), the start-up."""
    import shutil

    from aigi.pipeline.extract import extract_features

    shutil.rmtree(options.cache, ignore_errors=True)
    result = extract_features(replace(options, decode=decode))
    assert result.rows > 0, "nothing was extracted"
    return {"img_s": result.steady_rate, "img_s_after_startup": result.extract_rate,
            "startup_s": result.startup_seconds, "rows": result.rows, "errors": result.errors}  # fmt: skip


def measure_backbone(name: str, args: argparse.Namespace, data: dict, tmp: Path) -> tuple[dict, Any]:
    """Everything but the compiled forward for one backbone; returns its record and its extractor."""
    from aigi.pipeline.extract import ExtractOptions, get_extractor

    arch = SMOKE_ARCH[name] if args.cpu_smoke else {}
    options = ExtractOptions(
        manifest=data["manifest"],
        backbone=name,
        cache=str(tmp / f"cache-{name}"),
        random_weights=True,
        batch_size=args.extract_batch or 32,
        arch=arch,
        shard_size=8 if args.cpu_smoke else 256,
        device="cpu" if args.cpu_smoke else "cuda",
    )
    start = time.perf_counter()
    ex = get_extractor(options)
    record: dict[str, Any] = {"build_s": time.perf_counter() - start, "dtype": ex.spec.dtype,
                              "input_size": ex.spec.input_size, "features": list(ex.spec.features),
                              "preprocess": ex.spec.preprocess}  # fmt: skip
    record["gflop_per_image"] = gflop_per_image(ex)
    batches = (4, 8) if args.cpu_smoke else BATCHES[name]
    record["bare"] = best_forward(ex, batches, args.seconds)
    options = replace(options, batch_size=args.extract_batch or record["bare"]["batch"])
    record["cpu_decode_img_s"] = cpu_decode_rate(ex.transform, data["paths"], data["ids"])
    for decode in ("cpu", "device"):
        got = extract_rate(options, decode)
        got["ratio_to_bare"] = got["img_s"] / record["bare"]["img_s"]
        record[f"extract_{decode}_decode"] = got
    return record, ex


def add_compiled(record: dict, ex: Any, args: argparse.Namespace) -> None:
    """The compiled forward at the bare forward's best batch size (inductor on a GPU; the eager backend in the smoke
    run, where inductor's C++ build alone would take minutes)."""
    start = time.perf_counter()
    ex.tune(compile="eager" if args.cpu_smoke else True)
    rate = forward_rate(ex, record["bare"]["batch"], args.seconds)  # the first batches compile
    record["compiled"] = {"batch": record["bare"]["batch"], "img_s": rate, "seconds_with_compile": 0.0}
    record["compiled"]["seconds_with_compile"] = time.perf_counter() - start


def add_efficiency(record: dict, peak: float | None) -> None:
    """Achieved TFLOP/s and MFU of each measured rate."""
    for key in ("bare", "compiled", "extract_cpu_decode", "extract_device_decode"):
        if key in record and record[key].get("img_s"):
            tflops = record[key]["img_s"] * record["gflop_per_image"] / 1e3
            record[key]["tflops"] = tflops
            record[key]["mfu"] = tflops / peak if peak else None


def prepare_data(args: argparse.Namespace, tmp: Path) -> dict:
    """The JPEG photos and their manifest."""
    import pandas as pd

    size = (128, 96) if args.cpu_smoke else (512, 384)
    manifest = make_photos(tmp / "img", args.images, size=size, quality=90)
    table = pd.read_parquet(manifest)
    return {"manifest": str(manifest), "paths": [str(tmp / "img" / p) for p in table["path"]],
            "ids": table["image_id"].astype(str).tolist(), "size": list(size)}  # fmt: skip


def run(args: argparse.Namespace) -> dict:
    """Measure every backbone (the compiled forwards last, within the budget)."""
    import torch

    started = time.perf_counter()
    device = "cpu" if args.cpu_smoke else torch.cuda.get_device_name(0)
    peak = None if args.cpu_smoke else peak_tflops(device)
    out: dict[str, Any] = {"device": device, "peak_tflops": peak, "peak_source": PEAK_SOURCE, "images": args.images,
                           "torch": torch.__version__, "cpu_cores": os.cpu_count(), "backbones": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare_data(args, Path(tmp))
        out["jpeg_size"] = data["size"]
        built = {}
        for name in args.backbones.split(","):
            out["backbones"][name], built[name] = measure_backbone(name, args, data, Path(tmp))
            print(f"{name}: measured ({time.perf_counter() - started:.0f} s)", flush=True)
        for name, ex in built.items():
            left = args.budget_s - (time.perf_counter() - started)
            if left < (0 if args.cpu_smoke else COMPILE_ALLOWANCE_S):
                out["backbones"][name]["compiled"] = {"skipped": f"time budget ({left:.0f} s left)"}
                continue
            add_compiled(out["backbones"][name], ex, args)
        for record in out["backbones"].values():
            add_efficiency(record, peak)
    out["seconds"] = time.perf_counter() - started
    return out


def print_table(out: dict) -> None:
    """One row per backbone."""

    def cell(record: dict, key: str, field: str, fmt: str) -> str:
        value = record.get(key, {}).get(field)
        return (
            "skipped"
            if value is None and "skipped" in record.get(key, {})
            else ("-" if value is None else fmt.format(value))
        )

    print(f"\n{out['device']} (peak {out['peak_tflops']} TFLOP/s bf16 dense), {out['images']} JPEGs {out['jpeg_size']}")
    print("| backbone | GFLOP/img | bare img/s (batch) | MFU | compiled img/s | extract CPU-decode img/s (ratio) | "
          "extract GPU-decode img/s (ratio) | MFU extract | CPU decode img/s | peak GB |")  # fmt: skip
    print("|" + " --- |" * 10)
    for name, r in out["backbones"].items():
        bare, cpu_, dev = r["bare"], r["extract_cpu_decode"], r["extract_device_decode"]
        mfu = "-" if bare.get("mfu") is None else f"{100 * bare['mfu']:.0f} %"
        mfu_e = "-" if dev.get("mfu") is None else f"{100 * dev['mfu']:.0f} %"
        print(f"| {name} | {r['gflop_per_image']:.4g} | {bare['img_s']:.0f} ({bare['batch']}) | {mfu} | "
              f"{cell(r, 'compiled', 'img_s', '{:.0f}')} | {cpu_['img_s']:.0f} ({cpu_['ratio_to_bare']:.2f}) | "
              f"{dev['img_s']:.0f} ({dev['ratio_to_bare']:.2f}) | {mfu_e} | {r['cpu_decode_img_s']:.0f} | "
              f"{bare.get('peak_mem_gb', float('nan')):.1f} |")  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark (`argv`: the command line's arguments); returns what it wrote."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny models, small images, on the CPU (under a minute)")
    ap.add_argument("--backbones", default=",".join(BACKBONES))
    ap.add_argument("--images", type=int, default=None, help="JPEGs to write (default 5000; smoke: 48)")
    ap.add_argument("--seconds", type=float, default=None, help="seconds per forward measurement (default 1.5)")
    ap.add_argument("--extract-batch", type=int, default=0, help="extract batch size (default: the best bare one)")
    ap.add_argument(
        "--budget-s", type=float, default=420.0, help="no compiled forward starts unless it can end by then"
    )
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    args.images = args.images or (48 if args.cpu_smoke else 5000)
    args.seconds = args.seconds or (0.2 if args.cpu_smoke else 1.5)
    if not args.cpu_smoke:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("bench_gpu.py needs a CUDA device; on a CPU run it with --cpu-smoke")
    out = run(args)
    print_table(out)
    path = Path(args.out or OUT / ("bench_gpu_smoke.json" if args.cpu_smoke else "bench_gpu.json"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path} ({out['seconds']:.0f} s)")
    return out


if __name__ == "__main__":
    main()
