"""Training on a cache larger than the memory budget: `aigi train` streamed vs a bare sequential read of the shards.

Data: a synthetic cache of `--rows` x `--dim` float16 features (default 2,000,000 x 1,024: 4 GB on disk, 8 GB as
float32), HDF5 shards of `--shard-size` rows; label = 1 when a fixed random direction's projection plus logistic
noise is positive (a linear head can learn it). Measured, cold and warm page cache:
- floor: a bare sequential read of every shard's feature bytes (one `readinto` per shard into one reused buffer);
- `aigi train` (linear head, 1 epoch, batch `--batch`, `data.stream: true`, `data.memory_budget: --budget`), as a
  fresh process under `/usr/bin/time -v`: peak RSS, process wall, and the epoch's wall from the head's history;
- the floor of the epoch itself (when the float16 rows fit in half the available RAM, or `--memory-floor`): the same
  `aigi train` with every row already in memory as float16 (`data.stream: false`), so the epoch reads nothing: what
  the fit loop costs on this machine (shuffled gather + step), whatever the reader does; and, in this process, the
  linear step alone over those rows in storage order (no read, no shuffle, all cores): the least an epoch can take.
Cold = the shards' pages evicted with posix_fadvise(DONTNEED) before the run (needs no privilege; `--drop-caches`
also writes /proc/sys/vm/drop_caches when permitted).

Prints a table and writes benchmarks/out/bench_stream.json. The cache is deleted afterwards unless `--keep`.
Run: `python benchmarks/bench_stream.py [--work DIR] [--rows N] [--dim D] [--budget 1.5GB] [--repeat 2]`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT_DIR = ROOT / "benchmarks" / "out"
SPEC = {"extractor": {"name": "synthetic", "feature": "x"}, "generator": "bench_stream linear rule, seed 0"}


def make_cache(path: Path, rows: int, dim: int, shard_size: int, test_every: int = 0) -> Path:
    """Write the synthetic cache (skipped when it is complete); every `test_every`-th row is in split test."""
    import pandas as pd

    from aigi import cache

    if (path / "cache.json").exists() and len(cache.open(path)) == rows:
        return path
    shutil.rmtree(path, ignore_errors=True)
    rng = np.random.default_rng(0)
    w = rng.standard_normal(dim).astype(np.float32) / np.sqrt(dim)
    with cache.CacheWriter(path, spec=SPEC, features={"x": (dim,)}, shard_size=shard_size, dtype="float16") as out:
        for lo in range(0, rows, shard_size):
            n = min(shard_size, rows - lo)
            x = rng.standard_normal((n, dim), dtype=np.float32)
            y = (x @ w * 4 + rng.logistic(size=n) > 0).astype(np.int64)
            ids = [f"{i:09d}" for i in range(lo, lo + n)]
            meta = pd.DataFrame(
                {
                    "image_id": ids,
                    "path": ids,
                    "label": y,
                    "source": np.where(y == 1, "fake", "real"),
                    "split": np.where(test_every and np.arange(lo, lo + n) % max(test_every, 1) == 0, "test", "train"),
                }
            )
            out.append(meta, {"x": x.astype(np.float16)})
    return path


def shard_files(path: Path) -> list[Path]:
    return sorted((path / "shards").glob("*.h5"))


def evict(files: list[Path], drop_caches: bool) -> str:
    """Evict the files' pages from the page cache; says how."""
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    if drop_caches:
        try:
            Path("/proc/sys/vm/drop_caches").write_text("3")
            return "drop_caches"
        except OSError:
            return "posix_fadvise (drop_caches not permitted)"
    return "posix_fadvise"


def bare_read(files: list[Path]) -> tuple[float, int]:
    """Seconds and bytes of a sequential read of every shard's feature dataset into one reused buffer."""
    import h5py

    plan = []
    for f in files:
        with h5py.File(f, "r") as h:
            ds = h["features"]["x"]
            plan.append((f, ds.id.get_offset(), ds.size * ds.dtype.itemsize))
    buf = np.empty(max(n for _, _, n in plan), dtype=np.uint8)
    start = time.perf_counter()
    for f, offset, n in plan:
        with open(f, "rb", buffering=0) as fh:
            fh.seek(offset)
            fh.readinto(memoryview(buf)[:n])
    return time.perf_counter() - start, sum(n for _, _, n in plan)


def step_floor(path: Path, batch: int) -> float:
    """Seconds of the linear head's training step alone over every row, already in memory as float16, in storage
    order (no read, no shuffle, all cores): what one epoch costs on this CPU whatever feeds it."""
    import torch

    from aigi import cache
    from aigi.heads._fastlinear import LinearAdamStep

    fs = cache.open(path).load(["x"], dtype="float16")
    x, y = torch.from_numpy(fs.features["x"]), torch.from_numpy(fs.labels.astype(np.float32))
    step = LinearAdamStep(torch.nn.Linear(x.shape[1], 1), "x", lr=1e-3, weight_decay=0.0, decoupled=False)
    start = time.perf_counter()
    for lo in range(0, len(x), batch):
        step({"x": x[lo : lo + batch]}, y[lo : lo + batch], None)
    return time.perf_counter() - start


def write_config(work: Path, cache_path: Path, *, budget: str, batch: int, stream: str) -> Path:
    cfg = work / f"stream_{stream}.yaml"
    cfg.write_text(
        "head: {name: linear, inputs: [x]}\n"
        f"fit: {{optimizer: adam, lr: 1.0e-3, epochs: 1, batch_size: {batch}, seed: 0}}\n"
        f"data: {{caches: {{syn: {cache_path}}}, train: train, val_fraction: 0.0, stream: {stream}, "
        f"memory_budget: {budget}}}\n"
    )
    return cfg


