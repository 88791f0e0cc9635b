"""Streaming a run that joins two caches vs streaming one cache that holds both features, and vs in memory.

Data: `--rows` images with two float16 features, x (`--dim` wide) and z (`--dim` wide), stored three ways: cache A
holds x; cache B holds z for the same images in the same order, cache B' in a seeded random order (another
extraction order); cache C holds x and z. `aigi train` of a `concat` head on [x, z] (1 epoch, batch `--batch`,
`data.stream: true`, `data.memory_budget: --budget`) reads A + B, A + B', and C; then C in memory
(`data.stream: false`) as the reference. Fresh processes under `/usr/bin/time -v`: peak RSS, the epoch's wall, the
training loss (A + B and C see the same batches: their losses must be equal).

Prints a table and writes benchmarks/out/bench_stream_join.json. The caches are deleted afterwards unless `--keep`.
Run: `python benchmarks/bench_stream_join.py [--work DIR] [--rows N] [--dim D] [--budget 300MB]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
OUT_DIR = ROOT / "benchmarks" / "out"

from bench_stream import SPEC, aigi_train  # noqa: E402


def make_caches(work: Path, rows: int, dim: int, shard_size: int) -> dict[str, Path]:
    """Caches A (x), B (z, same order), B' (z, shuffled order) and C (x and z); skipped when complete."""
    import pandas as pd

    from aigi import cache

    paths = {k: work / k for k in ("A", "B", "Bshuf", "C")}
    if all((p / "cache.json").exists() and len(cache.open(p)) == rows for p in paths.values()):
        return paths
    for p in paths.values():
        shutil.rmtree(p, ignore_errors=True)
    rng = np.random.default_rng(0)
    w = rng.standard_normal(2 * dim).astype(np.float32) / np.sqrt(2 * dim)
    order = rng.permutation(rows)
    x = rng.standard_normal((rows, dim), dtype=np.float32).astype(np.float16)
    z = rng.standard_normal((rows, dim), dtype=np.float32).astype(np.float16)
    y = (np.hstack([x, z]).astype(np.float32) @ w * 4 + rng.logistic(size=rows) > 0).astype(np.int64)
    ids = [f"{i:09d}" for i in range(rows)]
    meta = pd.DataFrame({"image_id": ids, "path": ids, "label": y, "source": np.where(y == 1, "fake", "real"),
                         "split": "train"})  # fmt: skip
    writes = {"A": ({"x": x}, None), "B": ({"z": z}, None), "Bshuf": ({"z": z}, order), "C": ({"x": x, "z": z}, None)}
    for key, (feats, perm) in writes.items():
        dims = {n: (dim,) for n in feats}
        with cache.CacheWriter(paths[key], spec=SPEC, features=dims, shard_size=shard_size, dtype="float16") as out:
            for lo in range(0, rows, shard_size):
                take = np.arange(lo, min(rows, lo + shard_size)) if perm is None else perm[lo : lo + shard_size]
                out.append(meta.iloc[take].reset_index(drop=True), {n: v[take] for n, v in feats.items()})
    return paths


def write_config(work: Path, name: str, caches: dict[str, Path], *, budget: str, batch: int, stream: str) -> Path:
    cfg = work / f"join_{name}.yaml"
    listed = ", ".join(f"{alias}: {path.resolve()}" for alias, path in caches.items())
    cfg.write_text(
        "head: {name: concat, inputs: [x, z]}\n"
        f"fit: {{optimizer: adam, lr: 1.0e-3, epochs: 1, batch_size: {batch}, seed: 0}}\n"
        f"data: {{caches: {{{listed}}}, train: train, val_fraction: 0.0, stream: {stream}, "
        f"memory_budget: {budget}}}\n"
    )
    return cfg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("bench_work/stream_join"))
    p.add_argument("--rows", type=int, default=500_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--shard-size", type=int, default=65536)
    p.add_argument("--budget", default="300MB")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--keep", action="store_true", help="keep the synthetic caches")
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    paths = make_caches(args.work, args.rows, args.dim, args.shard_size)
    runs = {
        "A + B (same order), streamed": ({"a": paths["A"], "b": paths["B"]}, "true"),
        "A + B' (other order), streamed": ({"a": paths["A"], "b": paths["Bshuf"]}, "true"),
        "C (both features), streamed": ({"c": paths["C"]}, "true"),
        "C (both features), in memory": ({"c": paths["C"]}, "false"),
    }
    rows = []
    for name, (caches, stream) in runs.items():
        cfg = write_config(args.work, str(len(rows)), caches, budget=args.budget, batch=args.batch, stream=stream)
        got = aigi_train(cfg, args.work / "run")
        head = json.loads((args.work / "run" / "head.json").read_text())
        got["loss"] = head["history"]["stages"][0]["epochs"][0]["loss"]
        rows.append({"run": name, **got})
    print(f"\n{args.rows:,} rows, x and z {args.dim} float16 each; budget {args.budget}; load {os.getloadavg()[0]:.1f}")
    print(f"{'run':<32} {'epoch s':>8} {'wall s':>7} {'peak RSS GB':>11} {'loss':>9}")
    for r in rows:
        print(f"{r['run']:<32} {r['epoch_s']:>8.2f} {r['wall_s']:>7.1f} {r['peak_rss_gb']:>11.2f} {r['loss']:>9.6f}")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    result = {"rows": args.rows, "dim": args.dim, "budget": args.budget, "runs": rows, "loadavg": os.getloadavg()}
    (OUT_DIR / "bench_stream_join.json").write_text(json.dumps(result, indent=2))
    if not args.keep:
        for path in paths.values():
            shutil.rmtree(path, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
