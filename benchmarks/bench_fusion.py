"""Synthetic two-artifact-domain set: fake-ACC per fake type of `gating` over separate experts vs one same-size mlp.

The generator (also used by bench_ablate.py for its synthetic SR-type fakes):

- Real rows: x ~ N(0, I_D) (or given real features, e.g. UAR's AIM-3B `probe` vectors).
- 2r orthonormal vectors Q of R^D (QR of a seeded Gaussian D x 2r matrix) give two disjoint (orthogonal)
  rank-r subspaces: S_A = span(Q[:, 0:r]) and S_B = span(Q[:, r:2r]).
- Fake type k in {A, B} is made from a real row (same pair_id, so it is an "aligned" fake):
  x_fake = x_real + sigma * (Q_k (m * u_k + j * e) + n * z), with u_k a fixed random unit vector of R^r, e ~ N(0, I_r),
  z ~ N(0, I_D); sigma is the real rows' RMS per-dimension std (1 for N(0, I)). m is the shift, j the jitter
  inside the subspace, n the isotropic noise. Each fake type is thus detectable only inside its own subspace.
- Sources: reals `real`, type A `vae:synth`, type B `sr:synth`; splits by pair (train/val/test).

What is compared (each trained by `aigi ablate` on a cache written with `cache.CacheWriter`, 3 seeds):
`gating` (two experts trained apart on real vs vae:* and real vs sr:*, then a softmax gate + classifier) against a
plain `mlp` (D -> hidden -> 1) trained jointly on all rows, with `hidden` chosen so that both have the same total
parameter count; `linear` as a reference. Reported: fake-ACC (threshold 0.5) per fake type on the test split, and
AP per type, in a balanced scenario and one where type B is rare in training (10% of the B fakes kept there).

Run: `python benchmarks/bench_fusion.py [--dim 128] [--pairs 1500] [--jobs 1]`; prints a table and writes
benchmarks/out/bench_fusion.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SOURCES = {"A": "vae:synth", "B": "sr:synth"}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def subspaces(dim: int, rank: int, *, seed: int) -> dict[str, np.ndarray]:
    """Two orthogonal rank-`rank` bases {"A": [D, r], "B": [D, r]} from a seeded random rotation."""
    if 2 * rank > dim:
        raise ValueError(f"two rank-{rank} subspaces need dim >= {2 * rank}, got {dim}")
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, 2 * rank)))  # orthonormal columns
    return {"A": q[:, :rank], "B": q[:, rank : 2 * rank]}


def make_fakes(
    reals: np.ndarray,
    basis: np.ndarray,
    *,
    shift: float,
    jitter: float,
    noise: float,
    rng: np.random.Generator,
    direction: np.ndarray | None = None,
) -> np.ndarray:
    """Fakes made from `reals`: a shift of size `shift` along a fixed direction of span(basis), jitter inside it,
    isotropic noise; all in units of the reals' RMS per-dimension std."""
    sigma = float(np.sqrt(reals.astype(np.float64).var(axis=0).mean())) or 1.0
    rank = basis.shape[1]
    if direction is None:
        direction = rng.standard_normal(rank)
    direction = direction / np.linalg.norm(direction)
    inside = shift * direction + jitter * rng.standard_normal((len(reals), rank))
    out = reals + sigma * (inside @ basis.T + noise * rng.standard_normal(reals.shape))
    return out.astype(np.float32)


def synthetic_rows(
    *, pairs: int, dim: int, rank: int, shift: float, jitter: float, noise: float, rare_b: float, seed: int
) -> tuple[pd.DataFrame, np.ndarray]:
    """Meta rows and features: `pairs` reals, each with a type-A and a type-B fake (B kept in training with
    probability `rare_b`)."""
    from aigi import cache

    rng = np.random.default_rng(seed)
    reals = rng.standard_normal((pairs, dim)).astype(np.float32)
    bases = subspaces(dim, rank, seed=seed + 1)
    ids = [_sha(f"real/{i}") for i in range(pairs)]
    meta = [
        pd.DataFrame(
            {"image_id": ids, "path": [f"real/{i}" for i in range(pairs)], "label": 0, "source": "real", "pair_id": ids}
        )
    ]
    feats = [reals]
    for kind, source in SOURCES.items():
        fakes = make_fakes(reals, bases[kind], shift=shift, jitter=jitter, noise=noise, rng=rng)
        paths = [f"{source}/{i}" for i in range(pairs)]
        meta.append(
            pd.DataFrame(
                {"image_id": [_sha(p) for p in paths], "path": paths, "label": 1, "source": source, "pair_id": ids}
            )
        )
        feats.append(fakes)
    frame = cache.assign_splits(pd.concat(meta, ignore_index=True), {"train": 0.6, "val": 0.2, "test": 0.2}, seed=seed)
    x = np.concatenate(feats)
    drop = (frame["source"] == SOURCES["B"]) & (frame["split"] != "test") & (rng.random(len(frame)) >= rare_b)
    keep = ~drop.to_numpy()
    return frame[keep].reset_index(drop=True).assign(view="orig"), x[keep]


def write_cache(path: Path, meta: pd.DataFrame, x: np.ndarray, *, spec: dict) -> Path:
    """Write the rows as a feature cache (feature `x`, float32) with `cache.CacheWriter`."""
    from aigi import cache

    with cache.CacheWriter(path, spec=spec, features={"x": (x.shape[1],)}, dtype="float32") as writer:
        writer.append(meta, {"x": x})
    return path


def param_count(name: str, dim: int, **cfg) -> int:
    """Total parameter count of head `name` on a `dim`-wide input `x`."""
    from aigi import heads

    return sum(p.numel() for p in heads.build(name, inputs=["x"], in_dim=dim, **cfg).parameters())


