"""The device calls themselves, on a CUDA device (skipped without one): nvjpeg against Pillow, the extract stage with
GPU decoding against CPU decoding, batches in flight against one at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from aigi import extractors
from aigi.extractors.images import decode_image
from aigi.extractors.loader import ImageItems, collate_items
from aigi.extractors.preprocess import to_pixels
from aigi.extractors.runner import FeatureRunner, decode_jpegs
from tests.extractors.test_loader import jpeg, photo

pytestmark = pytest.mark.gpu


def test_nvjpeg_decodes_like_pillow() -> None:
    """nvjpeg and libjpeg-turbo may round the IDCT and upsample chroma differently: a few levels at most, on
    average far under one (the tolerance docs/GPU.md states)."""
    datas = [jpeg(photo(w, h, seed=k)) for k, (w, h) in enumerate([(640, 480), (224, 224), (333, 500), (64, 48)])]
    datas.append(jpeg(photo(300, 200, seed=9).convert("L")))
    decoded = decode_jpegs([torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas], torch.device("cuda"))
    for data, got in zip(datas, decoded):
        want = to_pixels(decode_image(data))
        diff = (got.cpu().int() - want.int()).abs()
        assert got.shape == want.shape
        assert diff.float().mean().item() < 0.5 and diff.max().item() <= 16


def test_gpu_decoding_gives_the_cpu_features_to_the_stated_tolerance(tmp_path: Path) -> None:
    from tests.pipeline.test_extract_loader import content, extract, jpeg_manifest

    manifest = jpeg_manifest(tmp_path, 12)
    common = ("--device", "cuda", "--dtype", "fp32", "--store-dtype", "float32")
    assert extract(manifest, tmp_path / "dev", *common, "--decode", "device") == 0
    assert extract(manifest, tmp_path / "cpu", *common, "--decode", "cpu") == 0
    (m_dev, f_dev), (m_cpu, f_cpu) = content(tmp_path / "dev"), content(tmp_path / "cpu")
    assert m_dev["image_id"].tolist() == m_cpu["image_id"].tolist() and len(m_dev) == 12
    for name in f_cpu:
        assert np.abs(f_dev[name] - f_cpu[name]).max() <= 0.02 * np.abs(f_cpu[name]).max()


def test_batches_in_flight_equal_one_at_a_time_on_the_gpu(tmp_path: Path) -> None:
    ex = extractors.build("timm:test_vit", device="cuda", dtype="fp32")
    paths = []
    for k in range(7):
        paths.append(str(tmp_path / f"{k}.jpg"))
        Path(paths[-1]).write_bytes(jpeg(photo(200 + 10 * k, 150, seed=k)))
    items = ImageItems(paths, ["x"] * 7, ["orig"] * 7, transform=ex.transform, device_jpeg=True)
    batches = [collate_items([items[i] for i in range(s, min(s + 2, 7))]) for s in range(0, 7, 2)]
    results = []
    for depth in (0, 2):
        run = FeatureRunner(ex, ids=["x"] * 7, paths=paths, depth=depth)
        got = [f for b in batches for f in run.submit(b)] + run.flush()
        assert run.decoded == {"device": 7, "cpu_fallback": 0}
        results.append(np.concatenate([f.values["pooler"] for f in got]))
    np.testing.assert_array_equal(results[0], results[1])
