"""The small fake makers shipped with aigi: quality on the bundled photos, same bytes whatever the threads, and a
training script that trains for a fixed number of steps."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from aigi.fakes import small
from aigi.fakes.sr import SrTransform, load_sr
from aigi.fakes.vae import VaeTransform, load_vae


@pytest.fixture(scope="module")
def crops(tmp_path_factory) -> list[Image.Image]:
    """24 crops the demo cuts (seed 0), 224 px."""
    pytest.importorskip("skimage")
    folder = tmp_path_factory.mktemp("crops")
    arr = small.crops_of_bundled_photos(small.DataSettings(crops=24, size=224, seed=0), folder)
    return [Image.fromarray(a) for a in arr]


def _psnr(reals: list[Image.Image], fakes: list[Image.Image]) -> float:
    a = np.stack([np.asarray(i, np.float64) for i in reals])
    b = np.stack([np.asarray(i, np.float64) for i in fakes])
    return float(10 * np.log10(255**2 / np.mean((a - b) ** 2)))


def _run(transform, images: list[Image.Image], *, threads: int) -> list[Image.Image]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return [out for i in range(0, len(images), 8) for out in transform(images[i : i + 8], [""] * 8)]
    finally:
        torch.set_num_threads(before)


def test_shipped_vae_reaches_27_db_with_the_same_bytes_on_1_or_2_threads(crops):
    transform = VaeTransform(load_vae(small.vae_path(), device="cpu"))
    one, two = _run(transform, crops, threads=1), _run(transform, crops, threads=2)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(one, two))
    assert transform.source == "vae:small_vae" and _psnr(crops, one) >= 27.0


def test_shipped_sr_reaches_24_db_and_beats_bicubic_with_the_same_bytes_on_1_or_2_threads(crops):
    transform = SrTransform(load_sr(small.sr_path(), device="cpu"), scale=4)
    one, two = _run(transform, crops, threads=1), _run(transform, crops, threads=2)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(one, two))
    x = torch.stack([torch.from_numpy(np.asarray(c).copy()).permute(2, 0, 1).float() / 255 for c in crops])
    from aigi.fakes.sr import downscale

    bicubic = F.interpolate(downscale(x, 4), scale_factor=4, mode="bicubic").clamp(0, 1)
    bicubic_images = [Image.fromarray(b.mul(255).round().byte().permute(1, 2, 0).numpy()) for b in bicubic]
    assert _psnr(crops, one) >= 24.0 and _psnr(crops, one) > _psnr(crops, bicubic_images)


def test_shipped_settings_are_the_scripts_own():
    record = json.loads((small.WEIGHTS_DIR / small.SETTINGS_NAME).read_text())
    for kind, settings in (("vae", small.VAE_SETTINGS), ("sr", small.SR_SETTINGS)):
        assert {k: record[kind][k] for k in asdict(settings)} == asdict(settings)
    assert record["data"] == asdict(small.DATA_SETTINGS) and record["vae_arch"] == small.VAE_ARCH
    assert record["vae"]["psnr_check_crops"] >= 27 and record["sr"]["psnr_check_crops"] >= 24


def test_training_runs_a_fixed_number_of_steps_and_repeats_itself(capsys):
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    settings = small.TrainSettings(steps=20, batch=2, patch=16, lr=1e-3, seed=3)

    def train() -> tuple[list[float], dict[str, torch.Tensor]]:
        model = small.build_small_sr(settings.seed)
        losses = small.train_steps(model, small.sr_roundtrip(model), F.l1_loss, crops, settings, desc="sr")
        return losses, model.state_dict()

    (losses_a, state_a), (losses_b, state_b) = train(), train()
    assert len(losses_a) == 20 and losses_a == losses_b
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("sr: step")]
    assert lines[-1].startswith("sr: step 20/20") and len(lines) == 2 * 10  # one line per tenth, twice


def test_retraining_writes_loadable_weights_and_records_settings(tmp_path: Path, monkeypatch):
    pytest.importorskip("skimage")
    tiny = small.TrainSettings(steps=2, batch=2, patch=16, lr=1e-3, seed=0)
    data = small.DataSettings(crops=8, size=64, seed=1)
    record = small.train_and_save(tmp_path, vae=tiny, sr=tiny, data=data, check=data)
    assert json.loads((tmp_path / small.SETTINGS_NAME).read_text()) == record
    assert record["vae"]["steps"] == 2 and record["data"] == asdict(data)
    assert load_vae(small.vae_path(tmp_path), device="cpu").downscale == 2
    assert load_sr(small.sr_path(tmp_path), device="cpu").scale == 4
