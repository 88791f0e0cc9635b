"""The index stage: build a manifest (one row per image: sha256 id, label, source, split, size) from a folder layout."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from aigi.cache import LABEL_DIRS
from aigi.common.files import sha256_file
from aigi.common.progress import SHORT_WORK_S, progress

LOG = logging.getLogger(__name__)
LAYOUTS = ("auto", "uar", "genimage", "flat", "csv", "plain")
GENIMAGE_DIRS = {"nature": 0, "ai": 1}
GENIMAGE_SPLITS = {"train": "train", "val": "val"}
FLAT_DIRS = {"real": 0, "fake": 1}


@dataclass(frozen=True)
class IndexOptions:
    """How `index_images` reads a folder (the defaults are `aigi index`'s).

    Attributes:
        layout: uar, genimage, flat, csv or plain; auto finds it (plain when no other layout is found).
        csv: the CSV of the csv layout (paths relative to the root; given alone, it means layout csv).
        source: the source of rows not inside a generator folder (default: the root's name).
        domain: the semantic domain of every row without one.
        pair_by_stem: a fake whose file stem equals a real's in the same folder is that real's aligned fake.
        allow_outside_root: also index files outside the root (CSV paths with .. or absolute, symlinks out of it).
        split: give every row this split (train, val, test).
        split_ratio: assign splits by pair_id instead, e.g. `train=0.8,test=0.2`, seeded by `seed`.
        seed: the seed of `split_ratio`.
        progress: report progress while hashing and probing the images.
    """

    layout: str = "auto"
    csv: str | Path | None = None
    source: str | None = None
    domain: str = ""
    pair_by_stem: bool = False
    allow_outside_root: bool = False
    split: str | None = None
    split_ratio: str | None = None
    seed: int = 0
    progress: bool = True


@dataclass
class IndexResult:
    """What `index_images` wrote: the manifest's rows, its file, the files skipped as non-images (path, reason)
    and the number of duplicate files dropped (same bytes as an earlier image)."""

    manifest: pd.DataFrame
    path: Path
    skipped: list[tuple[str, str]]
    duplicates: int


@dataclass(frozen=True)
class Found:
    """One candidate image found in a layout."""

    path: Path
    label: int
    source: str
    split: str = ""
    domain: str = ""
    pair_id: str = ""


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def scan_uar(root: Path, *, source: str) -> list[Found]:
    """`<source>/[...]/0_real|1_fake/*` (ForenSynths, AIGCDetectBenchmark, UAR): the source is the first folder
    under `root` (category sub-folders merge into it), or `source` when `0_real`/`1_fake` sit in `root` itself."""
    found = []
    for name, label in LABEL_DIRS.items():
        for folder in sorted(d for d in root.rglob(name) if d.is_dir()):
            rel = folder.relative_to(root)
            src = rel.parts[0] if len(rel.parts) > 1 else source
            found += [Found(f, label, src) for f in _files(folder)]
    return found


def scan_genimage(root: Path, *, source: str) -> list[Found]:
    """GenImage: `<gen>/{train,val}/{ai,nature}/*`; the source is `<gen>`, the split comes from the folder."""
    found = []
    for folder in sorted(d for d in root.rglob("*") if d.is_dir() and d.name in GENIMAGE_DIRS):
        if folder.parent.name not in GENIMAGE_SPLITS:
            continue
        rel = folder.relative_to(root)
        src = rel.parts[0] if len(rel.parts) > 2 else source
        split = GENIMAGE_SPLITS[folder.parent.name]
        found += [Found(f, GENIMAGE_DIRS[folder.name], src, split) for f in _files(folder)]
    return found


def scan_flat(root: Path, *, source: str) -> list[Found]:
    """`real/` and `fake/` directly in `root` (any depth below them); every row gets `source`."""
    return [
        Found(f, label, source)
        for name, label in FLAT_DIRS.items()
        if (root / name).is_dir()
        for f in _files(root / name)
    ]


def scan_plain(root: Path, *, source: str) -> list[Found]:
    """Any folder of images without a real/fake layout: every file under `root` is a real image of `source`."""
    return [Found(f, 0, source) for f in _files(root)]


def scan_csv(root: Path, csv: Path, *, source: str) -> list[Found]:
    """A CSV with columns `path` (relative to `root`) and `label`, optionally `source`, `domain`, `split`, `pair_id`."""
    if not csv.is_file():
        raise FileNotFoundError(f"CSV {csv} does not exist; pass the CSV listing path,label of each image")
    try:
        df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ValueError(
            f"{csv}: not a readable CSV ({one_line(err)}); a layout CSV is UTF-8 text with a header line "
            "path,label[,source,domain,split,pair_id]"
        ) from None
    missing = [c for c in ("path", "label") if c not in df.columns]
    if missing:
        raise ValueError(
            f"{csv}: missing column(s) {missing}; a layout CSV needs 'path' and 'label' "
            "(optional: source, domain, split, pair_id)"
        )
    bad = sorted(set(df["label"]) - {"0", "1"})
    if bad:
        raise ValueError(f"{csv}: column 'label' must be 0 or 1, found {bad[:5]}")
    get = lambda row, col, default="": row[col] if col in df.columns and row[col] != "" else default
    return [
        Found(
            root / r["path"],
            int(r["label"]),
            get(r, "source", source),
            get(r, "split"),
            get(r, "domain"),
            get(r, "pair_id"),
        )
        for r in df.to_dict("records")
    ]


def detect_layout(root: Path) -> str:
    """The layout of `root`: genimage, uar or flat (checked in that order), else plain (every image is real)."""
    dirs = [d for d in root.rglob("*") if d.is_dir()]
    if any(d.name in GENIMAGE_DIRS and d.parent.name in GENIMAGE_SPLITS for d in dirs):
        return "genimage"
    if any(d.name in LABEL_DIRS for d in dirs):
        return "uar"
    if any((root / name).is_dir() for name in FLAT_DIRS):
        return "flat"
    return "plain"


def one_line(err: object) -> str:
    """`err` as one line (inner newlines and runs of spaces folded)."""
    return " ".join(str(err).split())


def printable(path: str | Path) -> str:
    """A path for messages and tables: bytes that are not UTF-8 shown as `\\xNN` escapes."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def is_utf8(path: str | Path) -> bool:
    """Whether a file name decodes as UTF-8 (a manifest stores paths as UTF-8 strings)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def outside_root(found: list[Found], root: Path) -> list[str]:
    """The candidates whose file lies outside `root` (`..` or absolute CSV paths, symlinks out of it), described."""
    top = root.resolve()
    out = []
    for item in found:
        real = item.path.resolve()
        if real.is_relative_to(top):
            continue
        shown = printable(item.path.relative_to(root) if item.path.is_relative_to(root) else item.path)
        link = item.path.is_symlink() or real != Path(os.path.abspath(item.path))
        out.append(f"{shown} (a symlink to {printable(real)})" if link and item.path.is_relative_to(root) else shown)
    return out


def _describe(found: list[Found], root: Path, *, show: bool) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Hash and probe every candidate; return manifest rows and the (path, reason) of skipped files."""
    from aigi.extractors.images import ImageLoadError, probe_image

    rows, skipped = [], []
    for item in progress(found, desc="index", unit="img", quiet=not show, delay_s=SHORT_WORK_S):
        rel = item.path.relative_to(root).as_posix() if item.path.is_relative_to(root) else str(item.path)
        if not is_utf8(rel):
            skipped.append((printable(rel), "file name is not valid UTF-8; rename it"))
            continue
        try:
            width, height, fmt = probe_image(item.path)
        except ImageLoadError as err:
            skipped.append((rel, err.reason))
            continue
        rows.append(
            {
                "image_id": sha256_file(item.path),
                "path": rel,
                "label": item.label,
                "source": item.source,
                "domain": item.domain,
                "split": item.split,
                "pair_id": item.pair_id,
                "width": width,
                "height": height,
                "format": fmt,
            }
        )
    columns = ["image_id", "path", "label", "source", "domain", "split", "pair_id", "width", "height", "format"]
    return pd.DataFrame(rows, columns=columns), skipped


def pair_by_stem(df: pd.DataFrame) -> pd.DataFrame:
    """Reals keep their own image_id as pair_id; a fake gets the image_id of the real with its stem in its set."""
    out = df.copy()
    parts = out["path"].map(lambda p: Path(p).parts)
    group = parts.map(lambda p: "/".join(p[:-2]))
    stem = out["path"].map(lambda p: Path(p).stem)
    is_real = out["label"] == 0
    reals = dict(zip(zip(group[is_real], stem[is_real]), out.loc[is_real, "image_id"]))
    fakes = pd.Series(list(zip(group, stem)), index=out.index).map(reals).fillna("")
    out["pair_id"] = out["pair_id"].where(out["pair_id"] != "", fakes.where(~is_real, out["image_id"]))
    return out


def apply_splits(df: pd.DataFrame, *, split: str | None, split_ratio: str | None, seed: int) -> pd.DataFrame:
    """Give manifest-like rows the split `split`, or splits by pair_id from `split_ratio` (`train=0.8,test=0.2`)
    seeded by `seed`; unchanged when neither is given."""
    from aigi.cache import assign_splits
    from aigi.common.grammar import parse_split_ratio

    if split:
        return df.assign(split=split)
    if split_ratio:
        return assign_splits(df, parse_split_ratio(split_ratio), seed=seed)
    return df


def build_manifest(
    root: str | Path, options: IndexOptions = IndexOptions(), *, exclude: Path | None = None
) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Manifest rows for the images under `root` (splits untouched), and the files skipped as non-images.

    Paths are relative to `root`. Files outside `root` (CSV paths with `..` or absolute, symlinks pointing out of
    it) are refused unless `options.allow_outside_root`; `exclude` (the manifest being written) is never indexed.
    """
    root = Path(root)
    layout, src, found = _find(root, options)
    if exclude is not None:
        found = [f for f in found if Path(os.path.abspath(f.path)) != Path(os.path.abspath(exclude))]
    if not found:
        raise ValueError(f"{root}: no files found (layout {layout}); check the folder, or pass --layout/--csv")
    outside = [] if options.allow_outside_root else outside_root(found, root)
    if outside:
        raise ValueError(
            f"{len(outside)} file(s) lie outside {root}: {'; '.join(outside[:3])}; pass --allow-outside-root to "
            "index them anyway, or move them into the folder"
        )
    if layout == "plain":
        LOG.warning(
            f"note: {root} has no real/fake layout (<source>/0_real|1_fake, real/ + fake/, GenImage): every image "
            f"is indexed as real (label 0, source {src}); make aligned fakes of them with `aigi fakes vae|sr`"
        )
    df, skipped = _describe(found, root, show=options.progress)
    df = df.sort_values("path", kind="stable").reset_index(drop=True)
    if options.domain:
        df["domain"] = df["domain"].where(df["domain"] != "", options.domain)
    df["pair_id"] = df["pair_id"].where(df["pair_id"] != "", df["image_id"].where(df["label"] == 0, ""))
    return (pair_by_stem(df) if options.pair_by_stem else df), skipped


def _find(root: Path, options: IndexOptions) -> tuple[str, str, list[Found]]:
    """The layout of `root`, the default source of its rows, and the candidate files the layout finds."""
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist; pass the folder that holds the images")
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is a file, not a folder; pass the folder that holds the images")
    layout, csv = options.layout, options.csv
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
    if csv is not None and layout == "auto":
        layout = "csv"
    if layout == "csv" and csv is None:
        raise ValueError("--layout csv needs --csv FILE")
    layout = detect_layout(root) if layout == "auto" else layout
    src = options.source or root.resolve().name
    scanners = {"uar": scan_uar, "genimage": scan_genimage, "flat": scan_flat, "plain": scan_plain}
    found = scan_csv(root, Path(csv), source=src) if layout == "csv" else scanners[layout](root, source=src)
    return layout, src, found


def relative_to_manifest(paths: pd.Series, root: Path, manifest: Path) -> pd.Series:
    """Paths relative to `root` rewritten relative to the folder of `manifest` (where every stage resolves them)."""
    top, here = root.resolve(), manifest.resolve().parent
    return paths.map(lambda p: Path(os.path.relpath(top / p, here)).as_posix())


def index_images(root: str | Path, output: str | Path, options: IndexOptions = IndexOptions()) -> IndexResult:
    """Index the images under `root` into the manifest file `output` (written atomically at the end).

    Duplicate files (same bytes) are kept once; paths are stored relative to the manifest's folder.

    Raises:
        ValueError: when no file under `root` is a readable image, or for a bad layout, CSV or split option.
    """
    from aigi.cache import write_manifest

    root, output = Path(root), Path(output)
    df, skipped = build_manifest(root, options, exclude=output)
    if df.empty:
        reasons = "; ".join(f"{p}: {r}" for p, r in skipped[:3])
        raise ValueError(
            f"{root}: none of the {len(skipped)} files found is a readable image ({reasons}); "
            "point aigi index at a folder of images"
        )
    before = len(df)
    df = df.drop_duplicates(subset="image_id", keep="first").reset_index(drop=True)
    df = apply_splits(df, split=options.split, split_ratio=options.split_ratio, seed=options.seed)
    df["path"] = relative_to_manifest(df["path"], root, output)
    write_manifest(df, output)
    return IndexResult(df, output, skipped, before - len(df))
