"""`aigi fakes KIND`: aligned fakes of a manifest's real images, one sub-command per registered fake kind.

Each kind's flags come from the fields of its options dataclass (`add_dataclass_options`), so a new kind is one file
in `fakes/kinds/` and the library never sees argparse; the stage is `aigi.pipeline.fakes.make_fakes`.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aigi.fakes.registry import FakeKind
    from aigi.pipeline.fakes import FakesConfig

FAKES_HELP = """Aligned fakes: each real image of the manifest gets a fake of the same size and file stem, written under
DIR/<source>/1_fake/ (re-encoded reals under DIR/<source>/0_real/); the new rows (label 1, pair_id = the real's
image_id, the real's split and domain) are appended to the manifest. Re-running skips finished outputs."""
# Where the options every model-loading kind shares (`aigi.fakes.registry.ModelOptions`) sit among the stage's own,
# so that the help reads: input, weights, output, naming, encoding, batching, device; then the kind's own options.
AFTER_MANIFEST = ("weights",)
AFTER_OUT = ("name",)
AFTER_BATCH = ("device", "dtype")


class _OutOnce(argparse.Action):
    """`-o/--out` given twice is remembered: `-o` used to name the new manifest, so `--out DIR -o M` is an old call."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if getattr(namespace, self.dest, None) is not None:
            namespace.out_twice = True
        setattr(namespace, self.dest, values)


def _unwrap_optional(hint: Any) -> Any:
    """`X | None` (or `Optional[X]`) -> X; any other type as it is."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return hint


def add_field_option(parser: argparse.ArgumentParser, fld: dataclasses.Field, hint: Any) -> None:
    """Add the flag of one dataclass field: `--tile-size` for `tile_size`, typed from its annotation.

    A `Literal[...]` gives the choices, a `bool` a switch (`--x`, or `--x/--no-x` when it defaults to True), a field
    without default a required option; `metadata["help"]` is the help, `metadata["metavar"]` the metavar, and a
    field with `metadata["parse"]` keeps the text the user typed (converted by `options_from_args`, whose errors are
    one-line user errors). Other types (lists, dicts) need a `parse`.
    """
    meta = fld.metadata
    kwargs: dict[str, Any] = {"dest": fld.name, "help": meta.get("help")}
    if "metavar" in meta:
        kwargs["metavar"] = meta["metavar"]
    required = fld.default is dataclasses.MISSING and fld.default_factory is dataclasses.MISSING
    if required:
        kwargs["required"] = True
    else:
        kwargs["default"] = fld.default if fld.default is not dataclasses.MISSING else fld.default_factory()
    base = _unwrap_optional(hint)
    if base is bool and "parse" not in meta:
        kwargs["action"] = "store_true" if kwargs.get("default") is False else argparse.BooleanOptionalAction
        kwargs.pop("metavar", None)
    elif typing.get_origin(base) is typing.Literal and "parse" not in meta:
        choices = list(typing.get_args(base))
        kwargs.update(choices=choices, type=type(choices[0]))
    elif base in (int, float, Path) and "parse" not in meta:
        kwargs["type"] = base
    elif base is not str and "parse" not in meta:
        raise TypeError(f"option {fld.name}: {hint!r} has no command-line form; give the field a metadata parse")
    parser.add_argument("--" + fld.name.replace("_", "-"), **kwargs)


def add_dataclass_options(
    parser: argparse.ArgumentParser, options: type, *, names: tuple[str, ...] | None = None
) -> None:
    """Add the flags of the fields of dataclass `options` (only those in `names`, in that order, when given)."""
    hints = typing.get_type_hints(options)
    fields = {f.name: f for f in dataclasses.fields(options)}
    for name in fields if names is None else [n for n in names if n in fields]:
        add_field_option(parser, fields[name], hints[name])


def options_from_args(options: type, args: argparse.Namespace) -> Any:
    """An instance of dataclass `options` from the parsed flags (fields with `metadata["parse"]` converted here)."""
    values = {}
    for fld in dataclasses.fields(options):
        if hasattr(args, fld.name):
            value, parse = getattr(args, fld.name), fld.metadata.get("parse")
            values[fld.name] = parse(value) if parse is not None and isinstance(value, str) else value
    return options(**values)


def add_kind_parser(sub: argparse._SubParsersAction, kind: FakeKind) -> None:
    """`aigi fakes KIND`: the stage's options and the kind's own, from its options dataclass."""
    shared = (*AFTER_MANIFEST, *AFTER_OUT, *AFTER_BATCH)
    weights = f" --weights: {kind.weights}" if kind.weights else ""
    p = sub.add_parser(kind.name, help=kind.help, description=FAKES_HELP + weights)
    p.add_argument("--manifest", type=Path, required=True, help="manifest.parquet (or .csv) listing the real images")
    add_dataclass_options(p, kind.options, names=AFTER_MANIFEST)
    p.add_argument("-o", "--out", "--output", dest="out", type=Path, required=True, action=_OutOnce, metavar="DIR",
                   help="output folder for the images")  # fmt: skip
    add_dataclass_options(p, kind.options, names=AFTER_OUT)
    p.add_argument("--output-manifest", type=Path, default=None, help="new manifest (default: update --manifest)")
    p.add_argument("--root", type=Path, default=None, help="folder manifest paths are relative to (default: its own)")
    p.add_argument("--format", default="same", help="same (PNG stays PNG, JPEG keeps its quality) | png | jpeg:Q")
    p.add_argument("--resave-real", action="store_true", help="also write each real through the same encoder")
    p.add_argument("--splits", default=None, help="comma-separated splits to process (default: all), e.g. train,val")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass (same padded size)")
    add_dataclass_options(p, kind.options, names=AFTER_BATCH)
    own = tuple(f.name for f in dataclasses.fields(kind.options) if f.name not in shared)
    add_dataclass_options(p, kind.options, names=own)
    p.set_defaults(func=run)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add `aigi fakes KIND` for every kind of the registry (`aigi.fakes.registry`: vae, sr, ...)."""
    from aigi.fakes.registry import fake_kinds

    kinds = fake_kinds()
    fakes = subparsers.add_parser("fakes", help=f"make aligned fakes ({', '.join(kinds)})", description=FAKES_HELP)
    sub = fakes.add_subparsers(dest="fakes_command", metavar="KIND", required=True)
    for kind in kinds.values():
        add_kind_parser(sub, kind)


def stage_config(args: argparse.Namespace) -> FakesConfig:
    """The stage's options (`aigi.pipeline.fakes.FakesConfig`) from the flags."""
    from aigi.pipeline.fakes import FakesConfig

    if getattr(args, "out_twice", False):
        raise ValueError(
            f"-o/--out {args.out} names the images folder; give it once, and the new manifest as --output-manifest FILE"
        )
    splits = tuple(s.strip() for s in args.splits.split(",") if s.strip()) if args.splits else None
    return FakesConfig(
        manifest=args.manifest,
        out_dir=args.out,
        output_manifest=args.output_manifest,
        root=args.root,
        fmt=args.format,
        resave_real=args.resave_real,
        splits=splits,
        batch_size=args.batch_size,
    )


def run(args: argparse.Namespace) -> int:
    """`aigi fakes KIND`: check the options and the manifest, load the kind's model, make the fakes, print a line."""
    from aigi.cli._options import folder_output
    from aigi.common.grammar import parse_format
    from aigi.common.outputs import Input, check_output
    from aigi.fakes.registry import fake_kind
    from aigi.pipeline.fakes import make_fakes

    kind = fake_kind(args.fakes_command)
    parse_format(args.format)  # fail before loading a model
    folder_output(args.out, [Input(args.manifest, "the manifest")])
    if args.output_manifest is not None:
        check_output(args.output_manifest, kind="file", resumable=True, option="--output-manifest")
    options = options_from_args(kind.options, args)
    result = make_fakes(kind.name, options, stage_config(args))
    print(result.summary())
    return 0
