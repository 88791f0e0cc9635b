"""`aigi head`: import released classifiers (any linear probe, UAR, GAPL) as aigi heads, pull them from the zoo,
and describe saved heads."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from aigi.cli._options import RUN_FILES, add_json_argument, add_out_argument, cache_inputs, run_input
from aigi.common.outputs import Input, Output, check_output, committed
from aigi.pipeline.released import describe_head, import_gapl_head, import_linear_head, import_uar_head

SHOWN_APART = ("format", "version", "name", "config", "inputs", "parameters", "buffers")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `aigi head import-linear | import-uar | import-gapl | pull | info`."""
    parser = subparsers.add_parser("head", help="import or pull released heads, describe saved heads")
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

    add_pull_parser(sub)

    info = sub.add_parser("info", help="print a saved head's name, inputs, config and parameter counts")
    info.add_argument("directory", type=Path, help="head directory (head.json + head.safetensors)")
    add_json_argument(info)
    info.set_defaults(func=run_info)
    add_pack_parser(sub)
    return parser


def head_output(args: argparse.Namespace, *files: Path) -> Output:
    """The checked head folder -o of `aigi head import-*` (an existing head or run needs --overwrite)."""
    inputs = [Input(f, "the file") for f in files] + cache_inputs([args.cache] if getattr(args, "cache", None) else [])
    return check_output(args.out, kind="folder", inputs=inputs, overwrite=args.overwrite, owned=RUN_FILES)


def add_pack_parser(sub: argparse._SubParsersAction) -> None:
    """Add `aigi head pack RUN_DIR -o HEAD.aigi|FOLDER [--weights [ALIAS=]FILE] [--eval REPORT_DIR]`."""
    pack = sub.add_parser(
        "pack",
        help="a shareable head: weights, config, extractor spec with the weights' sha256, calibration, eval table",
        description="Write RUN_DIR's head as one file HEAD.aigi (a zip) or a folder that holds no absolute path of "
        "this machine: head.safetensors, head.json (config, the extractor spec with its preprocessing and the "
        "backbone weights' sha256, how to get those weights, the calibration) and eval.json (the metrics of "
        "RUN_DIR/eval or --eval). `aigi predict HEAD.aigi IMAGES --weights FILE` scores images on any machine that "
        "has the backbone's weights.",
    )
    pack.add_argument("run_dir", type=Path, help="directory written by `aigi train` (or `aigi calibrate -o`)")
    add_out_argument(pack, metavar="HEAD.aigi|FOLDER", text="where to write it (a file ending in .aigi, or a folder)")
    pack.add_argument("--weights", action="append", default=[], metavar="[ALIAS=]FILE",
                      help="the backbone weights file: its name is recorded (its sha256 is checked)")  # fmt: skip
    pack.add_argument(
        "--eval",
        type=Path,
        default=None,
        metavar="REPORT_DIR",
        help="the `aigi eval` report whose metrics go in (default RUN_DIR/eval when present)",
    )
    pack.set_defaults(func=run_pack)


def run_pack(args: argparse.Namespace) -> int:
    """Entry point of `aigi head pack`."""
    from aigi import heads
    from aigi.common.grammar import parse_aliased
    from aigi.pipeline.pack import PACK_FILES, PACK_SUFFIX, pack_head

    specs = heads.read_info(args.run_dir).get("extractor_spec") or {}
    weights = {a: w for a, w in parse_aliased(list(args.weights), list(specs)).items() if w is not None}
    inputs = run_input(args.run_dir) + ([Input(args.eval, "the eval report")] if args.eval else [])
    kind = "file" if str(args.out).endswith(PACK_SUFFIX) else "folder"
    out = check_output(args.out, kind=kind, inputs=inputs, overwrite=args.overwrite, owned=PACK_FILES)
    with committed(out) as stage:
        result = pack_head(args.run_dir, stage, weights=weights, eval_dir=args.eval)
    for alias, entry in result.weights.items():
        print(f"backbone {alias}: {entry['backbone']}, weights sha256 {entry['sha256'][:16]}…: {entry['how']}")
    print(f"wrote {args.out} ({result.kind}{', with the eval table' if result.has_eval else ', no eval table'})")
    return 0


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


def add_pull_parser(sub: argparse._SubParsersAction) -> None:
    """Add `aigi head pull NAME -o DIR [--cache C] [--sha256 [ROLE=]HEX] [--no-verify] [--zoo FILE]`."""
    pull = sub.add_parser(
        "pull",
        help="fetch a released head of the zoo (aigi zoo) from its source, check its sha256, import it",
        description="Fetches each file of a zoo entry from its own source (hf-hub names through huggingface_hub's "
        "cache; URLs into a temporary file inside -o DIR), refuses a file whose sha256 is not the pinned one, and "
        "imports it with the matching `aigi head import-*` (weights-only loading). Offline (HF_HUB_OFFLINE=1) only "
        "cached hub files are used. An entry without an importer is fetched and checked, not imported.",
    )
    pull.add_argument("name", help="the zoo entry (aigi zoo lists them)")
    add_out_argument(pull, metavar="HEAD_DIR", text="head directory to write")
    pull.add_argument("--cache", help="linear heads: a cache holding the feature; its fingerprint is recorded")
    pull.add_argument(
        "--sha256",
        action="append",
        default=[],
        metavar="[ROLE=]HEX",
        help="the sha256 to check a file the zoo has no pin for (ROLE=HEX per file when the entry has several)",
    )
    pull.add_argument("--no-verify", action="store_true", help="take files without a pin unchecked (said so)")
    pull.add_argument("--zoo", help="another zoo file (default: the one shipped with aigi)")
    pull.set_defaults(func=run_pull)


def run_pull(args: argparse.Namespace) -> int:
    """Entry point of `aigi head pull`."""
    from aigi.pipeline.zoo import PullOptions, pull_head

    options = PullOptions(cache=args.cache, sha256=tuple(args.sha256), no_verify=args.no_verify, zoo=args.zoo)
    inputs = cache_inputs([args.cache] if args.cache else [])
    out = check_output(args.out, kind="folder", inputs=inputs, overwrite=args.overwrite, owned=RUN_FILES)
    with committed(out) as stage:
        result = pull_head(args.name, stage, options)
    for role, path in result.files.items():
        check = "matches the pin" if result.checked[role] else "NOT checked (--no-verify)"
        print(f"{role}: {path.name} sha256 {result.sha256[role]} ({check})")
    head, entry = result.head, result.entry
    if head is None:
        print(f"{entry.name}: {entry.note or 'no aigi importer'}; files: " + ", ".join(map(str, result.files.values())))
        return 0
    print(f"wrote {args.out} ({head.name} head on '{head.feature}', {head.dim}-d; licence: {entry.licence})")
    print(f"it scores a cache made with: {entry.extract_command()}")
    if head.name == "prototype":
        print(f"its stage 2 is untrained: aigi train configs/gapl.yaml --init {args.out} -o RUN_DIR trains it")
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
