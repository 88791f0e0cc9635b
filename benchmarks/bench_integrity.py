"""Benchmark cache integrity: concurrent writers, single-byte flips, and what shard digests cost.

1. Concurrent extracts: REPS times, two `aigi extract` processes (a random-weight timm model) started together on
   one manifest and one new cache. Counted: rows lost (manifest keys missing), rows duplicated, processes crashed.
2. Concurrent imports: REPS times, two `aigi import uar` processes of different synthetic UAR folders started
   together into one new cache. Same counts.
3. Flips: FLIPS single-byte XORs at random offsets inside the feature data and inside the label data of an HDF5
   cache (half each); each is followed by `cache.verify` and undone. Counted: flips verify catches.
4. Cost: a ROWS x DIM float16 cache (about 400 MB): write time with and without computing the digest, verify time,
   the digest pass alone, and blake2b/sha256 throughput over the same shard files.

Usage: nice -n 10 python benchmarks/bench_integrity.py [--reps 20] [--flips 200] [--rows 200000] [--parts ...]
Prints a table and writes benchmarks/out/bench_integrity.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_extract import make_images, random_weights  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
BACKBONE = "timm:vit_tiny_patch16_224"

STARTER = """
import sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
Path({ready!r}).touch()
while not Path({go!r}).exists():  # both processes start their command together
    time.sleep(0.005)
