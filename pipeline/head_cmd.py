"""`aigi head`: import released classifiers (any linear probe, UAR, GAPL) as aigi heads and describe saved heads."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from aigi.common.files import sha256_file


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `aigi head import-linear | import-uar | import-gapl | info`."""
    parser = subparsers.add_parser("head", help="import released heads, describe saved heads")
    sub = parser.add_subparsers(dest="head_command", metavar="ACTION", required=True)

    lin = sub.add_parser(
        "import-linear",
        help="any released linear probe (UnivFD's fc_weights.pth, UAR's, ...) -> an aigi `linear` head",
        description="Keys `weight`/`bias`, `linear.*` or `fc.*` (.pth or .safetensors); a (1, D) weight scores as "
        "x @ w.T + b, a (2, D) softmax head as its logit difference. The probe only means something on the feature "
        "it was trained on: name it with --feature, and give --cache to bind the head to that cache's extractor "
        "spec (then `aigi eval` / `aigi predict` refuse features made otherwise).",
    )
    lin.add_argument("file", type=Path, help="the probe's state dict")
    lin.add_argument("--feature", required=True, help="the feature it was trained on (UnivFD: proj, UAR: probe)")
    lin.add_argument("-o", "--out", type=Path, required=True, help="head directory to write")
    lin.add_argument("--cache", type=Path, help="a cache holding that feature: its fingerprint and spec are recorded")
    lin.add_argument("--fake-class", type=int, choices=(0, 1), default=1, help="fake row of a 2-row head (1)")
    lin.set_defaults(func=run_head_import_linear)

    uar = sub.add_parser("import-uar", help="UAR's released linear classifier (.pth) -> an aigi `linear` head")
    uar.add_argument("file", type=Path, help="UAR state dict with linear.weight (1, D) and linear.bias (1,)")
    uar.add_argument("-o", "--out", type=Path, required=True, help="head directory to write")
    uar.add_argument("--feature", default="probe", help="input feature name the head reads (default: probe)")
    uar.set_defaults(func=run_head_import_uar)

    gapl = sub.add_parser("import-gapl", help="GAPL's projection + prototypes -> an aigi `prototype` head")
    gapl.add_argument("--stage1", type=Path, required=True, help="GAPL pretrained/stage1.pt (128 x D projection)")
    gapl.add_argument("--prototypes", type=Path, required=True, help="GAPL prototype/pca_3type_num64.pt (64 x 128)")
    gapl.add_argument("-o", "--out", type=Path, required=True, help="head directory to write")
    gapl.add_argument("--feature", default="pooler", help="input feature name (default: pooler, CLIP-L/14 224)")
    gapl.set_defaults(func=run_head_import_gapl)

    info = sub.add_parser("info", help="print a saved head's name, inputs, config and parameter counts")
    info.add_argument("directory", type=Path, help="head directory (head.json + head.safetensors)")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=run_head_info)


def run_head_import_linear(args: argparse.Namespace) -> int:
    from aigi import heads

    head = heads.linear_probe(args.file, feature=args.feature, fake_class=args.fake_class)
    meta = {"imported_from": {"kind": "linear", "file": args.file.name, "sha256": sha256_file(args.file)}}
    if args.cache is not None:
        meta |= _bound_cache(args.cache, args.feature, head.cfg.in_dim)
    heads.save(head, args.out, meta=meta)
    print(f"wrote {args.out} (linear head on '{args.feature}', {head.cfg.in_dim}-d)")
    return 0


def _bound_cache(path: Path, feature: str, dim: int) -> dict:
    """head.json entries (as `aigi train` writes them) binding an imported head to the cache at `path`."""
    from aigi import cache

    store = cache.open(path)
    shape = store.features.get(feature)
    if shape != (dim,):
        got = f"width {shape[0]}" if shape and len(shape) == 1 else ("shape " + str(shape) if shape else "absent")
        raise ValueError(
            f"the probe reads '{feature}' of width {dim}, but in {path} '{feature}' is {got}; pick the feature the "
            f"probe was trained on (the cache has {sorted(store.features)})"
        )
    alias = str(store.spec.get("name") or "features")
    return {
        "caches": {alias: {"path": str(store.path), "fingerprint": store.fingerprint, "format": store.format}},
        "fingerprints": {alias: store.fingerprint},
        "extractor_spec": {alias: store.spec},
    }


def run_head_import_uar(args: argparse.Namespace) -> int:
    from aigi import heads

    head = heads.uar_linear(args.file, feature=args.feature)
    meta = {"imported_from": {"kind": "uar", "file": args.file.name, "sha256": sha256_file(args.file)}}
    heads.save(head, args.out, meta=meta)
    print(f"wrote {args.out} (linear head on '{args.feature}', {head.cfg.in_dim}-d)")
    return 0


def run_head_import_gapl(args: argparse.Namespace) -> int:
    from aigi import heads

    head = heads.gapl_prototype(args.stage1, args.prototypes, feature=args.feature)
    files = {"stage1": args.stage1, "prototypes": args.prototypes}
    meta = {
        "imported_from": {"kind": "gapl", **{k: {"file": p.name, "sha256": sha256_file(p)} for k, p in files.items()}},
        "untrained": "stage 2 (attention and classifier)",
        "note": f"train stage 2 before scoring: aigi train configs/gapl.yaml --init {args.out} -o RUN_DIR",
    }
    heads.save(head, args.out, meta=meta)
    print(
        f"wrote {args.out} (prototype head on '{args.feature}'); its stage 2 is untrained: "
        f"aigi train configs/gapl.yaml --init {args.out} -o RUN_DIR trains it"
    )
    return 0


def run_head_info(args: argparse.Namespace) -> int:
    """`aigi head info`: what head.json records, plus parameter counts."""
    from aigi import heads

    head, info = heads.load(args.directory)
    counts = {
        "parameters": sum(p.numel() for p in head.parameters()),
        "buffers": sum(b.numel() for b in head.buffers()),
    }
    if args.json:
        print(json.dumps({"directory": str(args.directory), **info, **counts}, indent=2, default=str))
        return 0
    print(f"head      {info['name']}  ({counts['parameters']:,} parameters, {counts['buffers']:,} buffer values)")
    print(f"inputs    {', '.join(info['inputs'])}")
    print("config    " + ", ".join(f"{k}={v}" for k, v in info["config"].items() if k != "inputs"))
    for key, value in info.items():
        if key not in ("format", "version", "name", "config", "inputs"):
            print(f"{key:<9} {json.dumps(value, default=str)[:300]}")
    return 0
