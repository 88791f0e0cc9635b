"""Start-up of `aigi train configs/uar.yaml` on 16,000 imported UAR rows: stage breakdown, wall vs UAR's train.py.

Data: UAR's shipped sample (2,000 pairs of 3072-d `.npy`) copied into `--copies` generator folders (4 -> 16,000
files), imported with `aigi import uar --split train`. Measured, best of `--repeat`, alternating:
- `aigi train configs/uar.yaml --cache CACHE -o RUN` as a fresh process (wall, under `/usr/bin/time`);
- the stage breakdown that command prints itself (`time: start ..., config ..., open ..., load ..., fit ..., write
  ...`): start is the process start through imports and argument parsing;
- optionally (`--uar-code DIR`, a checkout of UAR's code) UAR's own `train.py --dataroot FOLDER` on the same files.
`--code DIR` selects the aigi code to measure (default this checkout), so one script measures before and after.

Prints a table and writes benchmarks/out/bench_startup[_LABEL].json.
Run: `python benchmarks/bench_startup.py --uar UAR_SAMPLE [--work DIR] [--code DIR] [--label before]
      [--uar-code DIR] [--repeat 3]`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_import import make_folder  # noqa: E402

OUT_DIR = ROOT / "benchmarks" / "out"

STAGES = ("start", "config", "open", "load", "fit", "write")  # the stages `aigi train` times and prints (`time: ...`)


def run(cmd: list[str], code: Path, cwd: Path | None = None) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(code)}
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, check=True)
    return time.perf_counter() - start, out.stdout


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = Path(os.environ.get("AIGI_SHARED", ROOT.parent / "shared"))
    p.add_argument("--uar", type=Path, default=shared / "data" / "uar_sample", help="UAR sample (0_real/, 1_fake/)")
    p.add_argument("--work", type=Path, default=Path("bench_work/startup"))
    p.add_argument("--code", type=Path, default=ROOT)
    p.add_argument("--label", default="")
    p.add_argument("--uar-code", type=Path, help="a checkout of UAR's code (train.py) to time on the same files")
    p.add_argument("--copies", type=int, default=4)
    p.add_argument("--repeat", type=int, default=3)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.uar.is_dir():
        raise SystemExit(f"{args.uar} is absent: pass --uar FOLDER (UAR's 0_real/1_fake .npy features)")
    args.work.mkdir(parents=True, exist_ok=True)
    folder = make_folder(args.uar, args.work, args.copies)
    store = args.work / "cache"
    if not (store / "cache.json").exists():
        run(
            [
                sys.executable,
                "-m",
                "aigi",
                "import",
                "uar",
                str(folder),
                "--cache",
                str(store),
                "--split",
                "train",
            ],
            args.code,
        )
    config = args.code / "configs" / "uar.yaml"
    walls, drivers, uar = [], [], []
    for _ in range(args.repeat):
        cmd = [
            sys.executable,
            "-m",
            "aigi",
            "train",
            str(config),
            "--cache",
            str(store),
            "-o",
            str(args.work / "run"),
            "--overwrite",
        ]
        wall, out = run(cmd, args.code)
        walls.append(wall)
        line = next(x for x in out.splitlines() if x.startswith("time: "))
        stages = {k: float(v) for k, v in re.findall(r"(\w+) ([\d.]+) s", line.split(";")[0])}
        drivers.append({**stages, "total": wall})
        if args.uar_code:
            uar.append(
                run(
                    [sys.executable, "train.py", "--dataroot", str(folder), "--savedir", str(args.work / "uar_ckpt")],
                    args.code,
                    cwd=args.uar_code,
                )[0]
            )
    best = min(drivers, key=lambda d: d["total"])
    result = {
        "label": args.label,
        "code": str(args.code),
        "aigi_train_wall": walls,
        "driver": drivers,
        "best_driver": best,
        "uar_train_wall": uar,
        "loadavg": os.getloadavg(),
    }
    print(
        f"\n`aigi train configs/uar.yaml` on {args.copies * 4000:,} rows ({args.label or args.code}), best of "
        f"{args.repeat}, load {os.getloadavg()[0]:.1f}"
    )
    print(
        "stage breakdown (as `aigi train` prints it, best run): "
        + ", ".join(f"{k} {best[k]:.2f}" for k in STAGES)
        + f"; total {best['total']:.2f} s"
    )
    print(f"aigi train wall: best {min(walls):.2f} s (runs {' '.join(f'{w:.2f}' for w in walls)})")
    if uar:
        print(
            f"UAR train.py wall: best {min(uar):.2f} s (runs {' '.join(f'{w:.2f}' for w in uar)}); "
            f"ratio aigi/UAR {min(walls) / min(uar):.2f}"
        )
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    name = f"bench_startup_{args.label}.json" if args.label else "bench_startup.json"
    (OUT_DIR / name).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
