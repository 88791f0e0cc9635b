"""`aigi ablate configs/ablate_fusion.yaml` on UAR's shipped features plus a synthetic SR-type fake domain, timed.

Recipe (each step is an `aigi` command; re-running skips finished work):
1. `aigi import uar UAR_SAMPLE --cache WORK/uar_import --source vae:sd14 --split-ratio train=0.6,val=0.2,test=0.2`:
   2,000 real ImageNet images and their SD-1.4 VAE reconstructions as AIM-3B `probe` features (3072-d).
2. WORK/uar_sr (written here with `cache.CacheWriter`): the same rows, reals renamed to source `real`, plus one
   synthetic SR-type fake per real (source `sr:synthetic`, same pair_id and split): the real's feature shifted
   inside a random rank-16 subspace of the 3072-d space, as `bench_fusion.make_fakes` documents (shift 2.5,
   jitter 0.5, noise 0.3, in units of the reals' RMS per-dimension std). The spec records the generator.
3. `aigi domains --cache WORK/uar_sr --k 4 -o WORK/uar_sr_domains.parquet` (k-means: the cache holds no CLIP `proj`).
4. `aigi ablate configs/ablate_fusion.yaml --cache uar=WORK/uar_sr --set data.domains=WORK/uar_sr_domains.parquet
   -o WORK/ablation --jobs 2`: 6 heads x 3 seeds; timed from a cold start (no finished run).

Prints the step times and summary.md; writes benchmarks/out/bench_ablate.json. Besides wall seconds it measures the
ablate step's CPU seconds (this process and every worker), and its peak memory: the process tree's summed PSS
(shared pages counted once, split between the processes sharing them) and summed RSS (shared pages counted in every
process), sampled every 0.2 s, against the rows' float32 bytes.
`--sweep`: also times a sweep of 8 learning rates x 3 seeds of the linear head on the training rows (`heads.fit_many`,
one bank) against the same 24 heads fitted one at a time (`heads.fit`).
Run: `python benchmarks/bench_ablate.py [--uar DIR] [--work DIR] [--jobs 2] [--copies N] [--keep] [--sweep]`.
`--prepare-only --work features` stops after step 3, leaving features/uar_sr and features/uar_sr_domains.parquet:
the data `configs/ablate_fusion.yaml` reads by default.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_fusion import make_fakes, subspaces  # noqa: E402

SR_SOURCE = "sr:synthetic"
SR_PARAMS = {"rank": 16, "shift": 2.5, "jitter": 0.5, "noise": 0.3, "seed": 0}


def add_sr_domain(staged: Path, out: Path, fraction: float = 1.0) -> Path:
    """Copy the imported UAR cache to `out` with reals as source `real` and one synthetic SR fake per real (for the
    first `fraction` of the reals)."""
    from aigi import cache

    if (out / "cache.json").exists():
        return out
    src = cache.open(staged)
    fs = src.load()
    meta = fs.meta.copy()
    x = fs.features["probe"]
    real = meta["label"].to_numpy() == 0
    meta.loc[real, "source"] = "real"
    real = real.copy()
    rng = np.random.default_rng(SR_PARAMS["seed"])
    basis = subspaces(x.shape[1], SR_PARAMS["rank"], seed=SR_PARAMS["seed"])["B"]
    args = {k: SR_PARAMS[k] for k in ("shift", "jitter", "noise")}
    real[np.flatnonzero(real)[int(round(fraction * real.sum())) :]] = False
    sr_x = make_fakes(x[real], basis, rng=rng, **args)
    sr = meta[real].copy()
    sr["path"] = [f"{SR_SOURCE}/{p}" for p in sr["path"]]  # unique also when the sample is imported twice
    sr["image_id"] = [hashlib.sha256(p.encode()).hexdigest() for p in sr["path"]]
    sr["label"], sr["source"] = 1, SR_SOURCE
    spec = {**src.spec, "synthetic_sr": {"source": SR_SOURCE, "generator": "bench_fusion.make_fakes", **SR_PARAMS}}
    with cache.CacheWriter(out, spec=spec, features={"probe": (x.shape[1],)}, dtype="float32") as writer:
        writer.append(pd.concat([meta, sr], ignore_index=True), {"probe": np.concatenate([x, sr_x])})
    return out


def _rows_bytes(combined: Path) -> int:
    """Bytes of every row of the cache's features as float32."""
    from aigi import cache

    store = cache.open(combined)
    return len(store) * sum(int(np.prod(s)) for s in store.features.values()) * 4


