"""Cost of training LoRA experts in the last k blocks from cached tokens against re-running the backbone.

Model: timm `vit_base_patch16_224` (ViT-B/16: 12 blocks, width 768, 197 tokens) with random weights, saved to a file
and loaded back through `extractors.build` / `extractors.build_tail` like real weights. Inputs: N random
preprocessed images [3, 224, 224] (decoding is not timed). One training epoch each, batch B, AdamW, LoRA rank 16 on
q/k/v/out, linear classifier on `pooler`:

- (a) the seeds' way: every image through the whole backbone each step, LoRA in all 12 blocks;
- (b) every image through the whole backbone each step (blocks before the tail without gradients), LoRA in the last
  k blocks only: the same adapters as (c);
- (c) `tail_lora` trained by `heads.fit` on the cached tokens leaving block 12 - k - 1 (float16 cache, as stored).

Also timed once: extracting the token caches of every k in one pass (a forward to the deepest block needed). Token
cache per image: T x D x 2 bytes (float16); the table lists it for the published backbones too.

Run: `nice -n 10 python benchmarks/bench_tail.py [--images 320] [--batch 32] [--ks 1,2,4] [--threads 1]`; prints a
table and writes benchmarks/out/bench_tail.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARCH = "vit_base_patch16_224"
PUBLISHED = {  # tokens per image (prefix + patches) and width of the blocks
    "CLIP ViT-L/14 224": (257, 1024),
    "CLIP ViT-L/14 336": (577, 1024),
    "AIM-v1 3B (224)": (256, 3072),
    "ViT-B/16 224": (197, 768),
}


def _weights(folder: Path) -> Path:
    import timm

    torch.manual_seed(0)
    path = folder / "vit_base.pth"
    torch.save(timm.create_model(ARCH, pretrained=False).state_dict(), path)
    return path


class Clock:
    """Wall and CPU seconds (all threads of this process) since creation: on a shared machine CPU time is the
    steadier measure of work, wall time what a user waits."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> dict[str, float]:
        return {"wall": time.perf_counter() - self.wall, "cpu": time.process_time() - self.cpu}


def _extract(weights: Path, features: list[str], images: torch.Tensor, batch: int) -> tuple[dict, dict, dict]:
    """Token caches of every feature in one pass (float16, as stored), the spec, and the seconds it took."""
    from aigi import extractors

    ex = extractors.build(f"timm:{ARCH}", weights=weights, features=features, device="cpu")
    clock = Clock()
    parts = [ex(images[i : i + batch]) for i in range(0, len(images), batch)]
    seconds = clock.stop()
    tokens = {f: np.concatenate([p[f].half().numpy() for p in parts]) for f in features}
    return tokens, dataclasses.asdict(ex.spec), seconds


def _head(spec: dict, weights: Path, feature: str, *, depth_from: int | None = None) -> torch.nn.Module:
    from aigi import heads
    from aigi.extractors.tail import VitTail, build_tail

    if depth_from is None:
        tail = build_tail(spec, weights=weights, feature=feature)
    else:  # the whole backbone as a tail (LoRA in every block); its embedding is run per batch by the caller
        import timm

        model = timm.create_model(ARCH, pretrained=False, num_classes=0)
        model.load_state_dict(torch.load(weights, weights_only=True), strict=False)
        tail = VitTail(model, 0, proj=False).requires_grad_(False).eval()
    return heads.build("tail_lora", frozen=tail, inputs=[feature], rank=16, alpha=16.0)


