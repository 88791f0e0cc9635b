"""Benchmark head training: aigi's in-memory fit loop vs a per-file Dataset/DataLoader loop vs scikit-learn.

Usage: python benchmarks/bench_heads.py [--rows 200000 --dim 1024 --epochs 1 --batch-size 256 ...]
Prints a table and writes benchmarks/out/bench_heads.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from aigi import heads  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=200_000, help="synthetic rows (train + test)")
    p.add_argument("--dim", type=int, default=1024, help="synthetic feature width")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--hidden", type=int, default=256, help="mlp hidden width")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--dl-rows",
        type=int,
        default=0,
        help="train the per-file DataLoader on this many rows and "
        "extrapolate its time linearly to the full set (0 = all rows, measured)",
    )
    p.add_argument("--dl-workers", type=int, default=0, help="DataLoader workers of the per-file reference")
    p.add_argument(
        "--uar",
        type=Path,
        default=ROOT.parent / "shared" / "data" / "uar_sample",
        help="UAR feature folder (0_real/, 1_fake/ .npy files); skipped when absent",
    )
    p.add_argument("--skip-synthetic", action="store_true")
    p.add_argument("--skip-gating", action="store_true", help="skip the two-artifact gating vs mlp comparison")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "bench_heads.json")
    return p.parse_args(argv)


def synthetic(rows: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two Gaussian classes whose means differ along a random unit direction by 3 sigma, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, rows)
    direction = rng.standard_normal(dim).astype(np.float32)
    direction /= np.linalg.norm(direction)
    X = rng.standard_normal((rows, dim), dtype=np.float32)
    X += np.outer((y - 0.5) * 3.0, direction).astype(np.float32)
    return X, y


def uar_sample(folder: Path, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """UAR .npy features; returns X, y and a train mask of a seeded 80/20 split by pair (file stem)."""
    files = sorted(folder.glob("0_real/*.npy")) + sorted(folder.glob("1_fake/*.npy"))
    X = np.concatenate([np.load(f, allow_pickle=False).reshape(1, -1) for f in files]).astype(np.float32)
    y = np.array([1 if f.parent.name == "1_fake" else 0 for f in files])
    stems = np.array([f.stem for f in files])
    uniq = np.unique(stems)
    test = set(np.random.default_rng(seed).permutation(uniq)[: len(uniq) // 5])
    return X, y, np.array([s not in test for s in stems])


def copy_bandwidth(nbytes: int = 1 << 29) -> float:
    """Measured memory copy bandwidth in bytes/s (best of 3 copies of a `nbytes` buffer)."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return nbytes / best


def accuracy(p: np.ndarray, y: np.ndarray) -> float:
    return float(((p > 0.5).astype(int) == y).mean())


def run_ours(kind: str, Xtr, ytr, Xte, yte, args) -> dict:
    cfg = {"inputs": ["x"], "in_dim": Xtr.shape[1]}
    if kind == "mlp":
        cfg.update(hidden=args.hidden, dropout=0.0)
    head = heads.build(kind, **cfg)
    fit_cfg = heads.FitConfig(optimizer="adam", lr=args.lr, epochs=args.epochs, batch_size=args.batch_size)
    t = time.perf_counter()
    hist = heads.fit(head, {"x": Xtr}, ytr, cfg=fit_cfg)
    seconds = time.perf_counter() - t
    epoch = min(e["seconds"] for e in hist["stages"][0]["epochs"])
    return {"seconds": seconds, "epoch_seconds": epoch, "acc": accuracy(heads.predict(head, {"x": Xte}), yte)}


class NpyFiles(Dataset):
    """UAR's way: one .npy file per row, read in __getitem__."""

    def __init__(self, files: list[Path], labels: np.ndarray) -> None:
        self.files, self.labels = files, labels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.load(self.files[i], allow_pickle=False)).float().reshape(-1)
        return x, torch.tensor(float(self.labels[i]))


def write_files(X: np.ndarray, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"{i:07d}.npy" for i in range(len(X))]
    for f, row in zip(files, X, strict=True):
        np.save(f, row.reshape(1, -1))
    return files


def reference_model(kind: str, dim: int, hidden: int) -> nn.Module:
    """A plain torch model starting from the same weights as aigi's head (same init, so only training differs)."""
    if kind == "linear":
        model = nn.Linear(dim, 1)
        model.load_state_dict(heads.build("linear", inputs=["x"], in_dim=dim).linear.state_dict())
        return model
    model = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
    net = heads.build("mlp", inputs=["x"], in_dim=dim, hidden=hidden, dropout=0.0).net
    model[0].load_state_dict(net[0].state_dict())
    model[2].load_state_dict(net[3].state_dict())
    return model


