"""Robustness on the demo data under views orig, jpeg:75, resize:0.5; views as training augmentation vs not.

Recipe (each step is an `aigi` command; re-running skips finished work):
1. `aigi demo --no-ablate -o WORK/demo` (with the shared TAEF2 and Real-ESRGAN weights when present): real crops
   of the bundled photos, their VAE and SR fakes, a split by pair, and the random-weight `timm:convnext_atto`
   backbone saved as a file. Pass --demo DIR to reuse an existing `aigi demo` output.
2. `aigi extract --manifest WORK/demo/data/manifest.parquet --backbone timm:convnext_atto --weights ...
   --features l0.mean,l1.mean --views orig,jpeg:75,resize:0.5 --cache WORK/views`.
3. `aigi ablate WORK/ablate.yaml -o WORK/ablation`: the demo's linear head config (WORK/demo/configs/linear.yaml:
   `l1.mean`, AdamW, 300 epochs) with `calibration: {method: temperature, threshold: val_acc}` (fitted on the
   validation rows at the end of training), a grid over the training views `data.where.view`: orig only;
   orig + jpeg:75 (resize:0.5 held out); orig + resize:0.5 (jpeg:75 held out), x --seeds, and
   `eval_views: [orig, jpeg:75, resize:0.5]` (every run evaluated on the test rows of each view).
4. `aigi eval RUN --views orig,jpeg:75,resize:0.5` of the orig-trained run of the first seed: the robustness
   table (per view metrics, verdict flips against orig) and plot.

Prints (a) the robustness table and (b) per training set, ACC / AUC / TPR@1%FPR on every view, mean +- std over
seeds, held-out views marked; writes benchmarks/out/bench_robustness.json and copies the plot to
benchmarks/out/robustness.png.
Run: `python benchmarks/bench_robustness.py [--demo DIR] [--work DIR] [--seeds 0,1,2]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VIEWS = ("orig", "jpeg:75", "resize:0.5")
TRAINING = {"orig": ["orig"], "orig+jpeg:75": ["orig", "jpeg:75"], "orig+resize:0.5": ["orig", "resize:0.5"]}
BACKBONE, FEATURES = "timm:convnext_atto", "l0.mean,l1.mean"


def _aigi(argv: list[str]) -> None:
    from aigi.cli import main

    code = main(argv)
    if code != 0:
        raise SystemExit(f"aigi {' '.join(argv)} failed with exit code {code}")


def demo_data(demo: Path, shared: Path) -> tuple[Path, Path, Path]:
    """(manifest, backbone weights, linear train config) of an `aigi demo` output, running the demo if needed."""
    if not (demo / "configs" / "linear.yaml").exists():
        extra = []
        if (shared / "data" / "taesd").is_dir():
            extra += ["--vae-weights", str(shared / "data" / "taesd")]
        sr = sorted((shared / "data" / "sr").glob("*.pth"))
        if sr:
            extra += ["--sr-weights", str(sr[0])]
        head_input = FEATURES.split(",")[-1]
        _aigi(["demo", "--no-ablate", "-o", str(demo), "--backbone", BACKBONE, "--features", FEATURES,
               "--head-input", head_input, *extra])  # fmt: skip
    weights = sorted((demo / "models").glob("convnext_atto-random-seed*.safetensors"))
    if not weights:
        raise SystemExit(f"{demo}/models holds no convnext_atto weights: is it an `aigi demo` output?")
    return demo / "data" / "manifest.parquet", weights[0], demo / "configs" / "linear.yaml"


def ablation_config(config: Path, views_cache: Path, seeds: list[int]) -> dict:
    """The demo's linear run config as an ablation over training views, calibrated, evaluated on every view."""
    from aigi.pipeline.config import read_yaml

    raw = read_yaml(config)
    raw["data"]["caches"] = {"demo": str(views_cache)}
    raw["calibration"] = {"method": "temperature", "threshold": "val_acc", "band": "none"}
    raw["grid"] = {"data.where.view": list(TRAINING.values())}
    raw["seeds"] = seeds
    raw["eval_views"] = list(VIEWS)
    return raw


def view_results(ablation: Path) -> pd.DataFrame:
    """One row per (run, view): training views, seed and the view's mean metrics, from the runs' result.json."""
    rows = []
    for path in sorted((ablation / "runs").glob("*/result.json")):
        r = json.loads(path.read_text())
        name = "+".join(r["train_views"])
        for view, m in r["views"].items():
            rows.append({"training": name, "seed": r["seed"], "view": view, "run_dir": str(path.parent), **m})
    return pd.DataFrame(rows)


