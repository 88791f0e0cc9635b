"""Streamed vs in-memory training on sets that fit in memory: ACC/AUC on the test split and wall time of each.

Sets: UAR's shipped sample (2,000 pairs of 3072-d float32 `.npy`, imported with a seeded 80/20 train/test split of
the pairs; linear head with UAR's protocol: Adam 1e-3, batch 32, 1 epoch) and a synthetic 200,000 x 1,024 float16
cache (`bench_stream.make_cache`, every 5th row test; linear head, Adam 1e-3, batch 1,024, 2 epochs).
Each is trained with `aigi train ... --set data.stream=true` and `=false` (fresh processes, wall timed) and scored
by `aigi eval --by split` in memory, so the two differ only in how training read its rows. Best of `--repeat`.

Prints a table and writes benchmarks/out/bench_stream_vs_memory.json.
Run: `python benchmarks/bench_stream_vs_memory.py --uar UAR_SAMPLE [--work DIR] [--repeat 2]`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
OUT_DIR = ROOT / "benchmarks" / "out"

from bench_stream import make_cache  # noqa: E402


def aigi(*argv: str) -> float:
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "aigi", *argv], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    if run.returncode != 0:
        raise SystemExit(f"aigi {argv[0]} failed:\n{run.stderr[-3000:]}")
    return time.perf_counter() - start


def sets(work: Path, uar: Path) -> dict[str, tuple[Path, dict]]:
    uar_cache = work / "uar"
    if not (uar_cache / "cache.json").exists():
        aigi("import", "uar", str(uar), "--cache", str(uar_cache), "--split-ratio", "train=0.8,test=0.2")
    syn = make_cache(work / "syn200k", 200_000, 1024, 65536, test_every=5)
    uar_fit = {"optimizer": "adam", "lr": 1e-3, "epochs": 1, "batch_size": 32, "seed": 0}
    syn_fit = {"optimizer": "adam", "lr": 1e-3, "epochs": 2, "batch_size": 1024, "seed": 0}
    return {
        "UAR sample 3.2k x 3072 (float32)": (
            uar_cache,
            {"head": {"name": "linear", "inputs": ["probe"]}, "fit": uar_fit},
        ),
        "synthetic 160k x 1024 (float16)": (syn, {"head": {"name": "linear", "inputs": ["x"]}, "fit": syn_fit}),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = Path(os.environ.get("AIGI_SHARED", ROOT.parent / "shared"))
    p.add_argument("--uar", type=Path, default=shared / "data" / "uar_sample", help="UAR sample (0_real/, 1_fake/)")
    p.add_argument("--work", type=Path, default=Path("bench_work/stream_vs_memory"))
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args(argv)
    if not args.uar.is_dir():
        raise SystemExit(f"{args.uar} is absent: pass --uar FOLDER (UAR's 0_real/1_fake .npy features)")
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, (store, cfg) in sets(args.work, args.uar).items():
        config = args.work / "run.yaml"
        config.write_text(yaml.safe_dump({**cfg, "data": {"caches": {"c": str(store)}, "val_fraction": 0.0}}))
        for stream in ("false", "true"):
            walls = []
            for _ in range(args.repeat):
                run = args.work / f"run_{stream}"
                argv = ["train", str(config), "--set", f"data.stream={stream}", "-o", str(run), "--overwrite"]
                walls.append(aigi(*argv))
            aigi("eval", str(run), "--by", "split", "-o", str(run / "eval"), "--overwrite")
            m = json.loads((run / "eval" / "metrics.json").read_text())["mean"]
            fit = json.loads((run / "head.json").read_text())["history"]["seconds"]
            rows.append({"set": name, "streamed": stream == "true", "acc": 100 * m["acc"], "auc": 100 * m["auc"],
                         "wall_s": min(walls), "walls": walls, "fit_s": fit})  # fmt: skip
    print(f"\nbest of {args.repeat}; load {os.getloadavg()[0]:.1f}")
    print(f"{'set':<34} {'path':<10} {'ACC':>7} {'AUC':>7} {'fit s':>7} {'wall s':>7}")
    for r in rows:
        path = "streamed" if r["streamed"] else "in memory"
        print(f"{r['set']:<34} {path:<10} {r['acc']:>7.2f} {r['auc']:>7.2f} {r['fit_s']:>7.2f} {r['wall_s']:>7.2f}")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "bench_stream_vs_memory.json").write_text(
        json.dumps({"rows": rows, "loadavg": os.getloadavg()}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
