"""`aigi import uar` of 20,000 shipped `.npy` files against a bare `np.load` loop over the same files.

Both run as fresh processes (process start and imports included), alternately, best of `--repeat`. The folder is
UAR's shipped sample (2,000 real/fake pairs of (1, 3072) float32 `.npy`) copied into `--copies` generator folders.
The bare loop: find the files, `np.load(f, allow_pickle=False)` each, stack them; nothing is written.

Prints a table and writes benchmarks/out/bench_import.json.
Run: `python benchmarks/bench_import.py --uar UAR_SAMPLE [--work DIR] [--copies 5] [--repeat 3]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "benchmarks" / "out"

BARE = """
import glob, sys
import numpy as np
files = sorted(glob.glob(sys.argv[1] + "/**/*.npy", recursive=True))
x = np.stack([np.load(f, allow_pickle=False).reshape(-1) for f in files])
print(len(files), x.shape)
"""


def make_folder(uar: Path, work: Path, copies: int) -> Path:
    """`copies` generator folders, each a copy of the sample's 0_real/1_fake files."""
    out = work / f"uar_x{copies}"
    if out.exists():
        return out
    tmp = work / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for k in range(copies):
        for label in ("0_real", "1_fake"):
            shutil.copytree(uar / label, tmp / f"gen{k}" / label)
    os.replace(tmp, out)
    return out


def timed(cmd: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = Path(os.environ.get("AIGI_SHARED", ROOT.parent / "shared"))
    p.add_argument("--uar", type=Path, default=shared / "data" / "uar_sample", help="UAR sample (0_real/, 1_fake/)")
    p.add_argument("--work", type=Path, default=Path("bench_work/import"))
    p.add_argument("--copies", type=int, default=5)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    if not args.uar.is_dir():
        raise SystemExit(f"{args.uar} is absent: pass --uar FOLDER (UAR's 0_real/1_fake .npy features)")
    args.work.mkdir(parents=True, exist_ok=True)
    folder = make_folder(args.uar, args.work, args.copies)
    files = sum(1 for _ in folder.rglob("*.npy"))
    runs: dict[str, list[float]] = {"aigi import uar": [], "bare np.load loop": []}
    for _ in range(args.repeat):
        target = args.work / "imported"
        shutil.rmtree(target, ignore_errors=True)
        cli = [sys.executable, "-m", "aigi", "import", "uar", str(folder), "--cache", str(target)]
        runs["aigi import uar"].append(timed(cli))
        runs["bare np.load loop"].append(timed([sys.executable, "-c", BARE, str(folder)]))
    best = {k: min(v) for k, v in runs.items()}
    ratio = best["bare np.load loop"] / best["aigi import uar"]
    print(f"\n{files:,} files, best of {args.repeat} (load: {os.getloadavg()[0]:.1f})")
    print(f"{'step':<20} {'best s':>8} {'all runs s':>24}")
    for k, v in runs.items():
        print(f"{k:<20} {best[k]:>8.2f} {' '.join(f'{t:.2f}' for t in v):>24}")
    print(f"speed of import relative to the bare loop: {ratio:.2f}x")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    result = {"files": files, "runs": runs, "best": best, "ratio": ratio, "loadavg": os.getloadavg()}
    (OUT_DIR / "bench_import.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
