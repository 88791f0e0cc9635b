"""The `fakes` stage: make aligned fakes for a manifest's real images with a fake kind (`aigi.fakes.registry`).

Plan the outputs, batch by size, write atomically, resume, add manifest rows. Output layout (importable again with
`aigi index`, ForenSynths style):
    DIR/<slug>/1_fake/<real's relative path, same stem>.<png|jpg>   the fakes, slug = source with ':' -> '_'
    DIR/<slug>/0_real/<...same...>                                   re-encoded reals (resave_real, resize)
    DIR/<slug>/errors.json                                           reals that could not be used, with the reason
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd
from PIL import Image

from aigi.cache import read_manifest, write_manifest
from aigi.cache.locking import remove_dead
from aigi.common.files import atomic_write, sha256_file
from aigi.common.grammar import parse_format
from aigi.common.progress import progress as progress_bar
from aigi.extractors.images import ImageLoadError, load_image, probe_image
from aigi.fakes.imageio import Encoding, encoding_for
from aigi.fakes.registry import FakeTransform, fake_kind


@dataclass(frozen=True)
class FakesConfig:
    """What to make and where (the stage's options, whatever the kind). Paths in manifests are relative to `root`
    (default: the manifest's folder)."""

    manifest: Path
    out_dir: Path  # the images folder (`-o/--out`)
    output_manifest: Path | None = None  # default: rewrite `manifest` in place
    root: Path | None = None
    fmt: str = "same"  # same | png | jpeg:Q
    resave_real: bool = False
    resize: int | None = None  # bicubic N x N of real and fake alike (implies resave_real)
    splits: tuple[str, ...] | None = None  # None: every split
    batch_size: int = 4


@dataclass
class FakesResult:
    """Counts, the per-image errors, the rows added and where the manifest was written."""

    written: int = 0
    skipped: int = 0
    errors: list[dict] = field(default_factory=list)
    rows: pd.DataFrame | None = None
    manifest: Path | None = None
    source: str = ""  # the fakes' source value

    def summary(self, source: str | None = None) -> str:
        """One line for the terminal (`source`: instead of the result's own)."""
        source = self.source if source is None else source
        failed = f", {len(self.errors)} failed (reasons in errors.json)" if self.errors else ""
        return f"{source}: {self.written} written, {self.skipped} already done{failed}; manifest {self.manifest}"


@dataclass
class _Item:
    real: dict  # the real's manifest row
    src: Path  # the real's file
    fake_path: Path
    real_path: Path | None  # re-encoded real, when asked
    size: tuple[int, int] = (-1, -1)  # width, height of the input to the transform


def slug(source: str) -> str:
    """A folder name for a source: `vae:sd14` -> `vae_sd14`."""
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in source)


def safe_relative(path: str) -> PurePosixPath:
    """A manifest path as a relative path that cannot leave the output folder (anchors dropped, `..` -> `_`)."""
    parts = [p for p in PurePosixPath(path.replace("\\", "/")).parts if p not in ("/", "")]
    parts = ["_" if p == ".." else p for p in parts if not p.endswith(":") and p != "."]
    return PurePosixPath(*parts) if parts else PurePosixPath("_")


def _extension(row: dict, src: Path, fmt: str) -> str:
    """Output extension without decoding the real: from `--format`, the manifest's `format`, or the header."""
    if fmt == "png":
        return ".png"
    if fmt.startswith("jpeg"):
        return ".jpg"
    kind = str(row.get("format") or "").lower() or probe_image(src)[2]
    return ".jpg" if kind in ("jpeg", "jpg", "mpo") else ".png"


def _plan(reals: pd.DataFrame, cfg: FakesConfig, root: Path, base: Path) -> tuple[list[_Item], list[dict]]:
    items, errors, claimed = [], [], {}
    resave = cfg.resave_real or cfg.resize is not None
    for row in reals.to_dict("records"):
        src = root / row["path"]
        try:
            rel = _relative_name(src, row["path"], base).with_suffix(_extension(row, src, cfg.fmt))
        except ImageLoadError as err:
            errors.append(_error(row, err.reason))
            continue
        if rel in claimed:
            errors.append(_error(row, f"output {rel} already made from {claimed[rel]} (same folder and stem)"))
            continue
        claimed[rel] = row["path"]
        w, h = (cfg.resize, cfg.resize) if cfg.resize else (int(row.get("width", -1)), int(row.get("height", -1)))
        real_path = base / "0_real" / rel if resave else None
        items.append(_Item(row, src, base / "1_fake" / rel, real_path, (w, h)))
    return items, errors


def _relative_name(src: Path, path: str, base: Path) -> PurePosixPath:
    """Where a real's outputs go below `base/1_fake`: its manifest path, or, for a real this run re-encoded
    earlier (a manifest updated in place), its path below `base/0_real`, so a re-run finds the same outputs."""
    try:
        return PurePosixPath(src.resolve().relative_to((base / "0_real").resolve()).as_posix())
    except ValueError:
        return safe_relative(path)


def _error(row: dict, reason: str) -> dict:
    return {"image_id": str(row["image_id"]), "path": str(row["path"]), "reason": reason}


def _done(item: _Item) -> bool:
    return item.fake_path.is_file() and (item.real_path is None or item.real_path.is_file())


def _batches(items: list[_Item], transform: FakeTransform, batch_size: int) -> Iterator[list[_Item]]:
    """Items grouped by the transform's batch key (their padded size), in a stable order, `batch_size` at a time."""
    groups: dict[tuple, list[_Item]] = defaultdict(list)
    for item in items:
        if item.size[0] <= 0 or item.size[1] <= 0:
            try:
                item.size = probe_image(item.src)[:2]
            except ImageLoadError:
                item.size = (0, 0)  # fails again, with its reason, when loaded
        groups[transform.batch_key(*item.size) if min(item.size) > 0 else (0, 0)].append(item)
    for key in sorted(groups):
        group = groups[key]
        for start in range(0, len(group), batch_size):
            yield group[start : start + batch_size]


def _load(item: _Item, resize: int | None) -> Image.Image:
    img = load_image(item.src)
    if resize:
        img = img.resize((resize, resize), Image.BICUBIC)
    return img


class FakeMaker:
    """Runs one transform over the reals of a manifest (see the module docstring for the layout)."""

    def __init__(self, transform: FakeTransform, cfg: FakesConfig, *, progress: bool | None = None) -> None:
        self.transform = transform
        self.cfg = replace(cfg, manifest=Path(cfg.manifest), fmt=parse_format(cfg.fmt))
        self.progress = progress
        self.source: str = transform.source

    def run(self) -> FakesResult:
        """Make every missing fake, then write the manifest with the new rows. Safe to interrupt and re-run."""
        cfg = self.cfg
        df = read_manifest(cfg.manifest)
        root = Path(cfg.root) if cfg.root else cfg.manifest.resolve().parent
        out_manifest = Path(cfg.output_manifest or cfg.manifest)
        new_root = Path(cfg.root) if cfg.root else out_manifest.resolve().parent
        reals = df[(df["label"] == 0) & (df["source"] != self.source)]
        if cfg.splits:
            reals = reals[reals["split"].isin(cfg.splits)]
        base = Path(cfg.out_dir) / slug(self.source)
        remove_dead_temps(Path(cfg.out_dir))  # partial files of a killed run
        if reals.empty:
            where = f" in splits {list(cfg.splits)}" if cfg.splits else ""
            raise ValueError(f"{cfg.manifest} has no real image (label 0){where} to make fakes of; index reals first")
        items, errors = _plan(reals, cfg, root, base)
        result = FakesResult(errors=errors)
        todo = [it for it in items if not _done(it)]
        result.skipped = len(items) - len(todo)
        terminal = True if self.progress else None  # None: a bar on a terminal, plain lines otherwise
        with progress_bar(total=len(todo), desc=self.source, unit="img", quiet=self.progress is False,
                          terminal=terminal) as bar:  # fmt: skip
            for batch in _batches(todo, self.transform, cfg.batch_size):
                result.written += self._run_batch(batch, result.errors)
                bar.update(len(batch))
        done = [it for it in items if _done(it)]
        self._write_errors(base, result.errors)
        if not done:
            raise ValueError(_all_failed(result.errors, base / "errors.json"))
        result.rows = self._fake_rows(done, new_root)
        result.manifest = self._write_manifest(df, done, result.rows, root=root, new_root=new_root, out=out_manifest)
        result.source = self.source
        return result

    def _run_batch(self, batch: list[_Item], errors: list[dict]) -> int:
        loaded: dict[tuple, list[tuple[_Item, Image.Image]]] = defaultdict(list)
        for item in batch:
            try:
                img = _load(item, self.cfg.resize)
            except ImageLoadError as err:
                errors.append(_error(item.real, err.reason))
                continue
            loaded[self.transform.batch_key(img.width, img.height)].append((item, img))
        written = 0
        for pairs in loaded.values():  # one group unless the manifest's sizes were stale
            try:
                outputs = self.transform([img for _, img in pairs], [str(it.real["image_id"]) for it, _ in pairs])
            except (RuntimeError, ValueError) as err:  # e.g. out of memory, an image too small for the model
                errors.extend(_error(it.real, f"model failed: {type(err).__name__}: {err}") for it, _ in pairs)
                continue
            for (item, img), fake in zip(pairs, outputs):
                if fake.size != img.size:
                    raise RuntimeError(f"{self.source} returned {fake.size} for a {img.size} image {item.src}")
                self._save(item, img, fake)
                written += 1
        return written

    def _save(self, item: _Item, real: Image.Image, fake: Image.Image) -> None:
        enc = self._encoding(item)
        if item.real_path is not None:
            atomic_write(item.real_path, enc.encode(real), fsync=True)
        atomic_write(item.fake_path, enc.encode(fake), fsync=True)  # last: its presence marks the item done

    def _encoding(self, item: _Item) -> Encoding:
        enc = encoding_for(self.cfg.fmt, item.src)
        if enc.extension != item.fake_path.suffix:  # `format` in the manifest disagreed with the file
            enc = Encoding("png") if item.fake_path.suffix == ".png" else Encoding("jpeg", {"quality": 95})
        return enc

    def _fake_rows(self, done: list[_Item], new_root: Path) -> pd.DataFrame:
        rows = []
        for item in done:
            real = item.real
            rows.append(
                {
                    **_file_fields(item.fake_path, new_root),
                    "label": 1,
                    "source": self.source,
                    "domain": real.get("domain", ""),
                    "split": real.get("split", ""),
                    "pair_id": _pair(real),
                }
            )
        return pd.DataFrame(rows, columns=["image_id", "path", "label", "source", "domain", "split", "pair_id",
                                           "width", "height", "format"])  # fmt: skip

    def _write_manifest(
        self, df: pd.DataFrame, done: list[_Item], rows: pd.DataFrame, *, root: Path, new_root: Path, out: Path
    ) -> Path:
        old = df.copy()
        if root.resolve() != new_root.resolve():
            old["path"] = [_rebase(p, root, new_root) for p in old["path"]]
        old = old[~((old["source"] == self.source) & old["path"].isin(set(rows["path"])))]
        by_id = {str(it.real["image_id"]): it for it in done}
        reals = (old["label"] == 0) & old["image_id"].isin(set(by_id))
        for idx in old.index[reals]:
            item = by_id[str(old.at[idx, "image_id"])]
            old.at[idx, "pair_id"] = _pair(item.real)
            if item.real_path is not None:
                for key, value in _file_fields(item.real_path, new_root).items():
                    old.at[idx, key] = value
        return write_manifest(pd.concat([old, rows.astype(old.dtypes.to_dict())], ignore_index=True), out)

    @staticmethod
    def _write_errors(base: Path, errors: list[dict]) -> None:
        path = base / "errors.json"
        if errors:
            atomic_write(path, json.dumps(errors, indent=1), fsync=True)
        elif path.exists():
            path.unlink()


def _all_failed(errors: list[dict], listing: Path) -> str:
    """The message of a run in which no real image gave a fake: the first reasons and where the rest are."""
    first = "; ".join(f"{e['path']}: {e['reason']}" for e in errors[:3])
    return (
        f"every one of the {len(errors)} real image(s) failed ({first}); fix or remove them "
        f"(all reasons in {listing}); the manifest is unchanged"
    )


def _pair(real: dict) -> str:
    return str(real.get("pair_id") or "") or str(real["image_id"])


def _file_fields(path: Path, new_root: Path) -> dict:
    with Image.open(path) as img:
        width, height, fmt = img.width, img.height, (img.format or "").lower()
    rel = Path(os.path.relpath(path.resolve(), new_root.resolve())).as_posix()
    return {"image_id": sha256_file(path), "path": rel, "width": width, "height": height, "format": fmt}


def _rebase(path: str, root: Path, new_root: Path) -> str:
    if Path(path).is_absolute():
        return path
    return Path(os.path.relpath((root / path).resolve(), new_root.resolve())).as_posix()


def run_fakes(transform: FakeTransform, cfg: FakesConfig, *, progress: bool | None = None) -> FakesResult:
    """Make the fakes `transform` defines for the reals of `cfg.manifest`; see `FakeMaker`."""
    return FakeMaker(transform, cfg, progress=progress).run()


def remove_dead_temps(folder: Path) -> int:
    """Delete the temporary files left below `folder` by killed runs (never a live run's); return how many."""
    if not folder.is_dir():
        return 0
    dirs = [folder, *(p for p in folder.rglob("*") if p.is_dir())]
    return sum(len(remove_dead(d, ".*.tmp-*")) for d in dirs)


def check_config(cfg: FakesConfig) -> None:
    """Refuse options that cannot work before a model is loaded: the images folder named like a manifest, a batch
    size below 1, an unknown format, a missing or broken manifest (each a ValueError or OSError on one line)."""
    parse_format(cfg.fmt)
    if Path(cfg.out_dir).suffix.lower() in {".parquet", ".csv"}:
        raise ValueError(
            f"-o/--out {cfg.out_dir} names the images folder; give it once, and the new manifest as "
            "--output-manifest FILE"
        )
    read_manifest(cfg.manifest)  # a missing or broken manifest fails before a model is loaded
    if cfg.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {cfg.batch_size}")


def make_fakes(kind: str, options: Any, cfg: FakesConfig, *, progress: bool | None = None) -> FakesResult:
    """The whole stage: check `cfg`, load kind `kind`'s model from `options` (its options dataclass), make its fakes.

    The kind's own resize (`aigi fakes vae --resize`) applies to the reals too, unless `cfg.resize` is set.
    """
    fake = fake_kind(kind)
    if not isinstance(options, fake.options):
        raise TypeError(f"fake kind {kind!r} takes {fake.options.__name__} options, got {type(options).__name__}")
    if cfg.resize is None:
        cfg = replace(cfg, resize=fake.resize(options))
    check_config(cfg)
    return run_fakes(fake.make(options), cfg, progress=progress)