from aigi.cli import main
sys.exit(main({argv!r}))
"""


def run_together(tmp: Path, argvs: list[list[str]]) -> list[int]:
    """Start one `aigi` process per argv, release them at the same moment, return their exit codes."""
    go = tmp / "go"
    go.unlink(missing_ok=True)
    kids = []
    for i, argv in enumerate(argvs):
        ready = tmp / f"ready{i}"
        ready.unlink(missing_ok=True)
        code = STARTER.format(root=str(ROOT), ready=str(ready), go=str(go), argv=argv)
        kids.append(subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True))  # fmt: skip
    while not all((tmp / f"ready{i}").exists() for i in range(len(kids))):
        time.sleep(0.01)
    go.touch()
    codes = []
    for k in kids:
        _, err = k.communicate(timeout=1800)
        if k.returncode:
            print(f"  process exited {k.returncode}: {err.strip().splitlines()[-1:]}", file=sys.stderr)
        codes.append(k.returncode)
    return codes


def count(cache_dir: Path, expected: set[tuple[str, str]]) -> dict:
    """Rows lost and duplicated in a cache against the expected (image_id, view) keys."""
    from aigi import cache

    try:
        meta = cache.open(cache_dir, keep_duplicates=True).meta()
    except (OSError, ValueError) as err:  # nothing usable was written
        print(f"  cannot read {cache_dir}: {err}", file=sys.stderr)
        return {"lost": len(expected), "duplicated": 0}
    keys = list(zip(meta["image_id"].astype(str), meta["view"].astype(str)))
    return {"lost": len(expected - set(keys)), "duplicated": len(keys) - len(set(keys))}


def bench_extracts(tmp: Path, reps: int, images: int) -> dict:
    manifest = make_images(tmp / "img", images, size=64)
    weights = random_weights(BACKBONE, tmp / "w.pth")
    expected = {(i, "orig") for i in pd.read_parquet(manifest)["image_id"].astype(str)}
    total = {"lost": 0, "duplicated": 0, "crashed": 0}
    start = time.perf_counter()
    for rep in range(reps):
        cache_dir = tmp / f"x{rep}"
        argv = ["extract", "--manifest", str(manifest), "--backbone", BACKBONE, "--weights", str(weights),
                "--features", "pooler", "--cache", str(cache_dir), "--shard-size", "4",
                "--batch-size", "4"]  # fmt: skip
        codes = run_together(tmp, [argv, argv])
        got = count(cache_dir, expected)
        total["crashed"] += sum(c != 0 for c in codes)
        total["lost"] += got["lost"]
        total["duplicated"] += got["duplicated"]
        print(f"  extract rep {rep + 1}/{reps}: exit {codes}, {got}", flush=True)
    return {**total, "reps": reps, "rows_per_rep": len(expected), "seconds": time.perf_counter() - start}


def uar_folder(root: Path, n: int, dim: int, seed: int) -> set[str]:
    rng = np.random.default_rng(seed)
    paths = set()
    for label in ("0_real", "1_fake"):
        (root / f"gen{seed}" / label).mkdir(parents=True)
        for i in range(n):
            np.save(root / f"gen{seed}" / label / f"{i}.npy", rng.standard_normal((1, dim)).astype(np.float32))
            paths.add(f"gen{seed}/{label}/{i}.npy")
    return paths


def bench_imports(tmp: Path, reps: int, files: int) -> dict:
    a, b = tmp / "uar_a", tmp / "uar_b"
    paths = uar_folder(a, files // 2, 64, 1) | uar_folder(b, files // 2, 64, 2)
    expected = {(hashlib.sha256(p.encode()).hexdigest(), "orig") for p in paths}
    total = {"lost": 0, "duplicated": 0, "crashed": 0}
    start = time.perf_counter()
    for rep in range(reps):
        out = tmp / f"i{rep}"
        argvs = [["import", "uar", str(f), "--cache", str(out), "--shard-size", "16"] for f in (a, b)]
        codes = run_together(tmp, argvs)
        got = count(out, expected)
        total["crashed"] += sum(c != 0 for c in codes)
        total["lost"] += got["lost"]
        total["duplicated"] += got["duplicated"]
        print(f"  import rep {rep + 1}/{reps}: exit {codes}, {got}", flush=True)
    return {**total, "reps": reps, "rows_per_rep": len(expected), "seconds": time.perf_counter() - start}


def _flip(file: Path, offset: int) -> None:
    with open(file, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ (1 << int(offset % 8))]))


def bench_flips(tmp: Path, flips: int) -> dict:
    import h5py

    from aigi import cache

    rng = np.random.default_rng(0)
    n, dim = 4000, 256
    meta = pd.DataFrame({"image_id": [f"{i:08d}" for i in range(n)], "path": [f"{i}.png" for i in range(n)],
                         "label": rng.integers(0, 2, n), "source": "s"})  # fmt: skip
    feats = {"x": rng.standard_normal((n, dim)).astype(np.float32)}
    path = tmp / "flips"
    with cache.CacheWriter(path, spec={"bench": "flips"}, features={"x": (dim,)}, shard_size=1000) as w:
        w.append(meta, feats)
    shards = sorted((path / "shards").glob("*.h5"))
    regions = {}
    for kind, dataset in (("feature", "features/x"), ("label", "meta/label")):
        regions[kind] = []
        for file in shards:
            with h5py.File(file, "r") as f:
                ds = f[dataset]
                regions[kind].append((file, ds.id.get_offset(), ds.id.get_storage_size()))
    caught = {"feature": 0, "label": 0}
    tried = {"feature": 0, "label": 0}
    for i in range(flips):
        kind = "feature" if i % 2 == 0 else "label"
        file, start, size = regions[kind][rng.integers(len(regions[kind]))]
        offset = int(start + rng.integers(size))
        _flip(file, offset)
        try:
            cache.verify(path)
        except ValueError as err:
            caught[kind] += file.name in str(err)
        _flip(file, offset)  # undo: the next flip meets a sound cache
        tried[kind] += 1
    cache.verify(path)
    return {"tried": tried, "caught": caught}


def bench_cost(tmp: Path, rows: int, dim: int) -> dict:
    import aigi.cache.writer as writer_mod
    from aigi import cache

    rng = np.random.default_rng(0)
    chunk = 4096
    base = rng.standard_normal((chunk, dim)).astype(np.float16)

    def write(path: Path) -> float:
        start = time.perf_counter()
        with cache.CacheWriter(path, spec={"bench": "cost"}, features={"x": (dim,)}, shard_size=chunk) as w:
            for lo in range(0, rows, chunk):
                n = min(chunk, rows - lo)
                ids = range(lo, lo + n)
                meta = pd.DataFrame({"image_id": [f"{i:09d}" for i in ids], "path": [f"{i}.png" for i in ids],
                                     "label": 0, "source": "s"})  # fmt: skip
                w.append(meta, {"x": base[:n]})
        return time.perf_counter() - start

    with_digest = write(tmp / "cost_a")
    real = writer_mod.bytes_digest
    writer_mod.bytes_digest = lambda data: "0" * 64  # the same write without hashing (a well-formed dummy digest)
    try:
        without = write(tmp / "cost_b")
    finally:
        writer_mod.bytes_digest = real
    files = sorted((tmp / "cost_a" / "shards").glob("*.h5"))
    size = sum(f.stat().st_size for f in files)
    for f in files:  # warm the page cache: every pass below reads from memory
        f.read_bytes()
    speed = {}
    for algo in ("blake2b", "sha256"):
        start = time.perf_counter()
        for f in files:
            with open(f, "rb") as fh:
                hashlib.file_digest(fh, algo)
        speed[algo] = size / 1e6 / (time.perf_counter() - start)
    start = time.perf_counter()
    cache.verify(tmp / "cost_a")
    verify_s = time.perf_counter() - start
    start = time.perf_counter()
    cache.open(tmp / "cost_a").load(dtype="float16")
    load_s = time.perf_counter() - start
    return {"rows": rows, "dim": dim, "mb": size / 1e6, "shards": len(files), "write_s": with_digest,
            "write_no_digest_s": without, "verify_s": verify_s, "digest_pass_s": size / 1e6 / speed["sha256"],
            "load_s": load_s, "blake2b_mb_s": speed["blake2b"], "sha256_mb_s": speed["sha256"]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--files", type=int, default=400, help=".npy files per import folder")
    ap.add_argument("--flips", type=int, default=200)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--parts", default="extract,import,flips,cost")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    out = OUT / "bench_integrity.json"
    result = json.loads(out.read_text()) if out.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "extract" in parts:
            result["extract"] = bench_extracts(tmp, args.reps, args.images)
        if "import" in parts:
            result["import"] = bench_imports(tmp, args.reps, args.files)
        if "flips" in parts:
            result["flips"] = bench_flips(tmp, args.flips)
        if "cost" in parts:
            result["cost"] = bench_cost(tmp, args.rows, args.dim)
    OUT.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print_table(result)


def print_table(r: dict) -> None:
    print(f"\n{'concurrent writers':<34}{'reps':>6}{'rows/rep':>10}{'lost':>7}{'dup':>7}{'crashed':>9}{'s':>8}")
    for key, name in (("extract", "two `aigi extract`, one job"), ("import", "two `aigi import uar`, 2 folders")):
        if key in r:
            x = r[key]
            print(f"{name:<34}{x['reps']:>6}{x['rows_per_rep']:>10}{x['lost']:>7}{x['duplicated']:>7}"
                  f"{x['crashed']:>9}{x['seconds']:>8.0f}")  # fmt: skip
    if "flips" in r:
        f = r["flips"]
        for kind in ("feature", "label"):
            print(f"single-byte flips in {kind} data: verify caught {f['caught'][kind]} of {f['tried'][kind]}")
    if "cost" in r:
        c = r["cost"]
        print(f"\ncost on {c['rows']:,} x {c['dim']} float16 ({c['mb']:.0f} MB, {c['shards']} shards):")
        print(f"  write with digest {c['write_s']:.1f} s, without {c['write_no_digest_s']:.1f} s")
        print(f"  verify (digest + read + NaN check) {c['verify_s']:.1f} s; digest pass {c['digest_pass_s']:.1f} s")
        print(f"  load {c['load_s']:.1f} s; blake2b {c['blake2b_mb_s']:.0f} MB/s, sha256 {c['sha256_mb_s']:.0f} MB/s")


if __name__ == "__main__":
    main()
