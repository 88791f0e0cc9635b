"""`aigi extract`'s loader end to end: an image replaced after indexing, device decoding against the CPU path, the
worker kinds, options and devices, a writer that fails, --compile."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from aigi import cache
from aigi.cli import main
from tests.extractors.test_loader import jpeg, photo

BACKBONE = "timm:test_vit"


def jpeg_manifest(root: Path, n: int, *, extra: dict[str, bytes] | None = None) -> Path:
    """`n` JPEG photos of several sizes (and `extra` files), indexed with sha256 ids like `aigi index`."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    files = {f"p{i:02d}.jpg": jpeg(photo(120 + 13 * i, 100 + 7 * (i % 4), seed=i)) for i in range(n)}
    files.update(extra or {})
    for name, data in files.items():
        (root / "img" / name).write_bytes(data)
    table = pd.DataFrame(
        {
            "image_id": [hashlib.sha256(d).hexdigest() for d in files.values()],
            "path": [f"img/{name}" for name in files],
            "label": [i % 2 for i in range(len(files))],
            "source": ["gen" if i % 2 else "real" for i in range(len(files))],
            "split": "train",
        }
    )
    return cache.write_manifest(table, root / "manifest.parquet")


def extract(manifest: Path, cache_dir: Path, *extra: str) -> int:
    return main(["extract", "--manifest", str(manifest), "--backbone", BACKBONE, "--random-weights",
                 "--cache", str(cache_dir), "--shard-size", "4", "--batch-size", "3", *extra])  # fmt: skip


def content(path: Path) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    fs = cache.open(path).load()
    order = np.argsort(fs.meta["image_id"].to_numpy(), kind="stable")
    return fs.meta.iloc[order].reset_index(drop=True), {k: v[order] for k, v in fs.features.items()}


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten JPEG photos, a PNG, a progressive, a CMYK and an EXIF-rotated JPEG."""
    base = photo(90, 70, seed=20)
    exif = Image.Exif()
    exif[0x0112] = 6
    png = Path(tmp_path_factory.mktemp("png")) / "x.png"
    photo(80, 60, seed=21).save(png)
    extra = {
        "q.png": png.read_bytes(),
        "prog.jpg": jpeg(base, progressive=True),
        "cmyk.jpg": jpeg(base.convert("CMYK")),
        "rot.jpg": jpeg(base, exif=exif.tobytes()),
    }
    return jpeg_manifest(tmp_path_factory.mktemp("photos"), 10, extra=extra)


@pytest.fixture(scope="module")
def reference(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The photos extracted with the defaults (float32 storage: comparisons are exact)."""
    out = tmp_path_factory.mktemp("ref") / "c"
    assert extract(photos, out, "--store-dtype", "float32") == 0
    return out


def test_an_image_replaced_after_indexing_is_refused(tmp_path: Path, capsys) -> None:
    manifest = jpeg_manifest(tmp_path, 3)
    replaced = tmp_path / "img" / "p01.jpg"
    replaced.write_bytes(jpeg(photo(64, 64, seed=99)))  # new bytes under the indexed path
    assert extract(manifest, tmp_path / "c") == 0
    out, err = capsys.readouterr()
    assert "2 rows" in out and "1 image(s) changed on disk since they were indexed" in err
    c = cache.open(tmp_path / "c")
    assert "img/p01.jpg" not in set(c.meta()["path"])  # not stored under the old image_id and label
    (error,) = c.errors()
    assert error["path"] == "img/p01.jpg" and "changed on disk since it was indexed" in error["reason"]
    assert "aigi index" in error["reason"]


def test_device_decoding_gives_the_cpu_features(photos: Path, reference: Path, tmp_path: Path) -> None:
    """On a CPU, `--decode device` runs the GPU path with torchvision's decoder: center_crop features are exact."""
    assert extract(photos, tmp_path / "dev", "--store-dtype", "float32", "--decode", "device") == 0
    assert extract(photos, tmp_path / "cpu", "--store-dtype", "float32", "--decode", "cpu") == 0
    (m_ref, f_ref), (m_dev, f_dev), (m_cpu, f_cpu) = map(content, (reference, tmp_path / "dev", tmp_path / "cpu"))
    pd.testing.assert_frame_equal(m_ref, m_dev)
    pd.testing.assert_frame_equal(m_ref, m_cpu)
    assert len(m_ref) == 14
    for name in f_ref:
        np.testing.assert_array_equal(f_dev[name], f_ref[name])
        np.testing.assert_array_equal(f_cpu[name], f_ref[name])


