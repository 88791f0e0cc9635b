"""`aigi head`: import released classifiers (any linear probe, UAR, GAPL) as aigi heads and describe saved heads."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from aigi.cli._options import RUN_FILES, add_json_argument, add_out_argument, cache_inputs
from aigi.common.outputs import Input, Output, check_output, committed
from aigi.pipeline.released import describe_head, import_gapl_head, import_linear_head, import_uar_head

SHOWN_APART = ("format", "version", "name", "config", "inputs", "parameters", "buffers")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
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
    add_out_argument(lin, metavar="HEAD_DIR", text="head directory to write")
    lin.add_argument("--cache", type=Path, help="a cache holding that feature: its fingerprint and spec are recorded")
    lin.add_argument("--fake-class", type=int, choices=(0, 1), default=1, help="fake row of a 2-row head (1)")
    lin.set_defaults(func=run_import_linear)

    uar = sub.add_parser("import-uar", help="UAR's released linear classifier (.pth) -> an aigi `linear` head")
    uar.add_argument("file", type=Path, help="UAR state dict with linear.weight (1, D) and linear.bias (1,)")
    add_out_argument(uar, metavar="HEAD_DIR", text="head directory to write")
    uar.add_argument("--feature", default="probe", help="input feature name the head reads (default: probe)")
    uar.set_defaults(func=run_import_uar)

    gapl = sub.add_parser("import-gapl", help="GAPL's projection + prototypes -> an aigi `prototype` head")
    gapl.add_argument("--stage1", type=Path, required=True, help="GAPL pretrained/stage1.pt (128 x D projection)")
    gapl.add_argument("--prototypes", type=Path, required=True, help="GAPL prototype/pca_3type_num64.pt (64 x 128)")
    add_out_argument(gapl, metavar="HEAD_DIR", text="head directory to write")
    gapl.add_argument("--feature", default="pooler", help="input feature name (default: pooler, CLIP-L/14 224)")
    gapl.set_defaults(func=run_import_gapl)

    info = sub.add_parser("info", help="print a saved head's name, inputs, config and parameter counts")
    info.add_argument("directory", type=Path, help="head directory (head.json + head.safetensors)")
    add_json_argument(info)
    info.set_defaults(func=run_info)
    return parser


def head_output(args: argparse.Namespace, *files: Path) -> Output:
    """The checked head folder -o of `aigi head import-*` (an existing head or run needs --overwrite)."""
    inputs = [Input(f, "the file") for f in files] + cache_inputs([args.cache] if getattr(args, "cache", None) else [])
    return check_output(args.out, kind="folder", inputs=inputs, overwrite=args.overwrite, owned=RUN_FILES)


def run_import_linear(args: argparse.Namespace) -> int:
    """Entry point of `aigi head import-linear`."""
    with committed(head_output(args, args.file)) as stage:
        head = import_linear_head(args.file, stage, feature=args.feature, fake_class=args.fake_class, cache=args.cache)
    print(f"wrote {args.out} (linear head on '{head.feature}', {head.dim}-d)")
    return 0


def run_import_uar(args: argparse.Namespace) -> int:
    """Entry point of `aigi head import-uar`."""
    with committed(head_output(args, args.file)) as stage:
        head = import_uar_head(args.file, stage, feature=args.feature)
    print(f"wrote {args.out} (linear head on '{head.feature}', {head.dim}-d)")
    return 0


def run_import_gapl(args: argparse.Namespace) -> int:
    """Entry point of `aigi head import-gapl`."""
    with committed(head_output(args, args.stage1, args.prototypes)) as stage:
        head = import_gapl_head(args.stage1, args.prototypes, stage, feature=args.feature)
    print(
        f"wrote {args.out} (prototype head on '{head.feature}'); its stage 2 is untrained: "
        f"aigi train configs/gapl.yaml --init {args.out} -o RUN_DIR trains it"
    )
    return 0


def run_info(args: argparse.Namespace) -> int:
    """Entry point of `aigi head info`: what head.json records, plus parameter counts."""
    info = describe_head(args.directory)
    if args.json:
        print(json.dumps({"directory": str(args.directory), **info}, indent=2, default=str))
        return 0
    print(f"head      {info['name']}  ({info['parameters']:,} parameters, {info['buffers']:,} buffer values)")
    print(f"inputs    {', '.join(info['inputs'])}")
    print("config    " + ", ".join(f"{k}={v}" for k, v in info["config"].items() if k != "inputs"))
    for key, value in info.items():
        if key not in SHOWN_APART:
            print(f"{key:<9} {json.dumps(value, default=str)[:300]}")
    return 0
