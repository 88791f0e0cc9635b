"""SEF with its LoRA experts inside the last blocks (`tail_sef`) against SEF on pooled features (`gating`), on the
demo's data: fake ACC per fake type.

Data: `aigi demo --quick` output made with a ViT and token features, i.e.
`aigi demo -o DIR --quick --no-ablate --backbone timm:vit_tiny_patch16_224 --features l8.tokens,l10.tokens,pooler
--head-input pooler` (80 real 224-px crops of the bundled photos, their VAE reconstructions and GAN SR
re-upsamplings, split by pair; `--vae-weights` / `--sr-weights` name the pretrained TAEF2 / Real-ESRGAN files).
The backbone is a random-weight vit_tiny (no pretrained ViT exists offline), saved to a file by the demo.

Heads (same fit settings, 3 seeds): `gating` on `pooler` (two rank-16 residual adapters trained apart, then gate +
classifier), `tail_sef` on `l10.tokens` (k = 1: LoRA rank 16 on q/k/v/out of block 11, classifier on the tail's
`pooler`). Reported on the test split: ACC of the reals, fake ACC of
each fake type at threshold 0.5, AP of each fake type against the reals; mean +- std over seeds.

Run: `nice -n 10 python benchmarks/bench_tail_sef.py [--demo DIR] [--seeds 0,1,2] [--epochs 10]` (the demo is made in
DIR, default demo_out_tail/, when absent); prints a table and writes benchmarks/out/bench_tail_sef.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNS = {  # name -> (head, input, extra config)
    "gating (pooler, adapted)": ("gating", "pooler", {"rank": 16, "gate_hidden": 128}),
    "tail_sef k=1 (l10.tokens)": ("tail_sef", "l10.tokens", {"rank": 16, "gate_hidden": 128}),
}


def make_demo(demo: Path) -> None:
    """Run the demo command of the module doc into `demo` (resumes; pretrained fakes from ../shared when present)."""
    from pipeline.cli import main as aigi

    shared = ROOT.parent / "shared" / "data"
    extra = []
    if (shared / "taesd").is_dir():
        extra += ["--vae-weights", str(shared / "taesd")]
    sr = sorted((shared / "sr").glob("*.pth")) if (shared / "sr").is_dir() else []
    if sr:
        extra += ["--sr-weights", str(sr[0])]
    argv = ["demo", "-o", str(demo), "--quick", "--no-ablate", "--backbone", "timm:vit_tiny_patch16_224"]
    if aigi([*argv, "--features", "l8.tokens,l10.tokens,pooler", "--head-input", "pooler", *extra]) != 0:
        raise SystemExit("the demo failed; see its message above")


def _load(demo: Path) -> tuple[dict, dict, Path]:
    import cache

    caches = sorted((demo / "features").iterdir())
    c = cache.open(caches[0])
    sets = {s: c.load(["pooler", "l8.tokens", "l10.tokens"], where={"split": s}) for s in ("train", "val", "test")}
    weights = next((demo / "models").glob("*.safetensors"))
    return sets, c.spec, weights


def _metrics(fs, p: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import average_precision_score

    source = fs.column("source").astype(str)
    real = source == "real"
    out = {"real_acc": float((p[real] < 0.5).mean())}
    for kind in ("vae", "sr"):
        fake = np.char.startswith(source, kind + ":")
        out[f"{kind}_fake_acc"] = float((p[fake] >= 0.5).mean())
        rows = real | fake
        out[f"{kind}_ap"] = float(average_precision_score(fake[rows].astype(int), p[rows]))
    return out


def _run(name: str, sets: dict, spec: dict, weights: Path, *, seed: int, epochs: int) -> dict:
    import heads
    from pipeline.tail import frozen_tail

    head_name, feature, extra = RUNS[name]
    train, val, test = sets["train"], sets["val"], sets["test"]
    frozen = frozen_tail(head_name, [feature], {"demo": spec}, {"demo": str(weights)})
    dims = {feature: train.dims[feature]}
    head = heads.build(head_name, dims=dims, seed=seed, frozen=frozen, inputs=[feature], **extra)
    cfg = heads.FitConfig(lr=1e-3, weight_decay=1e-2, epochs=epochs, batch_size=16, balance=True, seed=seed)
    groups = lambda fs: {"source": fs.column("source").astype(str)}  # noqa: E731
    start = time.perf_counter()
    heads.fit(head, {feature: train.features[feature]}, train.labels, cfg=cfg, groups=groups(train),
              X_val={feature: val.features[feature]}, y_val=val.labels, groups_val=groups(val))  # fmt: skip
    seconds = time.perf_counter() - start
    p = heads.predict(head, {feature: test.features[feature]})
    return {"run": name, "seed": seed, "seconds": seconds, **_metrics(test, p)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--demo",
        type=Path,
        default=ROOT / "demo_out_tail",
        help="output folder of the demo command above (made when absent)",
    )
    parser.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10, help="epochs per stage")
    args = parser.parse_args()
    if not (args.demo / "features").is_dir():
        make_demo(args.demo)
    sets, spec, weights = _load(args.demo)
    rows = []
    for name in RUNS:
        for seed in args.seeds:
            rows.append(_run(name, sets, spec, weights, seed=seed, epochs=args.epochs))
            print(rows[-1], flush=True)
    counts = {s: {k: int(v) for k, v in zip(*np.unique(fs.column("source").astype(str), return_counts=True))}
              for s, fs in sets.items()}  # fmt: skip
    keys = ["real_acc", "vae_fake_acc", "sr_fake_acc", "vae_ap", "sr_ap", "seconds"]
    print(f"\nrows per split and source: {counts}; {len(args.seeds)} seeds, {args.epochs} epochs per stage")
    print("| head | real ACC | vae fake ACC | sr fake ACC | vae AP | sr AP | train s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    summary = {}
    for name in RUNS:
        vals = {k: [r[k] for r in rows if r["run"] == name] for k in keys}
        summary[name] = {k: (float(np.mean(v)), float(np.std(v))) for k, v in vals.items()}
        cells = [f"{100 * m:.1f} ± {100 * s:.1f}" for k, (m, s) in summary[name].items() if k != "seconds"]
        print(f"| {name} | {' | '.join(cells)} | {summary[name]['seconds'][0]:.1f} |")
    out = ROOT / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    result = {"rows": rows, "summary": summary, "counts": counts, "epochs": args.epochs, "seeds": args.seeds}
    (out / "bench_tail_sef.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
