"""`aigi extract`: features equal a direct forward, views, bad images, resume after SIGKILL, fingerprint guard."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from aigi import cache, extractors
from aigi.cli import main
from aigi.extractors.images import load_image

ROOT = Path(__file__).resolve().parents[2]
BACKBONE = "timm:vit_tiny_patch16_224"
FEATURES = "l5.mean,pooler"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_manifest(root: Path, n: int, *, seed: int = 0, extra: list[Path] = ()) -> Path:
    """`n` random photos of varied sizes (half labelled fake) plus the `extra` files, indexed in a manifest."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        path = root / "img" / f"im{seed}_{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (40 + 7 * i, 50 + 3 * i, 3), dtype=np.uint8)).save(path)
        rows.append((path, i % 2))
    rows += [(p, 0) for p in extra]
    table = pd.DataFrame(
        {
            "image_id": [_sha(p) if p.stat().st_size else hashlib.sha256(p.name.encode()).hexdigest() for p, _ in rows],
            "path": [str(p.relative_to(root)) for p, _ in rows],
            "label": [lab for _, lab in rows],
            "source": ["gen" if lab else "real" for _, lab in rows],
            "split": "train",
        }
    )
    return cache.write_manifest(table, root / f"manifest{seed}.parquet")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight vit_tiny saved as a plain state dict, loaded back the way real weights are."""
    import timm
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "vit_tiny.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224", pretrained=False).state_dict(), path)
    return path


def extract_args(manifest: Path, cache_dir: Path, weights: Path, *extra: str) -> list[str]:
    return [
        "extract",
        "--manifest",
        str(manifest),
        "--backbone",
        BACKBONE,
        "--weights",
        str(weights),
        "--features",
        FEATURES,
        "--cache",
        str(cache_dir),
        "--shard-size",
        "4",
        "--batch-size",
        "3",
        *extra,
    ]


def test_features_equal_direct_forward_for_each_view(tmp_path: Path, weights: Path) -> None:
    manifest = make_manifest(tmp_path, 5)
    assert main(extract_args(manifest, tmp_path / "c", weights, "--views", "orig,jpeg:75")) == 0
    fs = cache.open(tmp_path / "c").load()
    assert len(fs) == 10 and sorted(set(fs.meta["view"])) == ["jpeg:75", "orig"]

    ex = extractors.build(BACKBONE, weights=weights, features=FEATURES.split(","))
    import torch

    for view in ("orig", "jpeg:75"):
        sub = fs.where(view=view)
        batch = torch.stack(
            [
                ex.transform(extractors.apply_view(load_image(tmp_path / p), view), i)
                for p, i in zip(sub.meta["path"], sub.meta["image_id"])
            ]
        )
        direct = ex(batch)
        for name in FEATURES.split(","):
            want = direct[name].numpy().astype(np.float16).astype(np.float32)  # the cache stores float16
            np.testing.assert_allclose(sub.features[name], want, rtol=0, atol=2e-3 * np.abs(want).max())
    # orig and jpeg views of the same image differ: the view was really applied
    o, j = fs.where(view="orig"), fs.where(view="jpeg:75")
    assert not np.allclose(o.features["pooler"], j.features["pooler"])


def _hostile_files(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    photo = Image.fromarray(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8))
    files = {}
    buf = io.BytesIO()
    photo.save(buf, "PNG")
    (folder / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    files["truncated"] = folder / "truncated.png"
    (folder / "empty.jpg").write_bytes(b"")
    files["empty"] = folder / "empty.jpg"
    (folder / "text.jpg").write_text("hello, I am not a JPEG")
    files["text"] = folder / "text.jpg"
    photo.convert("CMYK").save(folder / "cmyk.jpg")
    files["cmyk"] = folder / "cmyk.jpg"
    Image.fromarray((rng.integers(0, 65535, (30, 40))).astype(np.uint16)).save(folder / "deep16.png")
    files["16bit"] = folder / "deep16.png"
    pal = photo.convert("P")
    pal.info["transparency"] = 0
    pal.save(folder / "palette.png")
    files["palette"] = folder / "palette.png"
    frames = [photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    files["animated"] = folder / "anim.gif"
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.save(folder / "rotated.jpg", exif=exif.tobytes())
    files["exif"] = folder / "rotated.jpg"
    Image.new("RGB", (1, 1), (200, 10, 10)).save(folder / "one.png")
    files["1x1"] = folder / "one.png"
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, "PNG")  # 400 M pixels in a few kB
    (folder / "bomb.png").write_bytes(bomb.getvalue())
    files["bomb"] = folder / "bomb.png"
    photo.save(folder / "фото 写真.png")
    files["unicode"] = folder / "фото 写真.png"
    return files


def test_bad_images_are_recorded_and_the_run_goes_on(tmp_path: Path, weights: Path, capsys) -> None:
    files = _hostile_files(tmp_path / "img" / "bad")
    manifest = make_manifest(tmp_path, 2, extra=list(files.values()))
    assert main(extract_args(manifest, tmp_path / "c", weights)) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "9 rows" in out[0] and "4 image(s) failed" in out[0]
    c = cache.open(tmp_path / "c")
    errors = {Path(e["path"]).name: e["reason"] for e in c.errors()}
    assert set(errors) == {"truncated.png", "empty.jpg", "text.jpg", "bomb.png"}
    assert "truncated" in errors["truncated.png"] and "empty" in errors["empty.jpg"]
    assert "not an image" in errors["text.jpg"] and "bomb" in errors["bomb.png"]
    got = set(Path(p).name for p in c.meta()["path"])
    assert {"cmyk.jpg", "deep16.png", "palette.png", "anim.gif", "rotated.jpg", "one.png", "фото 写真.png"} <= got
    assert len(c) == 2 + 7


def test_rerun_skips_finished_shards_and_new_rows_get_new_shards(tmp_path: Path, weights: Path) -> None:
    manifest = make_manifest(tmp_path, 6)
    assert main(extract_args(manifest, tmp_path / "c", weights)) == 0
    shards = sorted((tmp_path / "c" / "shards").glob("*.h5"))
    stamps = [p.stat().st_mtime_ns for p in shards]
    assert main(extract_args(manifest, tmp_path / "c", weights)) == 0
    assert [p.stat().st_mtime_ns for p in shards] == stamps  # nothing rewritten

    both = pd.concat([cache.read_manifest(manifest), cache.read_manifest(make_manifest(tmp_path, 3, seed=7))])
    cache.write_manifest(both, tmp_path / "both.parquet")
    assert main(extract_args(tmp_path / "both.parquet", tmp_path / "c", weights)) == 0
    meta = cache.open(tmp_path / "c").meta()
    assert len(meta) == 9 and not meta.duplicated(["image_id", "view"]).any()
    assert [p.stat().st_mtime_ns for p in shards] == stamps


def test_other_weights_are_refused_naming_the_field(tmp_path: Path, weights: Path, capsys) -> None:
    import torch

    manifest = make_manifest(tmp_path, 2)
    assert main(extract_args(manifest, tmp_path / "c", weights)) == 0
    sd = torch.load(weights, weights_only=True)
    sd["pos_embed"] = sd["pos_embed"] + 1
    torch.save(sd, tmp_path / "other.pth")
    assert main(extract_args(manifest, tmp_path / "c", tmp_path / "other.pth")) == 2
    assert "weights_sha256" in capsys.readouterr().err


def _cache_content(path: Path) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    fs = cache.open(path).load()
    order = np.lexsort((fs.meta["view"].to_numpy(), fs.meta["image_id"].to_numpy()))
    return fs.meta.iloc[order].reset_index(drop=True), {k: v[order] for k, v in fs.features.items()}


KILL_AFTER_SHARD = textwrap.dedent(
    """
    import os, signal, sys
    from aigi.cache.writer import CacheWriter
    from aigi.cli import main

    kill_after, written = int(sys.argv[1]), []
    write_shard = CacheWriter.write_shard

    def write_then_die(self, *args, **kwargs):
        path = write_shard(self, *args, **kwargs)  # renamed into place and indexed
        written.append(path)
        if len(written) == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        return path

    CacheWriter.write_shard = write_then_die
    sys.exit(main(sys.argv[2:]))
    """
)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path: Path, weights: Path, capsys) -> None:
    """A real second process, really SIGKILLed, at the same point on any machine: it kills itself right after
    its second of six shards is committed (a signal sent from outside races a fast or a slow machine)."""
    manifest = make_manifest(tmp_path, 24)
    args = extract_args(manifest, tmp_path / "killed", weights, "--batch-size", "2")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_SHARD, "2", *args],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    shards = tmp_path / "killed" / "shards"
    assert len(list(shards.glob("*.h5"))) == 2 and len(cache.open(tmp_path / "killed")) == 8
    capsys.readouterr()
    assert main(args) == 0  # resume: the two committed shards are not redone
    assert "extracted 16 rows into 4 shard(s) (2 already done)" in capsys.readouterr().out
    assert main(extract_args(manifest, tmp_path / "clean", weights, "--batch-size", "2")) == 0
    (m1, f1), (m2, f2) = _cache_content(tmp_path / "killed"), _cache_content(tmp_path / "clean")
    pd.testing.assert_frame_equal(m1, m2)
    for name in f2:
        np.testing.assert_array_equal(f1[name], f2[name])
    assert not list(shards.glob("*.tmp*"))


def test_store_dtype_float32_keeps_the_forward_bit_for_bit(tmp_path: Path, weights: Path, capsys) -> None:
    import torch

    manifest = make_manifest(tmp_path, 5)
    one_by_one = ("--batch-size", "1")  # the reference below runs each image alone: same shapes, same rounding
    assert main(extract_args(manifest, tmp_path / "c32", weights, *one_by_one, "--store-dtype", "float32")) == 0
    c32 = cache.open(tmp_path / "c32")
    assert c32.dtype == "float32" and c32.spec["storage_dtype"] == "float32"
    fs = c32.load()
    ex = extractors.build(BACKBONE, weights=weights, features=FEATURES.split(","))
    for path, image_id, *row in zip(fs.meta["path"], fs.meta["image_id"], *fs.features.values()):
        direct = ex(torch.stack([ex.transform(load_image(tmp_path / path), image_id)]))
        for name, got in zip(fs.features, row):
            np.testing.assert_array_equal(got, direct[name].numpy()[0])
    # the default stores float16 under another fingerprint, and one cache never mixes the two
    assert main(extract_args(manifest, tmp_path / "c16", weights, *one_by_one)) == 0
    c16 = cache.open(tmp_path / "c16")
    assert c16.dtype == "float16" and c16.spec["storage_dtype"] == "float16"
    assert c16.fingerprint != c32.fingerprint
    assert cache.spec_diff(c32.spec, c16.spec) == ["storage_dtype: 'float32' -> 'float16'"]
    capsys.readouterr()
    assert main(extract_args(manifest, tmp_path / "c32", weights, *one_by_one)) == 2
    assert "storage_dtype" in capsys.readouterr().err


def test_a_cache_from_before_the_storage_dtype_was_recorded_still_resumes(tmp_path: Path, weights: Path) -> None:
    from dataclasses import asdict

    from aigi.cache import CacheWriter
    from aigi.pipeline.extract import cache_spec

    ex = extractors.build(BACKBONE, weights=weights, features=FEATURES.split(","))
    CacheWriter(tmp_path / "old", spec=asdict(ex.spec), features=dict(ex.feature_shapes), dtype="float16").close()
    assert cache_spec(ex, "float16", tmp_path / "old") == asdict(ex.spec)  # its fingerprint, so it resumes
    assert cache_spec(ex, "float32", tmp_path / "old") == {**asdict(ex.spec), "storage_dtype": "float32"}
    assert cache_spec(ex, "float16", tmp_path / "new") == {**asdict(ex.spec), "storage_dtype": "float16"}
