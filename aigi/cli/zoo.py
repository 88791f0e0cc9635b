"""`aigi zoo`: list the field's released heads (what each needs, licence, source, pinned sha256) and the backbones'
`--weights` aliases."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from aigi.cli._options import add_json_argument

ZOO_HELP = """\
Each entry is a released head of the field: `aigi head pull NAME -o DIR` fetches its files from their own source,
checks each file's pinned sha256 and imports it (weights-only loading); `aigi extract` with the entry's backbone,
--weights, feature and preprocessing makes the cache it scores. A pin that could not be checked where the table was
written is empty ("not pinned yet"): pull then asks for --sha256 HEX or --no-verify. docs/WEIGHTS.md has the table
with how each pin was verified.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `aigi zoo [NAME] [--aliases] [--json] [--zoo FILE]`."""
    p = subparsers.add_parser(
        "zoo",
        help="list released heads (needs, licence, source, pinned sha256) and --weights aliases",
        description=ZOO_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", nargs="?", help="show this entry in full")
    p.add_argument("--aliases", action="store_true", help="list the backbones' --weights aliases instead")
    p.add_argument("--zoo", type=Path, help="another zoo file (default: the one shipped with aigi)")
    add_json_argument(p)
    p.set_defaults(func=run)
    return p


def _pin(sha256: str) -> str:
    return f"`{sha256[:12]}…`" if len(sha256) == 64 else (f"`{sha256}` (prefix)" if sha256 else "not pinned yet")


def run(args: argparse.Namespace) -> int:
    """Entry point of `aigi zoo`."""
    from aigi.pipeline.report import markdown_table

    if args.aliases:
        from aigi.extractors.weights import alias_rows

        rows = alias_rows()
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        header = ["backbone", "--weights", "resolves to", "published sha256", "from"]
        print("\n".join(markdown_table(header, [[r["backbone"], r["alias"], r["files"], r["sha256"] or "–",
                                                  r["source"]] for r in rows])))  # fmt: skip
        return 0
    from aigi.pipeline.zoo import read_zoo, zoo_rows

    zoo = read_zoo(args.zoo)
    rows = zoo_rows(zoo, [args.name] if args.name else None)
    if args.json:
        print(json.dumps(rows if not args.name else rows[0], indent=2))
    elif args.name:
        _print_entry(rows[0])
    else:
        header = ["name", "detector", "import as", "needs (aigi extract ...)", "licence", "files: sha256"]
        table = [
            [r["name"], r["detector"], r["importer"], _needs(r), r["licence"],
             "; ".join(f"{f['role']} {_pin(f['sha256'])}" for f in r["files"])]
            for r in rows
        ]  # fmt: skip
        print("\n".join(markdown_table(header, table)))
        print("pull one: aigi head pull NAME -o DIR; details and sources: aigi zoo NAME")
    return 0


def _needs(row: dict) -> str:
    return (
        f"--backbone {row['backbone']} --weights {row['weights']} --features {row['feature']} "
        f"--preprocess {row['preprocess']}"
        if row["importer"] != "none"
        else f"{row['backbone']}: {row['feature']}"
    )


def _print_entry(row: dict) -> None:
    for key in ("name", "detector", "title", "paper", "code", "importer", "backbone", "weights", "feature",
                "preprocess", "licence", "note"):  # fmt: skip
        if row.get(key):
            print(f"{key:<11} {row[key]}")
    print(f"{'mirrored':<11} never: files come from their source" + ("" if row["redistribute"] else
          " (its licence does not grant redistribution)"))  # fmt: skip
    for f in row["files"]:
        print(f"file        {f['role']}: {f['source']}")
        print(f"            sha256 {f['sha256'] or 'not pinned yet'}" + (f", {f['size']:,} bytes" if f["size"] else ""))
        print(f"            verified: {f['verified'] or '-'}")