def run_breakdown(ablation: Path) -> list[dict]:
    """Per-run seconds from each run's result.json: load (open + load), fit, write, eval, total; printed."""
    rows = []
    for file in sorted((ablation / "runs").glob("*/result.json")):
        r = json.loads(file.read_text(encoding="utf-8"))
        st = r.get("stage_seconds") or {}
        load = st.get("open", float("nan")) + st.get("load", float("nan"))
        fit = st.get("fit", r.get("train_seconds", float("nan")))
        rows.append({"run": r["run_id"], "variant": r["variant"], "seed": r["seed"], "load": load, "fit": fit,
                     "write": st.get("write", float("nan")), "eval": st.get("eval", float("nan")),
                     "total": r["seconds"], "cpu": r.get("cpu_seconds", float("nan")), "pid": r["pid"]})  # fmt: skip
    print(f"{'run':<24} {'load s':>7} {'fit s':>7} {'write s':>7} {'eval s':>7} {'total s':>8} {'cpu s':>7} {'pid':>8}")
    for r in rows:
        print(f"{r['variant'] + ' s' + str(r['seed']):<24} {r['load']:>7.2f} {r['fit']:>7.2f} {r['write']:>7.2f} "
              f"{r['eval']:>7.2f} {r['total']:>8.2f} {r['cpu']:>7.2f} {r['pid']:>8}")  # fmt: skip
    print(f"{'sum':<24} " + " ".join(f"{sum(r[k] for r in rows):>{w}.2f}" for k, w in
          (("load", 7), ("fit", 7), ("write", 7), ("eval", 7), ("total", 8), ("cpu", 7))))  # fmt: skip
    return rows


def cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by this process, its ended children and its live descendants (the
    ablation's worker processes outlive the step): what the step costs whatever else the machine runs."""
    import resource

    import psutil

    me = psutil.Process()
    ended = resource.getrusage(resource.RUSAGE_CHILDREN)
    live = 0.0
    for child in me.children(recursive=True):
        try:
            t = child.cpu_times()
            live += t.user + t.system
        except psutil.Error:  # ended meanwhile
            pass
    own = me.cpu_times()
    return own.user + own.system + ended.ru_utime + ended.ru_stime + live


class MemorySampler:
    """Peak summed PSS and RSS of this process and its descendants, sampled every `every` seconds on a thread."""

    def __init__(self, every: float = 0.2) -> None:
        import threading

        self.every, self.peak_pss, self.peak_rss = every, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="memory-sampler")

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.wait(self.every):
            pss = rss = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    info = p.memory_full_info()
                except psutil.Error:  # ended meanwhile
                    continue
                pss, rss = pss + info.pss, rss + info.rss
            self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)


def lr_seed_sweep(combined: Path, *, lrs: int = 8, seeds: int = 3) -> dict:
    """Seconds of fitting `lrs` x `seeds` linear heads on the training rows as one bank, and one at a time."""
    import torch

    from aigi import cache, heads

    train = cache.open(combined).load(["probe"], where={"split": "train", "view": "orig"})
    val = cache.open(combined).load(["probe"], where={"split": "val", "view": "orig"})
    grid = [(1e-4 * 2**i, s) for i in range(lrs) for s in range(seeds)]
    base = heads.FitConfig(optimizer="adamw", epochs=2, batch_size=128, balance=True, device="cpu")

    def members() -> list:
        return [heads.Member(heads.build("linear", dims=train.dims, inputs=["probe"], seed=s),
                             heads.FitConfig(**{**base.__dict__, "lr": lr, "seed": s})) for lr, s in grid]  # fmt: skip

    torch.set_num_threads(1)
    heads.fit_many(members()[:2], train, train.labels)  # warm: imports, first allocations
    out = {}
    for how in ("bank", "one at a time"):
        ms = members()
        start, cpu = time.perf_counter(), time.process_time()
        if how == "bank":
            heads.fit_many(ms, train, train.labels, X_val=val, y_val=val.labels)
        else:
            for m in ms:
                heads.fit(m.head, train, train.labels, cfg=m.cfg, X_val=val, y_val=val.labels)
        out[how] = {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu}
    out["heads"], out["rows"] = len(grid), len(train)
    print(f"sweep: {len(grid)} linear heads ({lrs} lr x {seeds} seeds) on {len(train):,} rows, 2 epochs, validated "
          f"every epoch: bank {out['bank']['seconds']:.2f} s ({out['bank']['cpu']:.2f} CPU-s), one at a time "
          f"{out['one at a time']['seconds']:.2f} s ({out['one at a time']['cpu']:.2f} CPU-s); one thread")  # fmt: skip
    return out


