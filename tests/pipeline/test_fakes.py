"""`aigi fakes vae`: loading every weight layout, exact sizes, stems, formats, pair ids, seeds, resume, bad images."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from aigi.cache import read_manifest, write_manifest
from aigi.cli import main
from aigi.fakes.imageio import estimate_jpeg_quality
from aigi.fakes.taesd import TinyAutoencoder, load_pair
from aigi.fakes.vae import VaeTransform, load_vae
from aigi.pipeline.fakes import FakesConfig, run_fakes
from tests.conftest import shared_path

N_BLOCKS = 4


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and do not stall when other jobs share the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def smooth_image(width: int, height: int, seed: int) -> Image.Image:
    """A photo-like (smooth, with some texture) RGB image."""
    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 255, (4, 4, 3)).astype(np.uint8)
    base = np.asarray(Image.fromarray(low).resize((width, height), Image.BICUBIC), dtype=np.float64)
    arr = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def write_reals(root: Path, specs: list[tuple[str, int, int]], *, split: str = "train") -> Path:
    """Write images (relative path, width, height; `.jpg` saved at quality 83) and their manifest; return it."""
    rows = []
    for i, (rel, w, h) in enumerate(specs):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        img = smooth_image(w, h, i)
        img.save(path, quality=83, subsampling=1) if path.suffix == ".jpg" else img.save(path)
        fmt = "jpeg" if path.suffix == ".jpg" else "png"
        image_id = hashlib.sha256(path.read_bytes()).hexdigest()
        rows.append({"image_id": image_id, "path": rel, "label": 0, "source": "real", "split": split,
                     "domain": "object", "width": w, "height": h, "format": fmt})  # fmt: skip
    return write_manifest(pd.DataFrame(rows), root / "manifest.parquet")


def tiny_kl(seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * N_BLOCKS,
        up_block_types=["UpDecoderBlock2D"] * N_BLOCKS,
        block_out_channels=[32] * N_BLOCKS,
        layers_per_block=1,
        latent_channels=4,
        sample_size=32,
    ).eval()


def to_ldm_key(key: str) -> str:
    """diffusers AutoencoderKL key -> the original (LDM) key that single-file checkpoints use."""
    key = re.sub(r"down_blocks\.(\d+)\.resnets\.(\d+)", r"down.\1.block.\2", key)
    key = re.sub(r"down_blocks\.(\d+)\.downsamplers\.0", r"down.\1.downsample", key)
    key = re.sub(r"up_blocks\.(\d+)\.resnets\.(\d+)", lambda m: f"up.{N_BLOCKS - 1 - int(m[1])}.block.{m[2]}", key)
    key = re.sub(r"up_blocks\.(\d+)\.upsamplers\.0", lambda m: f"up.{N_BLOCKS - 1 - int(m[1])}.upsample", key)
    key = key.replace("mid_block.resnets.0", "mid.block_1").replace("mid_block.resnets.1", "mid.block_2")
    key = key.replace("mid_block.attentions.0.group_norm", "mid.attn_1.norm")
    for new, old in [("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]:
        key = key.replace(f"mid_block.attentions.0.{new}", f"mid.attn_1.{old}")
    return key.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")


def save_ldm_single_file(model, path: Path) -> Path:
    """The model as a full-SD-style single file: LDM names under `first_stage_model.`, 1x1-conv attention."""
    from safetensors.torch import save_file

    state = {}
    for key, value in model.state_dict().items():
        new = to_ldm_key(key)
        if ".attn_1." in new and new.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]
        state[f"first_stage_model.{new}"] = value.contiguous()
    save_file(state, str(path))
    return path


def bare_kl(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        y = model.decode(model.encode(x * 2 - 1).latent_dist.mean).sample
    return ((y + 1) / 2).clamp(0, 1)


@pytest.fixture(scope="module")
def kl_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("weights") / "tinykl"
    tiny_kl().save_pretrained(folder)
    return folder


def test_kl_loads_from_folder_pipeline_folder_and_single_files(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model = tiny_kl(1)
    model.save_pretrained(tmp_path / "kl")
    model.save_pretrained(tmp_path / "mypipe" / "vae")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "diffusers_keys.safetensors"))
    save_ldm_single_file(model, tmp_path / "sd_style.safetensors")
    x = torch.rand(2, 3, 24, 40)
    expected = bare_kl(model, x)
    cases = {"kl": "kl", "mypipe": "mypipe", "mypipe/vae": "mypipe", "diffusers_keys.safetensors": "diffusers_keys",
             "sd_style.safetensors": "sd_style"}  # fmt: skip
    for weights, name in cases.items():
        vae = load_vae(tmp_path / weights, device="cpu")
        assert (vae.kind, vae.name, vae.downscale) == ("kl", name, 8)
        torch.testing.assert_close(vae.reconstruct(x), expected, atol=1e-5, rtol=0)


def test_single_file_config_inferred_from_keys(tmp_path: Path) -> None:
    from aigi.fakes.vae import infer_kl_config

    model = tiny_kl()
    ldm = {to_ldm_key(k): v for k, v in model.state_dict().items()}
    for state in (model.state_dict(), ldm):
        cfg = infer_kl_config(state)
        for key in ("block_out_channels", "layers_per_block", "latent_channels", "use_quant_conv"):
            want = model.config[key]
            assert cfg[key] == (list(want) if isinstance(want, tuple) else want), key
        assert cfg["mid_block_add_attention"] is True
    with pytest.raises(ValueError, match="not an AutoencoderKL"):
        infer_kl_config({"body.0.weight": torch.zeros(1)})


def test_autoencoder_tiny_folder(tmp_path: Path) -> None:
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    model = AutoencoderTiny(encoder_block_out_channels=(16,) * 4, decoder_block_out_channels=(16,) * 4).eval()
    model.save_pretrained(tmp_path / "taesd_diffusers")
    vae = load_vae(tmp_path / "taesd_diffusers", device="cpu")
    assert (vae.kind, vae.downscale, vae.stochastic) == ("tiny", 8, False)
    x = torch.rand(1, 3, 16, 24)
    with torch.no_grad():
        expected = ((model.decode(model.encode(x * 2 - 1).latents).sample + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(vae.reconstruct(x), expected, atol=1e-5, rtol=0)


def save_pair(model: TinyAutoencoder, folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.half() for k, v in model.encoder.state_dict().items()}, folder / f"{name}_encoder.pth")
    torch.save({k: v.half() for k, v in model.decoder.state_dict().items()}, folder / f"{name}_decoder.pth")


def test_taef2_shaped_pair_detects_pool_branch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    taef2 = TinyAutoencoder(32, encoder_pool={11, 12, 13}, decoder_pool={3, 4, 5}).eval()
    save_pair(taef2, tmp_path / "f2", "taef2")
    save_pair(TinyAutoencoder(4).eval(), tmp_path / "sd", "taesd")
    vae = load_vae(tmp_path / "f2", device="cpu")
    assert (vae.kind, vae.name, vae.model.latent_channels) == ("taesd", "taef2", 32)
    pools = [i for i, m in enumerate(vae.model.encoder) if getattr(m, "pool", None) is not None]
    assert pools == [11, 12, 13]
    assert [i for i, m in enumerate(vae.model.decoder) if getattr(m, "pool", None) is not None] == [3, 4, 5]
    taef2.load_state_dict({k: v.half().float() for k, v in taef2.state_dict().items()})  # what fp16 files hold
    x = torch.rand(2, 3, 16, 24)
    with torch.no_grad():
        torch.testing.assert_close(vae.reconstruct(x), taef2(x), atol=1e-5, rtol=0)
    plain = load_vae(tmp_path / "sd", device="cpu").model
    assert plain.latent_channels == 4 and all(getattr(m, "pool", None) is None for m in plain.encoder)


def test_taef2_layout_matches_the_shipped_weights() -> None:
    folder = shared_path("taesd")
    model = TinyAutoencoder(32, encoder_pool={11, 12, 13}, decoder_pool={3, 4, 5})
    for part in ("encoder", "decoder"):
        shipped = torch.load(folder / f"taef2_{part}.pth", weights_only=True, map_location="cpu")
        ours = getattr(model, part).state_dict()
        assert {k: tuple(v.shape) for k, v in shipped.items()} == {k: tuple(v.shape) for k, v in ours.items()}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def test_real_taef2_reconstructs_photos(tmp_path: Path) -> None:
    skdata = pytest.importorskip("skimage.data")
    weights = shared_path("taesd")
    specs = []
    for name in ("astronaut", "coffee", "chelsea"):
        img = Image.fromarray(getattr(skdata, name)())
        left, top = (img.width - 251) // 2, (img.height - 187) // 2  # odd sizes exercise padding and crop-back
        img = img.crop((left, top, left + 251, top + 187))
        img.save(tmp_path / f"{name}.png")
        specs.append((f"{name}.png", img.width, img.height))
    manifest = write_reals_from_files(tmp_path, specs)
    assert main(["fakes", "vae", "--manifest", str(manifest), "--weights", str(weights), "--out", str(tmp_path / "o"),
                 "--device", "cpu"]) == 0  # fmt: skip
    for rel, w, h in specs:
        real = np.asarray(Image.open(tmp_path / rel))
        fake = np.asarray(Image.open(tmp_path / "o" / "vae_taef2" / "1_fake" / rel))
        assert fake.shape == (h, w, 3)
        assert psnr(real, fake) >= 25.0, rel


def write_reals_from_files(root: Path, specs: list[tuple[str, int, int]]) -> Path:
    rows = [
        {
            "image_id": hashlib.sha256((root / rel).read_bytes()).hexdigest(),
            "path": rel,
            "label": 0,
            "source": "real",
            "split": "test",
            "width": w,
            "height": h,
            "format": "png",
        }  # fmt: skip
        for rel, w, h in specs
    ]
    return write_manifest(pd.DataFrame(rows), root / "manifest.parquet")


def test_cli_vae_sizes_stems_formats_pairs_and_errors(tmp_path: Path, kl_dir: Path) -> None:
    data = tmp_path / "data"
    manifest = write_reals(data, [("a/odd.png", 37, 29), ("a/photo.jpg", 45, 31), ("b/tiny.png", 13, 9)])
    df = read_manifest(manifest)
    (data / "bad.png").write_bytes(b"not an image at all")
    (data / "empty.jpg").write_bytes(b"")
    extra = pd.DataFrame([{"image_id": "b" * 64, "path": "bad.png", "label": 0, "source": "real", "format": "png"},
                          {"image_id": "e" * 64, "path": "empty.jpg", "label": 0, "source": "real"},
                          {"image_id": "f" * 64, "path": "gen/x.png", "label": 1, "source": "sdxl"}])  # fmt: skip
    write_manifest(pd.concat([df, extra]), manifest)
    out_manifest = tmp_path / "with_fakes.parquet"
    args = ["fakes", "vae", "--manifest", str(manifest), "--weights", str(kl_dir), "-o", str(tmp_path / "out"),
            "--output-manifest", str(out_manifest), "--device", "cpu", "--batch-size", "2"]  # fmt: skip
    assert main(args) == 0
    base = tmp_path / "out" / "vae_tinykl" / "1_fake"
    assert sorted(p.relative_to(base).as_posix() for p in base.rglob("*.*")) == [
        "a/odd.png",
        "a/photo.jpg",
        "b/tiny.png",
    ]
    new = read_manifest(out_manifest)
    fakes = new[new["source"] == "vae:tinykl"].set_index("pair_id")
    assert len(new) == len(df) + 3 + 3
    for real in df.itertuples():
        fake = fakes.loc[real.image_id]
        path = out_manifest.parent / fake["path"]
        with Image.open(path) as img:
            assert (img.width, img.height, img.format.lower()) == (real.width, real.height, real.format)
            assert Path(fake["path"]).stem == Path(real.path).stem
            if img.format == "JPEG":
                assert estimate_jpeg_quality(img.quantization) == (83, True)
                from PIL import JpegImagePlugin

                assert JpegImagePlugin.get_sampling(img) == 1  # the real's 4:2:2 kept
        assert fake["image_id"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert (fake["label"], fake["split"], fake["domain"]) == (1, "train", "object")
        assert (fake["width"], fake["height"]) == (real.width, real.height)
    reals = new[new["label"] == 0].set_index("image_id")
    assert all(reals.loc[i, "pair_id"] == i for i in df["image_id"])
    assert reals.loc["b" * 64, "pair_id"] == ""  # a failed real gets no pair
    errors = pd.read_json(tmp_path / "out" / "vae_tinykl" / "errors.json")
    assert dict(zip(errors["path"], errors["reason"])) == {
        "bad.png": "not an image (unknown or corrupt format)",
        "empty.jpg": "empty file (0 bytes)",
    }
    assert main(args) == 0  # a second run adds nothing and keeps the rows unique
    assert read_manifest(out_manifest).equals(new)


def run(manifest: Path, weights: Path, out: Path, **kw):
    vae = load_vae(weights, device="cpu", tile_size=kw.pop("tile_size", None))
    transform = VaeTransform(vae, latent=kw.pop("latent", "mean"), seed=kw.pop("seed", 0))
    cfg = FakesConfig(manifest=manifest, out_dir=out, output_manifest=out / "m.parquet", **kw)
    return run_fakes(transform, cfg, progress=False)


def pixels(folder: Path) -> dict[str, np.ndarray]:
    return {p.relative_to(folder).as_posix(): np.asarray(Image.open(p)) for p in sorted(folder.rglob("*.png"))}


def test_formats_resave_real_and_resize(tmp_path: Path, kl_dir: Path) -> None:
    manifest = write_reals(tmp_path, [("x.png", 33, 17), ("y.jpg", 20, 26)])
    res = run(manifest, kl_dir, tmp_path / "j", fmt="jpeg:90", resave_real=True)
    assert res.written == 2 and not res.errors
    for kind in ("0_real", "1_fake"):
        for stem, size in (("x", (33, 17)), ("y", (20, 26))):
            with Image.open(tmp_path / "j" / "vae_tinykl" / kind / f"{stem}.jpg") as img:
                assert img.size == size and estimate_jpeg_quality(img.quantization)[0] == 90
    new = read_manifest(tmp_path / "j" / "m.parquet")
    reals = new[new["label"] == 0]
    assert set(reals["format"]) == {"jpeg"} and all(reals["path"].str.startswith("vae_tinykl/0_real/"))
    assert set(reals["pair_id"]) == set(read_manifest(manifest)["image_id"])  # pairs keep the original's id
    assert set(new[new["label"] == 1]["pair_id"]) == set(reals["pair_id"])
    res = run(manifest, kl_dir, tmp_path / "r", fmt="png", resize=24)
    for kind in ("0_real", "1_fake"):
        assert {k: v.shape for k, v in pixels(tmp_path / "r" / "vae_tinykl" / kind).items()} == {
            "x.png": (24, 24, 3), "y.png": (24, 24, 3)}  # fmt: skip
    real = np.asarray(Image.open(tmp_path / "x.png").resize((24, 24), Image.BICUBIC))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "r" / "vae_tinykl" / "0_real" / "x.png")), real)


def test_seeded_latent_sampling_is_reproducible_and_batch_independent(tmp_path: Path, kl_dir: Path) -> None:
    manifest = write_reals(tmp_path, [(f"i{i}.png", 24, 16) for i in range(5)])
    a = pixels(run(manifest, kl_dir, tmp_path / "a", latent="sample", seed=1, batch_size=5).manifest.parent)
    b = pixels(run(manifest, kl_dir, tmp_path / "b", latent="sample", seed=1, batch_size=2).manifest.parent)
    c = pixels(run(manifest, kl_dir, tmp_path / "c", latent="sample", seed=2, batch_size=5).manifest.parent)
    m = pixels(run(manifest, kl_dir, tmp_path / "m", latent="mean", batch_size=5).manifest.parent)
    assert a.keys() == b.keys() == c.keys() == m.keys() and len(a) == 5
    for key in a:
        assert np.abs(a[key].astype(int) - b[key].astype(int)).max() <= 1  # batched float sums may round apart
        assert not np.array_equal(a[key], c[key]) and not np.array_equal(a[key], m[key])


def test_resume_after_interrupted_run(tmp_path: Path, kl_dir: Path) -> None:
    manifest = write_reals(tmp_path, [(f"s/{i}.png", 16 + 8 * (i % 2), 16) for i in range(6)])
    full = run(manifest, kl_dir, tmp_path / "full", batch_size=2)
    vae = load_vae(kl_dir, device="cpu")
    inner, calls = VaeTransform(vae), []

    class Interrupted(VaeTransform):
        def __call__(self, images, ids):
            calls.append(len(images))
            if len(calls) == 2:
                raise KeyboardInterrupt
            return inner(images, ids)

    out = tmp_path / "part"
    cfg = FakesConfig(manifest=manifest, out_dir=out, output_manifest=out / "m.parquet", batch_size=2)
    with pytest.raises(KeyboardInterrupt):
        run_fakes(Interrupted(vae), cfg, progress=False)
    fake_dir = out / "vae_tinykl" / "1_fake"
    assert len(list(fake_dir.rglob("*.png"))) == 2 and not list(out.rglob("*.tmp")) and not cfg.output_manifest.exists()
    res = run_fakes(VaeTransform(vae), cfg, progress=False)
    assert (res.skipped, res.written) == (2, 4)
    assert {k: v.tobytes() for k, v in pixels(fake_dir).items()} == {
        k: v.tobytes() for k, v in pixels(tmp_path / "full" / "vae_tinykl" / "1_fake").items()}  # fmt: skip
    fakes = lambda m: read_manifest(m).query("label == 1").sort_values("pair_id")[["image_id", "pair_id"]]
    assert fakes(cfg.output_manifest).reset_index(drop=True).equals(fakes(full.manifest).reset_index(drop=True))


def test_tiling_keeps_exact_size(tmp_path: Path, kl_dir: Path) -> None:
    manifest = write_reals(tmp_path, [("big.png", 75, 61)])
    vae = load_vae(kl_dir, device="cpu", tile_size=32)
    assert vae.model.use_tiling and vae.model.tile_latent_min_size == 4
    res = run(manifest, kl_dir, tmp_path / "o", tile_size=32)
    assert res.written == 1
    assert np.asarray(Image.open(tmp_path / "o" / "vae_tinykl" / "1_fake" / "big.png")).shape == (61, 75, 3)


def test_cli_errors_are_one_line(tmp_path: Path, kl_dir: Path, capsys) -> None:
    manifest = write_reals(tmp_path, [("x.png", 8, 8)])
    base = ["fakes", "vae", "--manifest", str(manifest), "--out", str(tmp_path / "o")]
    assert main([*base, "--weights", str(tmp_path / "missing")]) == 2
    assert main([*base, "--weights", str(kl_dir), "--format", "gif"]) == 2
    assert main([*base, "--weights", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "bad --format 'gif'" in err and "no config.json" in err


def test_load_pair_picks_by_name(tmp_path: Path) -> None:
    save_pair(TinyAutoencoder(4), tmp_path, "taesd")
    save_pair(TinyAutoencoder(16), tmp_path, "taef1")
    with pytest.raises(ValueError, match="exactly one"):
        load_pair(tmp_path)
    assert load_pair(tmp_path, "taef1")[1].latent_channels == 16


def test_rerun_on_a_manifest_updated_in_place_with_resaved_reals(tmp_path: Path, kl_dir: Path) -> None:
    manifest = write_reals(tmp_path, [("d/x.jpg", 21, 19), ("d/y.png", 16, 8)])
    vae = load_vae(kl_dir, device="cpu")
    cfg = FakesConfig(manifest=manifest, out_dir=tmp_path / "out", resave_real=True)
    first = run_fakes(VaeTransform(vae), cfg, progress=False)
    after_first = read_manifest(manifest)
    assert first.written == 2 and len(after_first) == 4
    assert set(after_first.query("label == 0")["path"]) == {
        "out/vae_tinykl/0_real/d/x.jpg",
        "out/vae_tinykl/0_real/d/y.png",
    }
    second = run_fakes(VaeTransform(vae), cfg, progress=False)
    assert (second.written, second.skipped) == (0, 2)
    assert read_manifest(manifest).equals(after_first)


def test_o_names_the_images_folder_and_the_old_spelling_is_one_line(tmp_path: Path, capsys) -> None:
    from aigi.cli import build_parser

    args = build_parser().parse_args(["fakes", "sr", "--manifest", "m.parquet", "--weights", "w.pth", "-o", "imgs",
                                      "--output-manifest", "new.parquet"])  # fmt: skip
    assert (args.out, args.output_manifest) == (Path("imgs"), Path("new.parquet"))
    long_form = build_parser().parse_args(["fakes", "vae", "--manifest", "m", "--weights", "w", "--out", "d"])
    assert long_form.out == Path("d")
    manifest = tmp_path / "m.parquet"
    imgs, new, csv = (str(tmp_path / n) for n in ("imgs", "new.parquet", "x.csv"))
    old_calls = (["--out", imgs, "-o", new], ["-o", csv])
    for old in old_calls:
        code = main(["fakes", "sr", "--manifest", str(manifest), "--weights", str(tmp_path / "w.pth"), *old])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "--output-manifest" in err, err
    assert not (tmp_path / "imgs").exists() and not (tmp_path / "new.parquet").exists()
