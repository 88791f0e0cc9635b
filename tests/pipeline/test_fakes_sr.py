"""`aigi fakes sr`: spandrel-loaded GAN super-resolution, exact sizes, scale checks, safe loading, real weights."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from aigi.cache import read_manifest, write_manifest
from aigi.cli import main
from aigi.fakes.sr import SrTransform, downscale, load_sr
from tests.conftest import shared_path


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and do not stall when other jobs share the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def compact(scale: int = 4, seed: int = 0) -> torch.nn.Module:
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(seed)
    return Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=scale).eval()


def esrgan(scale: int = 2, seed: int = 0) -> torch.nn.Module:
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(seed)
    return ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=scale).eval()


def save_weights(model: torch.nn.Module, path: Path) -> Path:
    """Save as shipped: `.pth` wrapped in `params` (Real-ESRGAN style) or a bare `.safetensors`."""
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"params": state}, path)
    return path


def expected(model: torch.nn.Module, img: Image.Image, scale: int) -> np.ndarray:
    """Hand-built reference: reflect-pad to a multiple of S, antialiased bicubic down, model up, crop, round."""
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    h, w = x.shape[-2:]
    hp, wp = -(-h // scale) * scale, -(-w // scale) * scale
    x = F.pad(x, (0, wp - w, 0, hp - h), mode="reflect")
    low = F.interpolate(x, size=(hp // scale, wp // scale), mode="bicubic", antialias=True).clamp(0, 1)
    with torch.no_grad():
        y = model(low).clamp(0, 1)[0, :, :h, :w]
    return (y * 255).round().byte().permute(1, 2, 0).numpy()


def photo(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    low = Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    return Image.fromarray(np.clip(np.asarray(low) + rng.normal(0, 5, (height, width, 3)), 0, 255).astype(np.uint8))


def write_reals(root: Path, specs: list[tuple[str, Image.Image]]) -> Path:
    rows = []
    for rel, img in specs:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        img.save(root / rel)
        rows.append({"image_id": hashlib.sha256((root / rel).read_bytes()).hexdigest(), "path": rel, "label": 0,
                     "source": "real", "split": "val", "width": img.width, "height": img.height})  # fmt: skip
    return write_manifest(pd.DataFrame(rows), root / "manifest.parquet")


@pytest.mark.parametrize("arch, build, suffix, scale", [
    ("Compact", compact, ".pth", 4), ("ESRGAN", esrgan, ".safetensors", 2)])  # fmt: skip
def test_spandrel_models_load_and_match_a_hand_built_reference(tmp_path, arch, build, suffix, scale) -> None:
    model = build(scale)
    sr = load_sr(save_weights(model, tmp_path / f"tiny{suffix}"), device="cpu")
    assert (sr.descriptor.architecture.id, sr.scale, sr.name) == (arch, scale, "tiny")
    transform = SrTransform(sr, scale=scale)
    assert transform.source == f"sr:tiny-x{scale}"
    images = [photo(23, 17, 0), photo(22, 19, 1)]  # same padded size for scale 4 and 2: one batch
    assert transform.batch_key(23, 17) == transform.batch_key(22, 19) or scale == 2
    for img in images:
        out = transform([img], ["id"])[0]
        assert out.size == img.size
        np.testing.assert_allclose(np.asarray(out, dtype=int), expected(model, img, scale), atol=1)


def test_scale_must_match_the_model(tmp_path: Path) -> None:
    sr = load_sr(save_weights(compact(4), tmp_path / "c.pth"), device="cpu")
    with pytest.raises(ValueError, match="differs from the model's own scale x4"):
        SrTransform(sr, scale=2)
    assert SrTransform(sr).scale == 4  # default: the model's scale


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    bad = tmp_path / "evil.pth"
    with open(bad, "wb") as fh:
        pickle.dump({"params": Evil()}, fh, protocol=2)
    with pytest.raises(ValueError, match="weights-only"):
        load_sr(bad, device="cpu")
    torch.save({"not": torch.zeros(2)}, tmp_path / "unknown.pth")
    with pytest.raises(ValueError, match="recognises no architecture"):
        load_sr(tmp_path / "unknown.pth", device="cpu")


def test_downscale_is_antialiased_average_on_flat_regions() -> None:
    x = torch.zeros(1, 3, 8, 8)
    x[..., ::2, :] = 1.0  # 1-pixel stripes: an aliasing resampler would keep stripes, antialiasing averages them
    low = downscale(x, 4)
    assert low.shape == (1, 3, 2, 2) and torch.allclose(low, torch.full_like(low, 0.5), atol=0.1)


def test_cli_sr_sizes_stems_and_rows(tmp_path: Path) -> None:
    weights = save_weights(compact(4), tmp_path / "w" / "tinycompact.pth")
    manifest = write_reals(tmp_path, [("p/a.png", photo(31, 13, 0)), ("p/b.png", photo(9, 27, 1))])
    assert main(["fakes", "sr", "--manifest", str(manifest), "--weights", str(weights), "--scale", "4",
                 "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0  # fmt: skip
    new = read_manifest(manifest)  # updated in place
    fakes = new[new["label"] == 1]
    assert list(fakes["source"].unique()) == ["sr:tinycompact-x4"] and len(fakes) == 2
    for row in fakes.itertuples():
        real = new[new["image_id"] == row.pair_id].iloc[0]
        assert Path(row.path).name == Path(real.path).name and row.split == "val"
        with Image.open(tmp_path / row.path) as img:
            assert img.size == (real.width, real.height) and img.format == "PNG"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def test_real_sr_weights_keep_size_and_beat_random_weights(tmp_path: Path) -> None:
    skdata = pytest.importorskip("skimage.data")
    weights = shared_path("sr", "realesr-animevideov3.pth")
    real = Image.fromarray(skdata.chelsea()).crop((60, 40, 60 + 201, 40 + 147))  # odd size, not a multiple of 4
    manifest = write_reals(tmp_path, [("chelsea.png", real)])
    scores = {}
    # Same architecture and per-tensor weight scale as the trained model, no learned structure. (PyTorch's default
    # init would leave Compact's body near zero, i.e. plain nearest-neighbour upsampling through its residual.)
    trained = torch.load(weights, weights_only=True, map_location="cpu")["params"]
    gen = torch.Generator().manual_seed(0)
    noise = {k: torch.randn(v.shape, generator=gen) * v.float().std() for k, v in trained.items()}
    random_weights = tmp_path / "random" / "realesr-animevideov3.pth"
    random_weights.parent.mkdir()
    torch.save({"params": noise}, random_weights)
    for tag, w in (("trained", weights), ("random", random_weights)):
        out = tmp_path / tag
        assert main(["fakes", "sr", "--manifest", str(manifest), "--weights", str(w), "--scale", "4",
                     "-o", str(out), "--output-manifest", str(out / "m.parquet"), "--device", "cpu"]) == 0  # fmt: skip
        fake = np.asarray(Image.open(out / "sr_realesr-animevideov3-x4" / "1_fake" / "chelsea.png"))
        assert fake.shape == (147, 201, 3)
        scores[tag] = psnr(np.asarray(real), fake)
    assert scores["trained"] >= 22.0 and scores["trained"] > scores["random"] + 10.0, scores