def _timed(label: str, argv: list[str], times: dict) -> None:
    from aigi.cli import main

    start = time.perf_counter()
    code = main(argv)
    times[label] = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"{label} failed with exit code {code}")


def main(argv: list[str] | None = None) -> int:
    shared = Path(os.environ.get("AIGI_SHARED", ROOT.parent / "shared"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uar", type=Path, default=shared / "data" / "uar_sample", help="UAR .npy sample folder")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "out" / "ablate_work")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--copies", type=int, default=1, help="import the sample this many times (4 -> 16,000 rows)")
    parser.add_argument("--sr-fraction", type=float, default=1.0, help="share of reals given an SR fake (0.5)")
    parser.add_argument("--keep", action="store_true", help="keep finished runs (default: time a cold ablation)")
    parser.add_argument("--sweep", action="store_true", help="also time the 8 lr x 3 seed sweep of the linear head")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "bench_ablate.json")
    parser.add_argument(
        "--prepare-only", action="store_true", help="make the caches (steps 1-3) and stop, without the timed ablation"
    )
    args = parser.parse_args(argv)
    if not args.uar.is_dir():
        raise SystemExit(f"{args.uar} is absent: pass --uar FOLDER (UAR's 0_real/1_fake .npy features)")
    work, times = args.work, {}
    staged, combined, domains, ablation = (
        work / "uar_import",
        work / "uar_sr",
        work / "uar_sr_domains.parquet",
        work / "ablation",
    )
    for k in range(args.copies):  # the sample again under another source: new paths, new rows
        source = "vae:sd14" if k == 0 else f"vae:sd14-copy{k}"
        split = ["--split-ratio", "train=0.6,val=0.2,test=0.2"]
        argv = ["import", "uar", str(args.uar), "--cache", str(staged), "--source", source, *split]
        _timed(f"import{k}", argv, times)
    start = time.perf_counter()
    add_sr_domain(staged, combined, args.sr_fraction)
    times["sr_domain"] = time.perf_counter() - start
    if not domains.is_file() or domains.stat().st_mtime < (combined / "cache.json").stat().st_mtime:
        _timed("domains", ["domains", "--cache", str(combined), "--k", "4", "-o", str(domains)], times)
    if args.prepare_only:
        print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()) + f" (load {os.getloadavg()[0]:.2f})")
        print(f"made {combined} and {domains}; now: aigi ablate configs/ablate_fusion.yaml --cache uar={combined} "
              f"--set data.domains={domains} -o ablations/fusion --jobs 2")  # fmt: skip
        return 0
    if ablation.exists() and not args.keep:
        shutil.rmtree(ablation)
    load_before, cpu_before = os.getloadavg(), cpu_seconds()
    with MemorySampler() as memory:
        argv = ["ablate", str(ROOT / "configs" / "ablate_fusion.yaml"), "--cache", f"uar={combined}", "--set",
                f"data.domains={domains}", "-o", str(ablation), "--jobs", str(args.jobs)]  # fmt: skip
        _timed("ablate", argv, times)
    times["ablate_cpu"] = cpu_seconds() - cpu_before
    summary = (ablation / "summary.md").read_text(encoding="utf-8")
    print(summary)
    runs = run_breakdown(ablation)
    load = {"before": load_before, "after": os.getloadavg()}
    rows_bytes = _rows_bytes(combined)
    print(f"peak memory of the ablate step: PSS {memory.peak_pss / 1e9:.2f} GB (shared pages counted once), summed "
          f"RSS {memory.peak_rss / 1e9:.2f} GB; the rows as float32: {rows_bytes / 1e9:.2f} GB "
          f"(PSS {memory.peak_pss / rows_bytes:.2f}x)")  # fmt: skip
    sweep = lr_seed_sweep(combined) if args.sweep else None
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()) + f" (cores: {os.cpu_count()}; load "
          f"average {load['before'][0]:.2f} before the ablate step, {load['after'][0]:.2f} after)")  # fmt: skip
    table = pd.read_parquet(ablation / "results.parquet")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "seconds": times,
        "memory": {"peak_pss": memory.peak_pss, "peak_rss_sum": memory.peak_rss, "rows_float32": rows_bytes},
        "sweep": sweep,
        "jobs": args.jobs,
        "load_average": load,
        "runs": len(table),
        "summary_md": summary,
        "per_run": runs,
        "results": json.loads(table.to_json(orient="records")),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"-> {args.out}, {ablation}/summary.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
