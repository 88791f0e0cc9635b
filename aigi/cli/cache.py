"""`aigi cache info|verify|repair|compact`: inspect, check, repair and compact feature caches."""

from __future__ import annotations

import argparse
import errno
import json
from pathlib import Path

from aigi.cli._options import add_json_argument, add_out_argument, cache_inputs
from aigi.common.outputs import check_output, committed


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `aigi cache info|verify|repair|compact`."""
    p = subparsers.add_parser("cache", help="inspect, verify, repair and compact feature caches")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    info = sub.add_parser("info", help="rows, features, sources, splits, views, size, fingerprint")
    info.add_argument("path", type=Path, help="cache directory, compacted .h5, Parquet dataset or .npy folder")
    add_json_argument(info)
    info.set_defaults(func=run_info)
    verify = sub.add_parser(
        "verify",
        help="check every shard against the digest and row count recorded at commit, NaN/inf, "
        "fingerprints, duplicate keys, shards missing from or left out of the index",
    )
    verify.add_argument("path", type=Path)
    verify.set_defaults(func=run_verify)
    repair = sub.add_parser(
        "repair",
        help="drop what verify names (missing, changed or unreadable shards, repeated rows, unindexed files)",
        description="Make a cache directory sound again. Dropped shards are listed; re-running the same "
        "`aigi extract` or `aigi import uar` re-creates their rows.",
    )
    repair.add_argument("path", type=Path)
    repair.set_defaults(func=run_repair)
    compact = sub.add_parser("compact", help="write one self-describing .h5 with every row")
    compact.add_argument("path", type=Path)
    add_out_argument(compact, metavar="FILE.h5", text="the .h5 file to write (outside the cache)")
    compact.set_defaults(func=run_compact)
    return p


def human_size(n: float) -> str:
    """A byte count in B, KB, MB or GB (powers of 1024)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def print_info(info: dict) -> None:
    """`cache.info`'s summary as aligned text lines."""
    print(f"{info['path']} ({info['kind']}, {info['format']}, {info['dtype']})")
    print(f"  rows        {info['rows']}  (labels {info['labels']})")
    print("  features    " + ", ".join(f"{k} {tuple(v)}" for k, v in info["features"].items()))
    for key in ("sources", "splits", "views"):
        print(f"  {key:<11} " + ", ".join(f"{k or '-'}={v}" for k, v in info[key].items()))
    size = human_size(info["bytes_on_disk"])
    print(f"  shards      {info['shards']}, errors recorded {info['errors']}, {size} on disk")
    print(f"  fingerprint {info['fingerprint']}")
    print(f"  spec        {json.dumps(info['spec'], sort_keys=True)}")


def run_info(args: argparse.Namespace) -> int:
    """Entry point of `aigi cache info`."""
    from aigi import cache

    info = cache.info(args.path)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print_info(info)
    return 0


def run_verify(args: argparse.Namespace) -> int:
    """Entry point of `aigi cache verify`: exit 0 when sound; a damaged cache raises (one line, exit code 2)."""
    from aigi import cache

    result = cache.verify(args.path)
    stale = result["stale_temp_files"]
    print(
        f"ok: {result['rows']} rows in {result['shards']} shard(s), fingerprint {result['fingerprint'][:12]}, "
        f"{result['errors']} unreadable image(s) recorded"
    )
    if stale:
        print(f"note: {len(stale)} temporary file(s) left by interrupted writers (safe to delete): {stale[:3]}")
    return 0


def run_repair(args: argparse.Namespace) -> int:
    """Entry point of `aigi cache repair`: repair, say what moved where, then verify."""
    from aigi import cache

    result = cache.repair(args.path)
    dropped = result["dropped_shards"]
    print(
        f"repaired {args.path}: dropped {len(dropped)} damaged or missing shard(s) ({sum(dropped.values())} rows), "
        f"{result['repeated_rows_dropped']} repeated row(s) ({len(result['rewritten'])} shard(s) rewritten), "
        f"removed {len(result['removed'])} stray file(s), adopted {len(result['adopted'])} intact shard(s) "
        "missing from the index"
    )
    for key, what in (("rebuilt", "rebuilt"), ("index_entries_dropped", "damaged index entries dropped")):
        if result[key]:
            print(f"  {what}: {', '.join(sorted(result[key]))}")
    if dropped:
        print(f"  dropped: {', '.join(sorted(dropped))}")
        print("  re-run the same `aigi extract` or `aigi import uar` to re-create their rows (both resume)")
    if result["quarantine"]:
        print(f"  moved out of the cache, not deleted: {result['quarantine']} (delete it once you have looked)")
    if result["unreadable"]:
        raise PermissionError(
            errno.EACCES, f"left {len(result['unreadable'])} shard(s) it may not read as they are "
            f"({', '.join(result['unreadable'][:3])}): fix their permissions, then re-run `aigi cache repair`",
            str(args.path),
        )  # fmt: skip
    verified = cache.verify(args.path)
    done = any(result[k] for k in ("dropped_shards", "repeated_rows_dropped", "removed", "adopted", "rebuilt",
                                   "index_entries_dropped"))  # fmt: skip
    print(f"ok: {verified['rows']} rows in {verified['shards']} shard(s)" + ("" if done else " (nothing to repair)"))
    return 0


def run_compact(args: argparse.Namespace) -> int:
    """Entry point of `aigi cache compact`."""
    from aigi import cache

    out = check_output(args.out, kind="file", inputs=cache_inputs([args.path]), overwrite=args.overwrite)
    if Path(args.out).suffix not in (".h5", ".hdf5"):
        raise ValueError(f"-o {args.out}: a compacted cache is an HDF5 file; end its name in .h5")
    with committed(out):
        written = cache.compact(args.path, out.path)
    print(f"wrote {args.out} ({len(cache.open(written))} rows)")
    return 0
