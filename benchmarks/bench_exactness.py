"""How far each preset's recipe is from its reference code, before and after matching it (max |delta|).

Rows (random weights and generated inputs; nothing is downloaded):
- preprocessing: the reference transform written with torchvision (OmniAID `Resize([336, 336])` + CLIP statistics,
  UnivFD `CenterCrop(224)` + CLIP statistics, GAPL `CenterCrop(224)` + ImageNet statistics) against our policy, on
  noise images of several sizes and three photos from scikit-image; "before" is the policy the preset used to get.
- AIM-v1 probe through the extractor (6 blocks of width 768, all probed, random weights): Apple's
  `stack(-1).mean(-1)` against the former `stack(0).mean(0)`.
- GAPL at its size (1024 -> 128, 64 prototypes, 4 heads): attention called with torch's defaults (GAPL) against
  `need_weights=False`; prototypes from GAPL's PCA recipe against the former `svd_solver="full"` + numpy
  normalisation, on 2 x 4,000 embeddings (GAPL's released projection when ../shared has it, else random).
- CLIP (tiny, random weights): `proj` / `pooler` against open_clip and transformers (4.x and 5.x key layouts).
- UnivFD's probe imported with `aigi head import-linear` against `x @ w.T + b`.
- `aigi extract` (random-weight vit_tiny, 6 photos-sized noise images, batch 1) against the direct forward:
  the default float16 cache, then `--store-dtype float32`.

Prints a table; writes benchmarks/out/bench_exactness.json. Run: `python benchmarks/bench_exactness.py`.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aigi import extractors, heads  # noqa: E402
from aigi.extractors.preprocess import resolve_policy  # noqa: E402
from tests.extractors import tiny  # noqa: E402

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


def _images() -> list:
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(0)
    sizes = [(500, 375), (1024, 768), (301, 257), (200, 150), (640, 480)]
    noise = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    return noise + [Image.fromarray(f()) for f in (data.astronaut, data.coffee, data.chelsea)]


def _max_delta(ref, ours, images) -> float:
    return max((ours(img, "x") - ref(img.convert("RGB"))).abs().max().item() for img in images)


def preprocessing_rows(images: list) -> list[dict]:
    from torchvision import transforms as T

    cases = [
        ("OmniAID inputs", T.Resize([336, 336]), CLIP, 336, "resize", "resize:interpolation=bicubic", "resize"),
        ("UnivFD inputs", T.CenterCrop(224), CLIP, 224, "center_crop", "center_crop", "center_crop:norm=clip"),
        ("GAPL inputs", T.CenterCrop(224), IMAGENET, 224, "center_crop", "center_crop", "center_crop"),
    ]
    rows = []
    for name, geometry, stats, size, default, before, after in cases:
        ref = T.Compose([geometry, T.ToTensor(), T.Normalize(*stats)])
        norm = "clip" if size == 336 else "imagenet"  # the backbone defaults: clip-l14-336 / clip-l14
        pol = {t: resolve_policy(t, default=default, size=size, norm=norm).transform() for t in (before, after)}
        rows.append(
            {"gap": name, "before": _max_delta(ref, pol[before], images), "after": _max_delta(ref, pol[after], images)}
        )
    return rows


def aim_row() -> dict:
    """Through the extractor: a 6-block AIM-v1 at 768 width (random weights), all six blocks probed."""
    cfg = {"embed_dim": 768, "depth": 6, "num_heads": 12, "probe_layers": (0, 1, 2, 3, 4, 5)}
    ex = extractors.build("aim-v1-3b", features=["probe"], device="cpu", **cfg)
    model, x = ex.model, torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.head.bn.running_mean.normal_(0, 0.3)
        model.head.cls_token.normal_()
        blocks = model.trunk.forward_intermediates(x, indices=list(range(6)), output_fmt="NLC", intermediates_only=True)
        apple = model.head(torch.stack(blocks, dim=-1).mean(dim=-1))
        before = model.head(torch.stack(blocks).mean(dim=0))
        after = ex(x)["probe"]
    return {
        "gap": "AIM-v1 probe (block average order)",
        "before": (before - apple).abs().max().item(),
        "after": (after - apple).abs().max().item(),
    }


def _gapl_head():
    from tests.conftest import SHARED

    head = heads.build("prototype", inputs="pooler", in_dim=1024, embed_dim=128, per_class=32, num_heads=4).eval()
    stage1 = SHARED / "data" / "gapl" / "stage1.pt"
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        if stage1.is_file():
            head.proj.weight.copy_(torch.load(stage1, weights_only=True, map_location="cpu"))
    return head, stage1.is_file()


def gapl_rows() -> list[dict]:
    from sklearn.decomposition import PCA

    from aigi.heads.prototype import pca_prototypes

    head, released = _gapl_head()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8000, 1024, generator=g) * torch.linspace(0.2, 2.0, 1024)
    y = np.repeat([0, 1], 4000)
    x[4000:] += 0.5
    with torch.no_grad():
        emb = head.embed({"pooler": x}).numpy()
    parts = [torch.tensor(PCA(32).fit(emb[y == c]).components_, dtype=torch.float32) for c in (0, 1)]
    gapl = F.normalize(torch.tensor(np.concatenate(parts, axis=0)), dim=1)
    old = np.concatenate([PCA(32, svd_solver="full").fit(emb[y == c]).components_ for c in (0, 1)]).astype(np.float32)
    old = old / np.linalg.norm(old, axis=1, keepdims=True)
    ours = torch.from_numpy(pca_prototypes(emb, y, 32))
    head.prototypes.copy_(gapl)
    with torch.no_grad():
        e = head.embed({"pooler": x[:4096]})
        kv = head.prototypes.unsqueeze(0).expand(len(e), -1, -1)
        ref = head.fc(head.attn(query=e.unsqueeze(1), key=kv, value=kv)[0].squeeze(1)).squeeze(-1)
        fused = head.fc(head.attn(e.unsqueeze(1), kv, kv, need_weights=False)[0].squeeze(1)).squeeze(-1)
        now = head({"pooler": x[:4096]})
    note = " (released projection)" if released else ""
    return [
        {
            "gap": "GAPL prototypes (PCA solver)" + note,
            "before": (torch.from_numpy(old) - gapl).abs().max().item(),
            "after": (ours - gapl).abs().max().item(),
        },
        {
            "gap": "GAPL logits (attention need_weights)",
            "before": (fused - ref).abs().max().item(),
            "after": (now - ref).abs().max().item(),
        },
    ]


def clip_rows(tmp: Path) -> list[dict]:
    from safetensors.torch import save_file

    from tests.extractors.test_clip import _hf_vision_model

    oc = tiny.open_clip_tiny()
    torch.save(oc.state_dict(), tmp / "openai.pth")
    x = torch.randn(8, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    build = lambda w: extractors.build(
        "clip-l14", weights=w, features=["pooler", "proj"], device="cpu", **tiny.CLIP_TINY
    )  # noqa: E731
    ref = tiny.open_clip_reference(oc, x, ["pooler", "proj"])
    got = build(tmp / "openai.pth")(x)
    rows = [
        {"gap": f"CLIP {f} vs open_clip", "before": None, "after": (got[f] - ref[f]).abs().max().item()} for f in ref
    ]
    hf = _hf_vision_model()
    with torch.no_grad():
        emb, pooled = hf(pixel_values=x).image_embeds, hf.vision_model(pixel_values=x).pooler_output
    for layout in ("4.x", "5.x"):
        state = {
            (k if layout == "4.x" else k.removeprefix("vision_model.")): v.contiguous()
            for k, v in hf.state_dict().items()
        }
        save_file(state, str(tmp / f"hf{layout}.safetensors"))
        got = build(tmp / f"hf{layout}.safetensors")(x)
        worst = max((got["proj"] - emb).abs().max().item(), (got["pooler"] - pooled).abs().max().item())
        rows.append(
            {
                "gap": f"CLIP proj/pooler vs transformers {layout} keys",
                "before": "did not load" if layout == "5.x" else None,
                "after": worst,
            }
        )
    return rows


def univfd_row(tmp: Path) -> dict:
    fc = torch.nn.Linear(768, 1)
    torch.save(fc.state_dict(), tmp / "fc_weights.pth")
    head = heads.linear_probe(tmp / "fc_weights.pth", feature="proj")
    x = torch.randn(4096, 768)
    with torch.no_grad():
        delta = (head({"proj": x}) - (x @ fc.weight.T + fc.bias).squeeze(-1)).abs().max().item()
    return {"gap": "UnivFD fc_weights.pth vs x @ w.T + b", "before": "no importer", "after": delta}


def store_dtype_row(tmp: Path) -> dict:
    import pandas as pd
    import timm
    from PIL import Image

    from aigi import cache
    from aigi.cli import main as aigi
    from aigi.extractors.images import load_image

    torch.manual_seed(0)
    torch.save(timm.create_model("vit_tiny_patch16_224", pretrained=False).state_dict(), tmp / "vit.pth")
    rng = np.random.default_rng(0)
    (tmp / "img").mkdir()
    paths = []
    for i in range(6):
        paths.append(tmp / "img" / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (180 + 10 * i, 240, 3), dtype=np.uint8)).save(paths[-1])
    table = pd.DataFrame({"image_id": [p.stem for p in paths], "path": [f"img/{p.name}" for p in paths]})
    cache.write_manifest(table.assign(label=0, source="s"), tmp / "m.parquet")
    ex = extractors.build("timm:vit_tiny_patch16_224", weights=tmp / "vit.pth", features=["pooler"])
    deltas = {}
    for store in ("float16", "float32"):
        args = ["extract", "--manifest", str(tmp / "m.parquet"), "--backbone", "timm:vit_tiny_patch16_224"]
        args += ["--weights", str(tmp / "vit.pth"), "--features", "pooler", "--batch-size", "1"]
        assert aigi([*args, "--store-dtype", store, "--cache", str(tmp / store)]) == 0
        fs = cache.open(tmp / store).load()
        with torch.no_grad():
            direct = [
                ex(torch.stack([ex.transform(load_image(tmp / p), i)]))["pooler"][0]
                for p, i in zip(fs.meta["path"], fs.meta["image_id"])
            ]
        deltas[store] = float(np.abs(fs.features["pooler"] - torch.stack(direct).numpy()).max())
    return {
        "gap": "aigi extract cache vs forward (float16 -> float32)",
        "before": deltas["float16"],
        "after": deltas["float32"],
    }


def main() -> None:
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        rows = preprocessing_rows(_images()) + [aim_row()] + gapl_rows() + clip_rows(Path(tmp))
        rows += [univfd_row(Path(tmp)), store_dtype_row(Path(tmp))]
    fmt = lambda v: "-" if v is None else (v if isinstance(v, str) else f"{v:.3g}")  # noqa: E731
    print(f"| {'gap':<50} | {'before':>12} | {'after':>10} |")
    print(f"| {'-' * 50} | {'-' * 12} | {'-' * 10} |")
    for r in rows:
        print(f"| {r['gap']:<50} | {fmt(r['before']):>12} | {fmt(r['after']):>10} |")
    out = ROOT / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_exactness.json").write_text(json.dumps({"rows": rows}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