def ablation_config(cache_path: Path, *, dim: int, seeds: list[int], epochs: int) -> tuple[dict, dict]:
    """The ablation (linear, gating, size-matched mlp) and the parameter counts."""
    experts = {"vae": [f"{SOURCES['A']}"], "sr": [f"{SOURCES['B']}"]}
    gating = {"name": "gating", "inputs": ["x"], "experts": experts, "rank": 16, "gate_hidden": 64}
    n_gating = param_count("gating", dim, **{k: v for k, v in gating.items() if k not in ("name", "inputs")})
    hidden = max(1, round((n_gating - 1) / (dim + 2)))  # plain mlp: D*h + h + h + 1 parameters
    mlp = {"name": "mlp", "inputs": ["x"], "hidden": hidden, "depth": 1, "dropout": 0.0}
    counts = {
        "gating": n_gating,
        "mlp": param_count("mlp", dim, hidden=hidden, depth=1, dropout=0.0),
        "linear": param_count("linear", dim),
    }
    cfg = {
        "head": {"name": "linear", "inputs": ["x"]},
        "fit": {"optimizer": "adamw", "lr": 3e-3, "epochs": epochs, "batch_size": 64, "balance": True, "device": "cpu"},
        "data": {"caches": {"syn": str(cache_path)}, "where": {"view": "orig"}},
        "eval": {"by": "source", "reals": "paired"},
        "variants": {"linear": {}, "gating": {"head": gating}, f"mlp_h{hidden}": {"head": mlp}},
        "seeds": seeds,
        "sort_by": "fake_acc",
    }
    return cfg, counts


def run_scenario(name: str, *, args: argparse.Namespace, work: Path) -> dict:
    """Build one scenario's cache, run the ablation, and return per-type results."""
    from aigi.pipeline.ablate import AblateOptions, RunSteps, expand, run_ablation
    from aigi.pipeline.evaluate import EvalOptions, evaluate_run
    from aigi.pipeline.train import TrainOptions, train_run

    meta, x = synthetic_rows(
        pairs=args.pairs,
        dim=args.dim,
        rank=args.rank,
        shift=args.shift,
        jitter=args.jitter,
        noise=args.noise,
        rare_b=1.0 if name == "balanced" else args.rare,
        seed=args.seed,
    )
    spec = {
        "generator": "bench_fusion",
        "scenario": name,
        **{k: v for k, v in vars(args).items() if k not in ("jobs", "out")},
    }
    store = write_cache(work / name / "cache", meta, x, spec=spec)
    cfg, counts = ablation_config(store, dim=args.dim, seeds=args.seeds, epochs=args.epochs)
    start = time.perf_counter()
    steps = RunSteps(train=train_run, evaluate=evaluate_run, train_options=TrainOptions(), eval_options=EvalOptions())
    options = AblateOptions(jobs=args.jobs, progress=False)
    out = run_ablation(expand(cfg, source=name), work / name / "ablation", steps, options)
    seconds = time.perf_counter() - start
    rows = []
    for _, r in out.summary.iterrows():
        row = {"scenario": name, "head": r["variant"], "params": counts.get(r["variant"].split("_")[0])}
        for kind, source in SOURCES.items():
            for metric in ("fake_acc", "ap"):
                row[f"{kind}_{metric}"] = [float(r[f"{source}/{metric}.mean"]), float(r[f"{source}/{metric}.std"])]
        row["real_acc"] = [float(r["real_acc.mean"]), float(r["real_acc.std"])]
        rows.append(row)
    train = meta[meta["split"] == "train"]["source"].value_counts().to_dict()
    return {"scenario": name, "rows": rows, "train_counts": train, "seconds": seconds}


def _cell(pair: list[float]) -> str:
    return f"{100 * pair[0]:6.2f} ± {100 * pair[1]:4.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=1500)
    parser.add_argument("--shift", type=float, default=2.5, help="fake shift along its direction (x sigma)")
    parser.add_argument("--jitter", type=float, default=0.5, help="in-subspace jitter (x sigma)")
    parser.add_argument("--noise", type=float, default=0.3, help="isotropic noise added to fakes (x sigma)")
    parser.add_argument("--rare", type=float, default=0.1, help="share of type-B fakes kept for training (rare)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "bench_fusion.json")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for scenario in ("balanced", "rare_b"):
            results.append(run_scenario(scenario, args=args, work=Path(tmp)))
    print(
        f"synthetic two-artifact set: D={args.dim}, r={args.rank}, shift {args.shift}, jitter {args.jitter}, "
        f"noise {args.noise}, {args.pairs} pairs, seeds {args.seeds}; test split, threshold 0.5, % mean ± std"
    )
    print(
        f"{'scenario':9} {'head':12} {'params':>7} {'fake-ACC A (vae)':>17} {'fake-ACC B (sr)':>17} "
        f"{'AP A':>15} {'AP B':>15} {'real ACC':>15}"
    )
    for res in results:
        for row in res["rows"]:
            print(
                f"{res['scenario']:9} {row['head']:12} {row['params'] or 0:7d} {_cell(row['A_fake_acc']):>17} "
                f"{_cell(row['B_fake_acc']):>17} {_cell(row['A_ap']):>15} {_cell(row['B_ap']):>15} "
                f"{_cell(row['real_acc']):>15}"
            )
        print(f"  ({res['scenario']}: training rows per source {res['train_counts']}; {res['seconds']:.1f} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    args.out.write_text(json.dumps({"settings": settings, "results": results}, indent=2) + "\n", encoding="utf-8")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
