"""Benchmark the feature cache: write time, full-read and random-batch throughput for HDF5 and Parquet vs .npy."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aigi import cache  # noqa: E402

OUT_DIR = Path(__file__).resolve().parent / "out"


def _best(fn, repeat: int) -> float:
    """Best wall time of `repeat` calls (warm page cache after the first)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _make_data(rows: int, dim: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((rows, dim), dtype=np.float32).astype(np.float16)
    ids = [f"{i:064x}" for i in range(rows)]
    meta = pd.DataFrame(
        {
            "image_id": ids,
            "path": [f"gen{i % 8}/img_{i:07d}.png" for i in range(rows)],
            "label": (np.arange(rows) % 2).astype(np.int8),
            "source": [f"gen{i % 8}" for i in range(rows)],
            "split": np.where(np.arange(rows) % 10 == 0, "test", "train"),
        }
    )
    return meta, feats


def _interleaved(fn, ref, repeat: int) -> tuple[float, float]:
    """Best times of `fn` and of the reference `ref`, run alternately so both see the same machine load."""
    a, b = [], []
    for _ in range(repeat):
        a.append(_best(fn, 1))
        b.append(_best(ref, 1))
    return min(a), min(b)


def bench_compacted(*, root: Path, feats: np.ndarray, npy: Path, args) -> dict:
    """`aigi cache compact` of the HDF5 cache: one file, read like the shards."""
    t0 = time.perf_counter()
    out = cache.compact(root / "h5", root / "all.h5")
    compact_s = time.perf_counter() - t0
    os.sync()
    c = cache.open(out)
    c.meta()
    npy_load = lambda: np.load(npy, allow_pickle=False)
    feat_s, npy_s = _interleaved(lambda: c.load(dtype="float16"), npy_load, args.repeat)
    load16_s, npy2_s = _interleaved(lambda: cache.open(out).load(dtype="float16"), npy_load, args.repeat)
    rng = np.random.default_rng(2)
    k = min(args.batch, len(feats))
    batches = iter([rng.choice(len(feats), size=k, replace=False) for _ in range(args.repeat)])
    mm = np.load(npy, mmap_mode="r", allow_pickle=False)
    fixed = np.sort(rng.choice(len(feats), size=k, replace=False))
    batch_s, npy_batch_s = _interleaved(
        lambda: c.take(next(batches), dtype="float16"), lambda: np.asarray(mm[fixed]), args.repeat
    )
    nbytes = feats.nbytes
    result = {
        "format": "h5 compacted (1 file)",
        "write_s": compact_s,
        "write_GBps": nbytes / compact_s / 1e9,
        "features_read_GBps": nbytes / feat_s / 1e9,
        "npy_GBps_beside": nbytes / npy_s / 1e9,
        "features_vs_npy": npy_s / feat_s,
        "load_f16_GBps": nbytes / load16_s / 1e9,
        "load_f16_vs_npy": npy2_s / load16_s,
        "load_f32_s": float("nan"),
        "batch_ms": batch_s * 1e3,
        "batch_GBps": k * feats.shape[1] * 2 / batch_s / 1e9,
        "npy_batch_ms": npy_batch_s * 1e3,
        "bytes_on_disk": out.stat().st_size,
    }
    out.unlink()
    return result


def bench_format(fmt: str, *, root: Path, meta: pd.DataFrame, feats: np.ndarray, npy: Path, args) -> dict:
    """Write a cache in `fmt`, then time full reads and random batches, each beside the same .npy operation."""
    path = root / fmt
    nbytes, d = feats.nbytes, feats.shape[1]
    t0 = time.perf_counter()
    with cache.CacheWriter(
        path, spec={"bench": True, "dim": d}, features={"x": (d,)}, fmt=fmt, shard_size=args.shard_size
    ) as w:
        for lo in range(0, len(meta), 65536):
            w.append(meta.iloc[lo : lo + 65536], {"x": feats[lo : lo + 65536]})
    write_s = time.perf_counter() - t0
    os.sync()  # no background write-back while reading
    assert np.array_equal(cache.open(path).load(dtype="float16").features["x"], feats), f"{fmt}: read back differs"
    c = cache.open(path)
    c.meta()  # the meta index once (as a training run that loads several splits does); then features only
    npy_load = lambda: np.load(npy, allow_pickle=False)
    feat_s, npy_s = _interleaved(lambda: c.load(dtype="float16"), npy_load, args.repeat)
    load16_s, npy2_s = _interleaved(lambda: cache.open(path).load(dtype="float16"), npy_load, args.repeat)
    load32_s = _best(lambda: cache.open(path).load(), max(1, args.repeat // 2))
    rng = np.random.default_rng(1)
    k = min(args.batch, len(meta))
    batches = [rng.choice(len(meta), size=k, replace=False) for _ in range(args.repeat)]
    mm = np.load(npy, mmap_mode="r", allow_pickle=False)
    it = iter(batches)
    batch_s, npy_batch_s = _interleaved(
        lambda: c.take(next(it), dtype="float16"), lambda: np.asarray(mm[np.sort(batches[0])]), args.repeat
    )
    return {
        "format": fmt,
        "write_s": write_s,
        "write_GBps": nbytes / write_s / 1e9,
        "features_read_GBps": nbytes / feat_s / 1e9,
        "npy_GBps_beside": nbytes / npy_s / 1e9,
        "features_vs_npy": npy_s / feat_s,
        "load_f16_GBps": nbytes / load16_s / 1e9,
        "load_f16_vs_npy": npy2_s / load16_s,
        "load_f32_s": load32_s,
        "batch_ms": batch_s * 1e3,
        "batch_GBps": k * d * 2 / batch_s / 1e9,
        "npy_batch_ms": npy_batch_s * 1e3,
        "bytes_on_disk": c.bytes_on_disk(),
    }


def bench_parquet_types(*, root: Path, feats: np.ndarray, repeat: int) -> dict[str, float]:
    """Full-read GB/s of one Parquet file per Arrow column type for the same float16 matrix."""
    n, d = feats.shape
    flat = pa.array(feats.reshape(-1), type=pa.float16())
    columns = {
        "fixed_size_binary": pa.FixedSizeBinaryArray.from_buffers(pa.binary(2 * d), n, [None, pa.py_buffer(feats)]),
        "fixed_size_list<float16>": pa.FixedSizeListArray.from_arrays(flat, d),
        "list<float16>": pa.ListArray.from_arrays(pa.array(np.arange(0, n * d + 1, d, dtype=np.int32)), flat),
    }
    out = {}
    for name, column in columns.items():
        file = root / f"type_{name.replace('<', '_').replace('>', '')}.parquet"
        pq.write_table(pa.table({"x": column}), file, compression="none", use_dictionary=False, write_statistics=False)
        out[name] = feats.nbytes / _best(lambda f=file: pq.read_table(f).column(0).combine_chunks(), repeat) / 1e9
        file.unlink()
    return out


def print_table(results: list[dict], types: dict[str, float], rows: int, dim: int) -> None:
    """Print the results as a Markdown table."""
    print(f"\n{rows:,} x {dim} float16 ({rows * dim * 2 / 1e6:.1f} MB), best of repeats, warm page cache")
    print("each read is timed alternately with np.load of one .npy of the same matrix (ratio = npy time / ours)\n")
    print(
        "| format | write s | features read GB/s | npy GB/s beside | ratio | load() f16 GB/s | ratio | "
        "load() f32 s | 4096-row batch ms | npy memmap batch ms |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(
            f"| {r['format']} | {r['write_s']:.2f} | {r['features_read_GBps']:.2f} | {r['npy_GBps_beside']:.2f} | "
            f"{r['features_vs_npy']:.2f} | {r['load_f16_GBps']:.2f} | {r['load_f16_vs_npy']:.2f} | "
            f"{r['load_f32_s']:.2f} | {r['batch_ms']:.1f} | {r['npy_batch_ms']:.1f} |"
        )
    print(
        "\nfeatures read: Cache.load(dtype='float16') with the meta index already read (shards straight into one "
        "array); load() f16: cache.open + meta + features from scratch; f32: the same, cast to float32"
    )
    print("Parquet column type, full read GB/s: " + ", ".join(f"{k} {v:.2f}" for k, v in types.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--shard-size", type=int, default=16384)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tmp", type=Path, default=None, help="scratch directory (deleted afterwards)")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench_cache_", dir=args.tmp))
    try:
        meta, feats = _make_data(args.rows, args.dim, seed=0)
        npy = root / "x.npy"
        t0 = time.perf_counter()
        np.save(npy, feats)
        npy_write_s = time.perf_counter() - t0
        results = []
        for fmt in ("h5", "parquet"):
            results.append(bench_format(fmt, root=root, meta=meta, feats=feats, npy=npy, args=args))
            if fmt == "h5":
                results.append(bench_compacted(root=root, feats=feats, npy=npy, args=args))
            shutil.rmtree(root / fmt)
        types = bench_parquet_types(root=root, feats=feats[: min(len(feats), 50_000)], repeat=args.repeat)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_table(results, types, args.rows, args.dim)
    print(f"np.save of the .npy: {npy_write_s:.2f} s")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / f"bench_cache_{args.rows}x{args.dim}.json"
    out.write_text(
        json.dumps(
            {
                "rows": args.rows,
                "dim": args.dim,
                "shard_size": args.shard_size,
                "results": results,
                "parquet_types_GBps": types,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