def run_dataloader(kind: str, files, ytr, Xte, yte, args, *, full_rows: int) -> dict:
    torch.manual_seed(0)
    model = reference_model(kind, Xte.shape[1], args.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = nn.BCEWithLogitsLoss()
    loader = DataLoader(NpyFiles(files, ytr), batch_size=args.batch_size, shuffle=True, num_workers=args.dl_workers)
    t = time.perf_counter()
    for _ in range(args.epochs):
        for xb, yb in loader:
            loss = loss_fn(model(xb).squeeze(-1), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    seconds = time.perf_counter() - t
    with torch.no_grad():
        p = torch.sigmoid(model(torch.from_numpy(Xte)).squeeze(-1)).numpy()
    scale = full_rows / len(files)
    return {
        "seconds": seconds * scale,
        "measured_seconds": seconds,
        "rows_used": len(files),
        "extrapolated": scale != 1,
        "acc": accuracy(p, yte),
    }


def run_sklearn(Xtr, ytr, Xte, yte) -> dict:
    from sklearn.linear_model import LogisticRegression

    t = time.perf_counter()
    clf = LogisticRegression(max_iter=200).fit(Xtr, ytr)
    return {"seconds": time.perf_counter() - t, "acc": accuracy(clf.predict_proba(Xte)[:, 1], yte)}


def bench_dataset(name: str, Xtr, ytr, Xte, yte, args, bandwidth: float) -> dict:
    print(f"\n== {name}: train {Xtr.shape}, test {Xte.shape}, epochs {args.epochs}, batch {args.batch_size}")
    out: dict = {"train_shape": list(Xtr.shape), "test_rows": len(Xte)}
    tmp = Path(tempfile.mkdtemp(prefix="bench_heads_"))
    try:
        n_dl = args.dl_rows or len(Xtr)
        t = time.perf_counter()
        files = write_files(Xtr[:n_dl], tmp)
        out["write_files_seconds"] = time.perf_counter() - t
        print(f"wrote {len(files)} .npy files in {out['write_files_seconds']:.1f} s", flush=True)
        for kind in ("linear", "mlp"):
            ours = run_ours(kind, Xtr, ytr, Xte, yte, args)
            ref = run_dataloader(kind, files, ytr[:n_dl], Xte, yte, args, full_rows=len(Xtr))
            row = {
                "ours": ours,
                "dataloader": ref,
                "speedup": ref["seconds"] / ours["seconds"],
                "acc_gap_points": 100 * (ours["acc"] - ref["acc"]),
            }
            if kind == "linear":
                row["sklearn"] = run_sklearn(Xtr, ytr, Xte, yte)
                floor = Xtr.nbytes / bandwidth
                row["floor_seconds"] = floor
                row["epoch_vs_floor"] = ours["epoch_seconds"] / floor
            out[kind] = row
            print(f"{kind}: done ({row['speedup']:.1f}x)", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def floor_sweep(Xtr, ytr, bandwidth: float) -> list[dict]:
    """One linear epoch at several batch sizes against the bandwidth floor."""
    rows = []
    for bs in (32, 256, 4096, 32768):
        head = heads.build("linear", inputs=["x"], in_dim=Xtr.shape[1])
        hist = heads.fit(head, {"x": Xtr}, ytr, cfg=heads.FitConfig(optimizer="adam", epochs=2, batch_size=bs))
        epoch = min(e["seconds"] for e in hist["stages"][0]["epochs"])
        rows.append({"batch_size": bs, "epoch_seconds": epoch, "ratio": epoch / (Xtr.nbytes / bandwidth)})
    return rows


def two_artifact_set(n: int, dim: int, seed: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """Real rows ~ N(0, I). Fake type `vae:a` shifts the mean of dims 0-7 by +0.7; fake type `sr:b` scales dims
    8-15 by 1.8 (a variance change, invisible to the mean). Each fake type is detectable only in its own subspace."""
    rng = np.random.default_rng(seed)
    source = rng.choice(np.array(["real", "vae:a", "sr:b"]), size=n, p=[0.5, 0.25, 0.25])
    X = rng.standard_normal((n, dim)).astype(np.float32)
    X[source == "vae:a", 0:8] += 0.7
    X[source == "sr:b", 8:16] *= 1.8
    return {"x": X}, (source != "real").astype(int), source


def gating_vs_mlp(seeds: int = 3, dim: int = 64, n: int = 20_000) -> dict:
    """Fake ACC per fake type: `gating` over separately trained experts vs one jointly trained `mlp` of about the
    same parameter count, on `two_artifact_set`, mean over seeds."""
    cfg = heads.FitConfig(epochs=10, batch_size=256, lr=1e-3)
    out: dict = {"gating": [], "mlp": []}
    for seed in range(seeds):
        Xtr, ytr, src_tr = two_artifact_set(n, dim, seed)
        Xte, yte, src_te = two_artifact_set(n // 4, dim, 100 + seed)
        gating = heads.build("gating", inputs=["x"], in_dim=dim, rank=8, gate_hidden=32, seed=seed)
        size = sum(p.numel() for p in gating.parameters())
        mlp = heads.build("mlp", inputs=["x"], in_dim=dim, hidden=max(1, size // (dim + 2)), dropout=0.0, seed=seed)
        for name, head in (("gating", gating), ("mlp", mlp)):
            fit_cfg = heads.FitConfig(**{**cfg.__dict__, "seed": seed})
            heads.fit(head, Xtr, ytr, cfg=fit_cfg, groups={"source": src_tr})
            pred = heads.predict(head, Xte) > 0.5
            acc = {s: float((pred[src_te == s] == (s != "real")).mean()) for s in ("real", "vae:a", "sr:b")}
            out[name].append({"params": sum(p.numel() for p in head.parameters()), **acc})
    return {name: {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} for name, rows in out.items()}


def warm_up() -> None:
    """Pay one-time costs (torch.optim's first import of its compile helpers, ~2 s) before any timing."""
    X, y = synthetic(64, 8)
    heads.fit(heads.build("linear", inputs=["x"], in_dim=8), {"x": X}, y, cfg=heads.FitConfig(epochs=1))
    torch.optim.Adam(nn.Linear(2, 1).parameters())


def print_table(results: dict) -> None:
    print(f"\ncopy bandwidth {results['copy_bandwidth_gbps']:.2f} GB/s; torch threads {results['torch_threads']}")
    head = (
        f"{'set':<10} {'head':<7} {'(a) fit s':>10} {'(b) DataLoader s':>17} {'(c) sklearn s':>14} "
        f"{'a/b speedup':>11} {'acc a':>7} {'acc b':>7} {'acc c':>7} {'epoch/floor':>11}"
    )
    print(head)
    print("-" * len(head))
    for name, res in results["datasets"].items():
        for kind in ("linear", "mlp"):
            r = res[kind]
            sk = r.get("sklearn", {})
            dl = f"{r['dataloader']['seconds']:.2f}" + ("*" if r["dataloader"]["extrapolated"] else "")
            print(
                f"{name:<10} {kind:<7} {r['ours']['seconds']:>10.2f} {dl:>17} "
                f"{sk.get('seconds', float('nan')):>14.2f} {r['speedup']:>10.1f}x {100 * r['ours']['acc']:>7.2f} "
                f"{100 * r['dataloader']['acc']:>7.2f} {100 * sk.get('acc', float('nan')):>7.2f} "
                f"{r.get('epoch_vs_floor', float('nan')):>11.2f}"
            )
    if any(r[k]["dataloader"]["extrapolated"] for r in results["datasets"].values() for k in ("linear", "mlp")):
        print("* per-file DataLoader time measured on a subset and extrapolated linearly to all rows")
    if results.get("gating_vs_mlp"):
        print("\ntwo-artifact synthetic set (mean over 3 seeds): ACC per source")
    for name, r in results.get("gating_vs_mlp", {}).items():
        print(
            f"  {name:<7} params {r['params']:>7.0f}  real {100 * r['real']:.2f}  fake vae:a {100 * r['vae:a']:.2f}"
            f"  fake sr:b {100 * r['sr:b']:.2f}"
        )
    for name, sweep in results.get("floor_sweep", {}).items():
        print(f"\n{name}: one linear epoch vs the floor by batch size")
        for row in sweep:
            print(f"  batch {row['batch_size']:>6}: {row['epoch_seconds']:.3f} s = {row['ratio']:.2f}x floor")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warm_up()
    bandwidth = copy_bandwidth()
    results: dict = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "copy_bandwidth_gbps": bandwidth / 1e9,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "datasets": {},
        "floor_sweep": {},
    }
    if not args.skip_synthetic:
        X, y = synthetic(args.rows, args.dim)
        cut = int(0.8 * len(X))
        results["datasets"]["synthetic"] = bench_dataset(
            "synthetic", X[:cut], y[:cut], X[cut:], y[cut:], args, bandwidth
        )
        results["floor_sweep"]["synthetic"] = floor_sweep(X[:cut], y[:cut], bandwidth)
        del X
    if not args.skip_gating:
        results["gating_vs_mlp"] = gating_vs_mlp()
    if args.uar.is_dir():
        X, y, train = uar_sample(args.uar)
        results["datasets"]["uar"] = bench_dataset("uar", X[train], y[train], X[~train], y[~train], args, bandwidth)
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