def memory_config(work: Path, cache_path: Path, *, nbytes: int, batch: int) -> Path:
    """`aigi train` with every row in memory as stored float16: a budget above the float16 copy, below float32."""
    cfg = write_config(work, cache_path, budget=str(int(nbytes * 1.5)), batch=batch, stream="false")
    return cfg.rename(work / "stream_memory.yaml")


def aigi_train(cfg: Path, out: Path) -> dict:
    """Run `aigi train` under /usr/bin/time -v: peak RSS, wall, the epoch's seconds, the stream line."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "aigi", "train", str(cfg), "-o", str(out)]
    start = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(f"aigi train failed:\n{run.stderr[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr).group(1))
    head = json.loads((out / "head.json").read_text())
    history = head["meta"]["history"] if "meta" in head else head["history"]
    epoch = history["stages"][0]["epochs"][0]["seconds"]
    lines = [ln for ln in (run.stdout + run.stderr).splitlines() if ln.startswith(("train:", "data:", "stream"))]
    return {"wall_s": wall, "epoch_s": epoch, "peak_rss_gb": rss_kb * 1024 / 1e9, "output": lines}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("bench_work/stream"))
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--shard-size", type=int, default=65536)
    p.add_argument("--budget", default="1.5GB")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--drop-caches", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the synthetic cache")
    p.add_argument(
        "--memory-floor",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also train with every row in memory (default: when the float16 rows fit in half the available RAM)",
    )
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    path = make_cache(args.work / "cache", args.rows, args.dim, args.shard_size)
    made = time.perf_counter() - t0
    files = shard_files(path)
    cfg = write_config(args.work, path.resolve(), budget=args.budget, batch=args.batch, stream="true")
    rows: dict[str, list] = {"bare read cold": [], "bare read warm": [], "train cold": [], "train warm": []}
    nbytes = bare_read(files)[1]
    floor = args.memory_floor
    if floor is None:
        from aigi.pipeline.rows import available_ram

        floor = nbytes * 2 < available_ram()
    if floor:
        rows["train in memory"], rows["step alone"] = [], []
        memory_cfg = memory_config(args.work, path.resolve(), nbytes=nbytes, batch=args.batch)
    how = ""
    for _ in range(args.repeat):
        if floor:
            rows["train in memory"].append(aigi_train(memory_cfg, args.work / "run"))
            rows["step alone"].append(step_floor(path, args.batch))
        how = evict(files, args.drop_caches)
        rows["bare read cold"].append(bare_read(files)[0])
        rows["bare read warm"].append(bare_read(files)[0])
        evict(files, args.drop_caches)
        rows["train cold"].append(aigi_train(cfg, args.work / "run"))
        rows["train warm"].append(aigi_train(cfg, args.work / "run"))
    result = report(rows, nbytes=nbytes, args=args, how=how, made=made)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "bench_stream.json").write_text(json.dumps(result, indent=2))
    if not args.keep:
        shutil.rmtree(args.work / "cache", ignore_errors=True)
    return 0


def report(rows: dict, *, nbytes: int, args, how: str, made: float) -> dict:
    best_read = {k: min(rows[f"bare read {k}"]) for k in ("cold", "warm")}
    best_train = {k: min(rows[f"train {k}"], key=lambda r: r["epoch_s"]) for k in ("cold", "warm")}
    print(
        f"\n{args.rows:,} x {args.dim} float16 = {nbytes / 1e9:.2f} GB in {len(shard_files(args.work / 'cache'))} "
        f"shards; budget {args.budget}; best of {args.repeat}; cold via {how}; load {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'page cache':<10} {'bare read s':>11} {'GB/s':>6} {'epoch s':>8} {'epoch/read':>10} {'wall s':>7} "
        f"{'peak RSS GB':>11}"
    )
    for k in ("cold", "warm"):
        t = best_train[k]
        print(
            f"{k:<10} {best_read[k]:>11.2f} {nbytes / best_read[k] / 1e9:>6.2f} {t['epoch_s']:>8.2f} "
            f"{t['epoch_s'] / best_read[k]:>10.2f} {t['wall_s']:>7.1f} {t['peak_rss_gb']:>11.2f}"
        )
    for line in best_train["warm"]["output"]:
        print("  " + line)
    if rows.get("train in memory"):
        t = min(rows["train in memory"], key=lambda r: r["epoch_s"])
        best_train["in memory"] = t
        print(
            f"floor: the same epoch with every row in memory as float16 (nothing read): {t['epoch_s']:.2f} s = "
            f"{t['epoch_s'] / best_read['warm']:.2f}x the warm bare read; streamed warm / in memory = "
            f"{best_train['warm']['epoch_s'] / t['epoch_s']:.2f}x (peak RSS {t['peak_rss_gb']:.2f} GB)"
        )
        step = min(rows["step alone"])
        print(
            f"floor: the linear step alone over the rows in memory, in storage order, all cores: {step:.2f} s = "
            f"{step / best_read['warm']:.2f}x the warm bare read"
        )
    return {
        "rows": args.rows,
        "dim": args.dim,
        "bytes": nbytes,
        "budget": args.budget,
        "batch": args.batch,
        "cold_via": how,
        "runs": rows,
        "best_read_s": best_read,
        "best_train": best_train,
        "make_cache_s": made,
        "loadavg": os.getloadavg(),
    }


if __name__ == "__main__":
    sys.exit(main())
