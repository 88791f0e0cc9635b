"""`aigi index` on generated trees of every layout: labels, sources, splits, ids, sizes, skipped files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from PIL import Image

from aigi import cache
from aigi.cli import main

COUNTER = iter(range(10_000))


def img(path: Path, size=(12, 8), fmt="PNG") -> Path:
    """A small image with unique pixels (so no two files share bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    k = next(COUNTER)
    Image.new("RGB", size, (k % 256, (k // 256) % 256, 7)).save(path, fmt)
    return path


def index(root: Path, tmp_path: Path, *args: str):
    """Index `root` into a manifest beside it; rows keyed by their path relative to `root` (checked to resolve)."""
    out = tmp_path / "manifest.parquet"
    assert main(["index", str(root), "-o", str(out), "--overwrite", *args]) == 0  # one manifest, several calls
    m = cache.read_manifest(out)
    assert all((out.parent / p).is_file() for p in m["path"])  # paths are relative to the manifest's folder
    m["path"] = [Path(os.path.relpath(out.parent / p, root)).as_posix() for p in m["path"]]
    return m.set_index("path")


def test_uar_layout_with_categories_and_a_non_image(tmp_path, capsys):
    root = tmp_path / "data"
    a = img(root / "progan/0_real/a.png", (20, 10))
    img(root / "progan/1_fake/a.png")
    img(root / "sd/car/0_real/b.jpg", fmt="JPEG")
    img(root / "sd/cat/1_fake/c.png")
    (root / "progan/0_real/notes.txt").write_text("not an image")
    m = index(root, tmp_path, "--domain", "object")
    assert sorted(m.index) == [
        "progan/0_real/a.png",
        "progan/1_fake/a.png",
        "sd/car/0_real/b.jpg",
        "sd/cat/1_fake/c.png",
    ]
    assert m["label"].to_dict() == {p: int("1_fake" in p) for p in m.index}
    assert m["source"].to_dict() == {p: p.split("/")[0] for p in m.index}
    assert m.loc["progan/0_real/a.png", "image_id"] == hashlib.sha256(a.read_bytes()).hexdigest()
    assert tuple(m.loc["progan/0_real/a.png", ["width", "height", "format"]]) == (20, 10, "png")
    assert m.loc["sd/car/0_real/b.jpg", "format"] == "jpeg" and (m["domain"] == "object").all()
    assert (m["split"] == "").all()
    assert m.loc["progan/0_real/a.png", "pair_id"] == m.loc["progan/0_real/a.png", "image_id"]
    assert m.loc["progan/1_fake/a.png", "pair_id"] == ""  # not paired unless --pair-by-stem
    err = capsys.readouterr().err
    assert "skipped 1 file(s)" in err and "notes.txt" in err


def test_bare_layout_pairs_by_stem_and_split_ratio_keeps_pairs(tmp_path):
    root = tmp_path / "set"
    for i in range(20):
        img(root / f"0_real/{i}.png")
        img(root / f"1_fake/{i}.png")
    m = index(
        root, tmp_path, "--source", "mine", "--pair-by-stem", "--split-ratio", "train=0.5,test=0.5", "--seed", "3"
    )
    assert (m["source"] == "mine").all() and len(m) == 40
    assert (
        m.loc[[f"1_fake/{i}.png" for i in range(20)], "pair_id"].to_numpy()
        == m.loc[[f"0_real/{i}.png" for i in range(20)], "image_id"].to_numpy()
    ).all()
    assert m.groupby("pair_id")["split"].nunique().max() == 1
    assert (m["split"] == "train").sum() == 20


def test_genimage_layout_takes_splits_from_folders(tmp_path):
    root = tmp_path / "GenImage"
    for gen in ("midjourney", "vqdm"):
        for split in ("train", "val"):
            img(root / gen / split / "ai" / "x.png")
            img(root / gen / split / "nature" / "y.JPEG", fmt="JPEG")
    m = index(root, tmp_path)
    assert len(m) == 8
    assert m["label"].to_dict() == {p: int("/ai/" in p) for p in m.index}
    assert m["split"].to_dict() == {p: p.split("/")[1] for p in m.index}
    assert m["source"].to_dict() == {p: p.split("/")[0] for p in m.index}
    assert (index(root, tmp_path, "--split", "test")["split"] == "test").all()  # --split overrides


def test_flat_layout(tmp_path):
    root = tmp_path / "mix"
    img(root / "real/a.png")
    img(root / "fake/deep/b.webp", fmt="WEBP")
    m = index(root, tmp_path, "--layout", "flat")
    assert m["label"].to_dict() == {"real/a.png": 0, "fake/deep/b.webp": 1}
    assert (m["source"] == "mix").all() and m.loc["fake/deep/b.webp", "format"] == "webp"


def test_csv_layout_and_its_errors(tmp_path, capsys):
    root = tmp_path / "any"
    img(root / "x/1.png")
    img(root / "y/2.png")
    csv = tmp_path / "list.csv"
    csv.write_text("path,label,source,split\nx/1.png,0,,val\ny/2.png,1,dalle3,test\n")
    m = index(root, tmp_path, "--csv", str(csv))
    assert m["label"].to_dict() == {"x/1.png": 0, "y/2.png": 1}
    assert m["source"].to_dict() == {"x/1.png": "any", "y/2.png": "dalle3"}
    assert m["split"].to_dict() == {"x/1.png": "val", "y/2.png": "test"}
    csv.write_text("file,label\nx/1.png,0\n")
    assert main(["index", str(root), "-o", str(tmp_path / "m.parquet"), "--csv", str(csv)]) == 2
    assert "missing column(s) ['path']" in capsys.readouterr().err


def test_folder_without_layout_is_indexed_as_reals(tmp_path, capsys):
    img(tmp_path / "root/some/a.png")
    m = index(tmp_path / "root", tmp_path)
    assert m["label"].to_dict() == {"some/a.png": 0} and m["source"].to_dict() == {"some/a.png": "root"}
    assert "indexed as real" in capsys.readouterr().err


@pytest.mark.parametrize("ratio", ["train=0.7,test=0.2", "train=x"])
def test_bad_split_ratio(tmp_path, capsys, ratio):
    img(tmp_path / "r/real/a.png")
    assert main(["index", str(tmp_path / "r"), "-o", str(tmp_path / "m.parquet"), "--split-ratio", ratio]) == 2
    assert "split ratio" in capsys.readouterr().err
