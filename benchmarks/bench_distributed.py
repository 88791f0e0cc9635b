"""Benchmark extraction on 1 vs 2 local dask workers (and the plain single-process path) with a CPU-bound model.

Usage: python benchmarks/bench_distributed.py [--images 256] [--shard-size 32]
Prints a table and writes benchmarks/out/bench_distributed.json. Each dask worker gets cores // workers threads.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_extract import OUT, extract_argv, make_images, random_weights  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--shard-size", type=int, default=32)
    ap.add_argument("--backbone", default="timm:vit_tiny_patch16_224")
    args = ap.parse_args()

    from aigi.cli import main as aigi

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifest = make_images(tmp / "img", args.images)
        weights = random_weights(args.backbone, tmp / "w.pth")
        for label, extra in [
            ("single process", []),
            ("dask, 1 worker", ["--workers", "1"]),
            ("dask, 2 workers", ["--workers", "2"]),
        ]:
            cmd = extract_argv(
                manifest,
                args.backbone,
                weights,
                tmp / label.replace(" ", "_").replace(",", ""),
                "--shard-size",
                str(args.shard_size),
                *extra,
            )
            start = time.perf_counter()
            assert aigi(cmd) == 0
            seconds = time.perf_counter() - start
            rows.append({"setup": label, "seconds": round(seconds, 2), "img_s": round(args.images / seconds, 2)})
    base = rows[1]["img_s"]
    print(f"| setup ({args.images} images, {args.backbone}) | wall s | img/s | speed-up vs 1 worker |")
    print("|---|---|---|---|")
    for r in rows:
        r["speedup_vs_1_worker"] = round(r["img_s"] / base, 2)
        print(f"| {r['setup']} | {r['seconds']:.1f} | {r['img_s']:.1f} | {r['speedup_vs_1_worker']:.2f} |")
    OUT.mkdir(exist_ok=True)
    (OUT / "bench_distributed.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