def _epoch_from_images(head: torch.nn.Module, prefix, images: torch.Tensor, y: np.ndarray, batch: int) -> dict:
    """One epoch where every batch first runs `prefix` (images -> tokens, no gradient) then the head."""
    params = [p for n, p in head.named_parameters() if n.startswith(("lora", "classifier"))]
    opt = torch.optim.AdamW(params, lr=1e-3, foreach=True)
    target = torch.as_tensor(y, dtype=torch.float32)
    head.train()
    clock = Clock()
    for idx in torch.randperm(len(y), generator=torch.Generator().manual_seed(0)).split(batch):
        with torch.no_grad():
            tokens = prefix(images[idx])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head({head.cfg.inputs[0]: tokens}), target[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return clock.stop()


def _prefix(weights: Path, block: int):
    import timm

    model = timm.create_model(ARCH, pretrained=False, num_classes=0)
    model.load_state_dict(torch.load(weights, weights_only=True), strict=False)
    model.eval()

    def run(x: torch.Tensor) -> torch.Tensor:
        t = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
        for blk in model.blocks[: block + 1]:
            t = blk(t)
        return t

    return run


def measure(args: argparse.Namespace) -> dict:
    from aigi import heads

    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    images = torch.randn(args.images, 3, 224, 224)
    y = np.arange(args.images) % 2
    rows, out = [], {"images": args.images, "batch": args.batch, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        weights = _weights(Path(tmp))
        full = _head({}, weights, "l-1.tokens", depth_from=0)
        seconds_a = _epoch_from_images(full, _prefix(weights, -1), images, y, args.batch)
        out["seeds_way_s"] = seconds_a
        print(f"(a) whole backbone, LoRA in all 12 blocks: {seconds_a} s / epoch", flush=True)
        features = [f"l{12 - k - 1}.tokens" for k in args.ks]
        caches, spec, extract_s = _extract(weights, features, images, args.batch)
        out["extract_once_s"] = extract_s
        print(f"token caches {features} extracted in one pass: {extract_s} s", flush=True)
        for k in args.ks:
            block = 12 - k - 1
            feature = f"l{block}.tokens"
            tokens = caches[feature]
            head_b = _head(spec, weights, feature)
            seconds_b = _epoch_from_images(head_b, _prefix(weights, block), images, y, args.batch)
            head_c = _head(spec, weights, feature)
            cfg = heads.FitConfig(epochs=1, batch_size=args.batch, lr=1e-3, threads=args.threads)
            clock = Clock()
            heads.fit(head_c, {feature: tokens}, y, cfg=cfg)
            seconds_c = clock.stop()
            row = {"k": k, "feature": feature, "rerun_backbone_s": seconds_b, "tail_from_cache_s": seconds_c,
                   "speedup_vs_rerun": {m: seconds_b[m] / seconds_c[m] for m in seconds_c},
                   "speedup_vs_seeds_way": {m: seconds_a[m] / seconds_c[m] for m in seconds_c},
                   "kb_per_image": tokens[0].nbytes / 1024}  # fmt: skip
            rows.append(row)
            print(row, flush=True)
    out["rows"] = rows
    out["published_kb_per_image"] = {name: t * d * 2 / 1024 for name, (t, d) in PUBLISHED.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a busy machine)")
    parser.add_argument("--ks", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2, 4])
    args = parser.parse_args()
    result = measure(args)
    print(f"\nViT-B/16, {args.images} images, batch {args.batch}, one epoch, {result['threads']} CPU thread(s);")
    print("CPU seconds (wall seconds in brackets)")
    a, e = result["seeds_way_s"], result["extract_once_s"]
    print(f"(a) seeds' way (whole backbone, LoRA in all 12 blocks): {a['cpu']:.1f} ({a['wall']:.1f}) s")
    print(f"token caches for every k extracted once, in one pass: {e['cpu']:.1f} ({e['wall']:.1f}) s")
    print("| k | (b) re-run backbone, LoRA in last k | (c) tail_lora from cache | (b)/(c) | (a)/(c) | KB/image |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in result["rows"]:
        b, c = r["rerun_backbone_s"], r["tail_from_cache_s"]
        sb, sa = r["speedup_vs_rerun"], r["speedup_vs_seeds_way"]
        cells = [f"{b['cpu']:.1f} ({b['wall']:.1f}) s", f"{c['cpu']:.1f} ({c['wall']:.1f}) s"]
        cells += [f"{sb['cpu']:.1f}x ({sb['wall']:.1f}x)", f"{sa['cpu']:.1f}x ({sa['wall']:.1f}x)"]
        print(f"| {r['k']} | {' | '.join(cells)} | {r['kb_per_image']:.1f} |")
    print("\n| backbone | float16 token cache per image, KB |\n| --- | --- |")
    for name, kb in result["published_kb_per_image"].items():
        print(f"| {name} | {kb:.1f} |")
    out = ROOT / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_tail.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