def test_resize_features_from_device_decoding_are_within_the_stated_tolerance(photos: Path, tmp_path: Path) -> None:
    common = ("--store-dtype", "float32", "--preprocess", "resize")
    assert extract(photos, tmp_path / "dev", *common, "--decode", "device") == 0
    assert extract(photos, tmp_path / "cpu", *common, "--decode", "cpu") == 0
    (_, f_dev), (_, f_cpu) = content(tmp_path / "dev"), content(tmp_path / "cpu")
    for name in f_cpu:  # pixels within one level of 255: features within a few thousandths of their scale
        scale = np.abs(f_cpu[name]).max()
        assert np.abs(f_dev[name] - f_cpu[name]).max() <= 0.01 * scale


@pytest.mark.parametrize("workers", ["0", "2"])
def test_inline_and_worker_decoding_give_the_same_cache(photos: Path, reference: Path, tmp_path: Path, workers) -> None:
    assert extract(photos, tmp_path / "c", "--store-dtype", "float32", "--num-workers", workers) == 0
    (m1, f1), (m2, f2) = content(reference), content(tmp_path / "c")
    pd.testing.assert_frame_equal(m1, m2)
    for name in f1:
        np.testing.assert_array_equal(f1[name], f2[name])


@pytest.mark.slow
def test_two_device_workers_fill_one_cache_without_a_row_lost_or_repeated(photos, reference, tmp_path) -> None:
    assert extract(photos, tmp_path / "c", "--store-dtype", "float32", "--devices", "cpu,cpu", "--shard-size", "2") == 0
    meta = cache.open(tmp_path / "c", keep_duplicates=True).meta()
    assert sorted(meta["image_id"]) == sorted(pd.read_parquet(photos)["image_id"])  # none lost, none twice
    (m1, f1), (m2, f2) = content(reference), content(tmp_path / "c")
    pd.testing.assert_frame_equal(m1, m2)
    for name in f1:
        np.testing.assert_array_equal(f1[name], f2[name])
    assert not list((tmp_path / "c" / "shards").glob(".*claim*"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "tpu9"], "unknown device 'tpu9'; visible devices: cpu"),
        (["--devices", "cpu,gpu"], "unknown device 'gpu'; visible devices: cpu"),
        (["--num-workers", "many"], "--num-workers must be auto or a count >= 0"),
        (["--devices", "cpu,cpu", "--workers", "2"], "give --devices or --workers / --scheduler, not both"),
        (["--devices", "cpu,cpu", "--device", "cpu"], "give --device (one device) or --devices"),
    ],
)
def test_bad_devices_and_workers_are_one_line(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    manifest = jpeg_manifest(tmp_path, 1)
    assert extract(manifest, tmp_path / "c", *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("aigi extract: error: ") and message in err[0]


def test_devices_all_without_a_gpu_names_the_fix(tmp_path: Path, capsys) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a machine with CUDA has GPUs to use")
    assert extract(jpeg_manifest(tmp_path, 1), tmp_path / "c", "--devices", "all") == 2
    assert "no CUDA device is visible; give --device cpu" in capsys.readouterr().err


def test_a_failing_shard_write_stops_the_run_and_releases_the_claims(tmp_path: Path, capsys, monkeypatch) -> None:
    from aigi.cache.writer import CacheWriter

    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(CacheWriter, "write_shard", full_disk)
    assert extract(jpeg_manifest(tmp_path, 6), tmp_path / "c", "--num-workers", "0") == 2
    assert "No space left on device" in capsys.readouterr().err
    assert not list((tmp_path / "c" / "shards").glob(".*claim*"))


def test_compile_compiles_the_forward_once(photos: Path, reference: Path, tmp_path: Path, monkeypatch) -> None:
    import torch

    from aigi.pipeline import extract as extract_stage

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append(kw) or fn)  # inductor takes minutes here
    monkeypatch.setattr(extract_stage, "_EXTRACTORS", {})
    assert extract(photos, tmp_path / "c", "--store-dtype", "float32", "--compile") == 0
    assert compiled == [{"backend": "inductor"}]
    (_, f1), (_, f2) = content(reference), content(tmp_path / "c")
    for name in f1:
        np.testing.assert_array_equal(f1[name], f2[name])
