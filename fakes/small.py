"""Small pretrained fake makers shipped with aigi, and the script that trains them.

- `weights/small_vae/`: a diffusers `AutoencoderTiny` (2x down, 6 latent channels), loaded by `aigi fakes vae`.
- `weights/small_sr_x4.safetensors`: a Real-ESRGAN-Compact (SRVGG) x4 upsampler, loaded by `aigi fakes sr`.
- `weights/training.json`: the settings they were trained with and the PSNR measured afterwards.

Both are trained for a fixed number of steps with fixed seeds on crops of the photos that ship inside
scikit-image, scikit-learn and matplotlib (`aigi.fakes.photos`), so the same settings give the same models (up to
the CPU's float arithmetic) and the fakes never depend on how busy the machine is. Retrain with
`python -m aigi.cli.small_fakes --out DIR`.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aigi.common.extras import require

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
VAE_NAME = "small_vae"
SR_NAME = "small_sr_x4.safetensors"
SETTINGS_NAME = "training.json"
SR_SCALE = 4


@dataclass(frozen=True)
class TrainSettings:
    """One model's training run: Adam with a cosine learning-rate decay over a fixed number of steps."""

    steps: int
    batch: int
    patch: int
    lr: float
    seed: int


@dataclass(frozen=True)
class DataSettings:
    """The training crops: `crops` square crops of `size` px cut from the bundled photos with `seed`."""

    crops: int = 480
    size: int = 224
    seed: int = 1  # the demo cuts its crops with seed 0: other windows of the same photos


VAE_ARCH = {"channels": 24, "levels": 2, "latent_channels": 6}
VAE_SETTINGS = TrainSettings(steps=3000, batch=8, patch=32, lr=2e-3, seed=0)
SR_SETTINGS = TrainSettings(steps=2000, batch=8, patch=48, lr=2e-3, seed=0)
DATA_SETTINGS = DataSettings()


def vae_path(root: Path = WEIGHTS_DIR) -> Path:
    """The shipped small VAE folder (diffusers format)."""
    return root / VAE_NAME


def sr_path(root: Path = WEIGHTS_DIR) -> Path:
    """The shipped small x4 upsampler file."""
    return root / SR_NAME


def small_vae_config(*, channels: int = 24, levels: int = 2, latent_channels: int = 6) -> dict:
    """A diffusers `AutoencoderTiny` config: `levels` stages of `channels`, 2^(levels-1) down."""
    return dict(
        encoder_block_out_channels=(channels,) * levels,
        decoder_block_out_channels=(channels,) * levels,
        num_encoder_blocks=(1,) * levels,
        num_decoder_blocks=(1,) * levels,
        latent_channels=latent_channels,
    )


def build_small_vae(seed: int) -> nn.Module:
    """A freshly initialised small `AutoencoderTiny` (weights from `seed`)."""
    AutoencoderTiny = require("diffusers", needed_for="the small VAE").AutoencoderTiny
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderTiny(**small_vae_config(**VAE_ARCH))


def build_small_sr(seed: int) -> nn.Module:
    """A freshly initialised Real-ESRGAN-Compact x4 with 32 features and 8 convs (weights from `seed`)."""
    Compact = require("spandrel.architectures.Compact", needed_for="the small x4 upsampler").Compact
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Compact(num_in_ch=3, num_out_ch=3, num_feat=32, num_conv=8, upscale=SR_SCALE, act_type="prelu")