def with_flips(tables: pd.DataFrame) -> pd.DataFrame:
    """Add each run's verdict-flip rate against orig: `aigi eval RUN --views ...` (written to RUN/robustness)."""
    flips = []
    for run_dir in tables["run_dir"].unique():
        out = Path(run_dir) / "robustness"
        _aigi(["eval", run_dir, "--views", ",".join(VIEWS), "-o", str(out)])
        rob = pd.read_csv(out / "robustness.csv")
        flips.append(rob[["view", "flip_rate"]].assign(run_dir=run_dir))
    return tables.merge(pd.concat(flips), on=["run_dir", "view"], how="left")


def main(argv: list[str] | None = None) -> int:
    shared = Path(os.environ.get("AIGI_SHARED", ROOT.parent / "shared"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "out" / "robustness_work")
    parser.add_argument("--demo", type=Path, default=None, help="an `aigi demo` output (default WORK/demo)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "bench_robustness.json")
    args = parser.parse_args(argv)
    manifest, weights, config = demo_data(args.demo or args.work / "demo", shared)
    views_cache = args.work / "views"
    _aigi(["extract", "--manifest", str(manifest), "--backbone", BACKBONE, "--weights", str(weights),
           "--features", FEATURES, "--views", ",".join(VIEWS), "--cache", str(views_cache)])  # fmt: skip
    seeds = [int(s) for s in args.seeds.split(",")]
    from aigi.pipeline.config import dump_yaml

    ablate_yaml = args.work / "ablate.yaml"
    ablate_yaml.write_text(dump_yaml(ablation_config(config, views_cache, seeds)), encoding="utf-8")
    _aigi(["ablate", str(ablate_yaml), "-o", str(args.work / "ablation"), "--jobs", "1"])
    tables = with_flips(view_results(args.work / "ablation"))
    orig_run = Path(tables[(tables["training"] == "orig") & (tables["seed"] == seeds[0])]["run_dir"].iloc[0])
    report = orig_run / "robustness"
    base = pd.read_csv(report / "robustness.csv")
    cols = ["view", "n", "acc", "real_acc", "fake_acc", "auc", "tpr_at_1pct_fpr", "ece", "flip_rate", "real_to_fake",
            "mean_abs_dp"]  # fmt: skip
    print("(a) head trained on orig, seed", seeds[0])
    print(markdown(base[cols]))
    summary = comparison(tables)
    print(f"\n(b) training views vs held-out views (mean +- std over seeds {seeds}; * = view not seen in training)")
    print(markdown(summary))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(report / "robustness.png", args.out.parent / "robustness.png")
    result = {
        "views": VIEWS,
        "seeds": seeds,
        "orig_head": json.loads(base.to_json(orient="records")),
        "all": json.loads(tables.to_json(orient="records")),
        "comparison": summary.to_dict("records"),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out} and {args.out.parent / 'robustness.png'}")
    return 0


def markdown(frame: pd.DataFrame) -> str:
    """A markdown table; floats as percentages except ECE and mean |dP| (4 decimals)."""

    def cell(key: str, value: object) -> str:
        if isinstance(value, float):
            return "" if np.isnan(value) else f"{value:.4f}" if key in ("ece", "mean_abs_dp") else f"{100 * value:.2f}"
        return str(value)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(k, v) for k, v in row.items()) + " |" for row in frame.to_dict("records")]
    return "\n".join(lines)


def comparison(tables: pd.DataFrame) -> pd.DataFrame:
    """One row per (training views, metric): mean +- std over seeds on each evaluated view.

    ACC / AUC / TPR@1%FPR are the ablation's: the mean over evaluation groups (sources) of the view's test rows;
    flips are over all test images (`aigi eval --views`).
    """
    rows = []
    for name, part in tables.groupby("training", sort=False):
        for key, label in (("acc", "ACC"), ("auc", "AUC"), ("tpr_at_1pct_fpr", "TPR@1%FPR"), ("flip_rate", "flips")):
            row = {"training views": name, "metric": label}
            for view in VIEWS:
                v = part.loc[part["view"] == view, key].astype(float).to_numpy()
                if np.isnan(v).all():
                    row[view] = ""
                    continue
                star = "" if view in name.split("+") else " *"
                cell = f"{100 * np.nanmean(v):.2f} +- {100 * np.nanstd(v):.2f}{star}"
                row[view] = cell
            rows.append(row)
    return pd.DataFrame(rows)


if __name__ == "__main__":
    raise SystemExit(main())