def vae_roundtrip(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """x in [0, 1] -> decode(encode(x)) in [0, 1] (diffusers' autoencoders work in [-1, 1])."""
    return lambda x: model.decode(model.encode(x * 2 - 1).latents).sample.add(1).div(2)


def sr_roundtrip(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """x in [0, 1] -> model(bicubic_down(x, 4)), the path of `aigi fakes sr`."""
    from aigi.fakes.sr import downscale

    return lambda x: model(downscale(x, SR_SCALE))


def patch_batches(crops: np.ndarray, *, batch: int, patch: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless seeded minibatches of random `patch`-px windows of the crops (random h-flips), floats in [0, 1]."""
    rng = np.random.default_rng(seed)
    n, h, w, _ = crops.shape
    while True:
        idx = rng.integers(0, n, batch)
        ys, xs = rng.integers(0, h - patch + 1, batch), rng.integers(0, w - patch + 1, batch)
        arr = np.stack([crops[i, y : y + patch, x : x + patch] for i, y, x in zip(idx, ys, xs)])
        flips = rng.random(batch) < 0.5
        arr[flips] = arr[flips, :, ::-1]
        yield torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float().div(255.0)


def train_steps(
    model: nn.Module,
    roundtrip: Callable[[torch.Tensor], torch.Tensor],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    crops: np.ndarray,
    settings: TrainSettings,
    *,
    desc: str,
    report: Callable[[], str] | None = None,
) -> list[float]:
    """Train `model` for exactly `settings.steps` steps; returns the loss of every step.

    A progress bar on a terminal; otherwise one line per tenth of the run (with `report()`'s text when given).
    """
    from tqdm.auto import tqdm

    torch.manual_seed(settings.seed)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / settings.steps)))
    batches = patch_batches(crops, batch=settings.batch, patch=settings.patch, seed=settings.seed)
    losses, tty = [], sys.stderr.isatty()
    model.train()
    for step in tqdm(range(settings.steps), desc=desc, unit="step", disable=not tty):
        x = next(batches)
        loss = loss_fn(roundtrip(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if not tty and (step + 1) % max(1, settings.steps // 10) == 0:
            extra = ""
            if report is not None:
                model.eval()
                extra = ", " + report()
                model.train()
            print(f"{desc}: step {step + 1}/{settings.steps}, loss {np.mean(losses[-50:]):.5f}{extra}", flush=True)
    model.eval()
    return losses


@torch.inference_mode()
def roundtrip_psnr(roundtrip: Callable[[torch.Tensor], torch.Tensor], crops: np.ndarray) -> float:
    """PSNR (dB) of the 8-bit round-trip outputs against the uint8 crops [N, H, W, 3], 8 crops at a time."""
    from aigi.fakes.ops import to_image

    se, count = 0.0, 0
    for i in range(0, len(crops), 8):
        x = torch.from_numpy(crops[i : i + 8]).permute(0, 3, 1, 2).float().div(255.0)
        out = np.stack([np.asarray(to_image(y)) for y in roundtrip(x)])
        se += float(np.sum((out.astype(np.float64) - crops[i : i + 8]) ** 2))
        count += out.size
    return 10.0 * math.log10(255.0**2 / (se / count))


def save_small_vae(model: nn.Module, folder: Path) -> Path:
    """`save_pretrained` as safetensors (config.json + diffusion_pytorch_model.safetensors)."""
    model.save_pretrained(str(folder), safe_serialization=True)
    config = json.loads((folder / "config.json").read_text())
    config.pop("block_out_channels", None)  # written by diffusers but not an AutoencoderTiny argument (a warning)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


def save_small_sr(model: nn.Module, path: Path) -> Path:
    """The state dict as safetensors (spandrel recognises the architecture from its keys)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def crops_of_bundled_photos(data: DataSettings, folder: Path) -> np.ndarray:
    """Crops of the bundled photos as uint8 [N, H, W, 3] (written as PNG under `folder`)."""
    from aigi.fakes.photos import collect_photos, cut_crops, load_rgb

    photos, _ = collect_photos()
    table = cut_crops(photos, folder, n_crops=data.crops, size=data.size, seed=data.seed)
    return load_rgb([folder / p for p in table["path"]])


def train_and_save(
    out: Path,
    *,
    vae: TrainSettings,
    sr: TrainSettings,
    data: DataSettings,
    check: DataSettings,
    models: tuple[str, ...] = ("vae", "sr"),
) -> dict:
    """Train `models` on one CPU thread, save them under `out`, measure their PSNR on `check` crops.

    Updates `out/training.json` (the entries of models not trained this time are kept).
    """
    with tempfile.TemporaryDirectory() as tmp:
        crops = crops_of_bundled_photos(data, Path(tmp) / "train")
        held = crops_of_bundled_photos(check, Path(tmp) / "check")
    record_path = out / SETTINGS_NAME
    record: dict = json.loads(record_path.read_text()) if record_path.is_file() else {}
    record.update({"data": asdict(data), "check_crops": asdict(check), "torch": torch.__version__, "threads": 1})
    record["vae_arch"] = dict(VAE_ARCH)
    jobs = (
        ("vae", build_small_vae, vae_roundtrip, F.mse_loss, vae, lambda m: save_small_vae(m, vae_path(out))),
        ("sr", build_small_sr, sr_roundtrip, F.l1_loss, sr, lambda m: save_small_sr(m, sr_path(out))),
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic on every machine, and no idle spinning on a busy one
    try:
        for job in (j for j in jobs if j[0] in models):
            record[job[0]] = _train_one(*job, crops=crops, held=held)
    finally:
        torch.set_num_threads(threads)
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def _train_one(kind, build, roundtrip, loss_fn, settings, save, *, crops, held) -> dict:
    start = time.perf_counter()
    model = build(settings.seed)
    report = lambda: f"PSNR {roundtrip_psnr(roundtrip(model), held[:32]):.2f} dB on 32 check crops"
    losses = train_steps(model, roundtrip(model), loss_fn, crops, settings, desc=f"train small {kind}", report=report)
    psnr = roundtrip_psnr(roundtrip(model), held)
    save(model)
    print(f"small {kind}: PSNR {psnr:.2f} dB on {len(held)} check crops", flush=True)
    return {
        **asdict(settings),
        "loss": loss_fn.__name__,
        "final_loss": float(np.mean(losses[-50:])),
        "params": sum(p.numel() for p in model.parameters()),
        "psnr_check_crops": round(psnr, 3),
        "seconds": round(time.perf_counter() - start, 1),
    }
