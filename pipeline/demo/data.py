"""The demo's data: real photos shipped inside installed packages, cut into crops, and small fallback fake makers."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from common.files import atomic_path

# name, semantic domain, origin. No package ships an anime picture, so the demo has no `anime` domain.
PHOTO_SOURCES: tuple[tuple[str, str, str], ...] = (
    ("astronaut", "human", "skimage"),
    ("grace_hopper", "human", "matplotlib"),
    ("chelsea", "animal", "skimage"),  # skimage's `cat` is the same picture: used once
    ("coffee", "object", "skimage"),
    ("rocket", "object", "skimage"),
    ("motorcycle_left", "object", "skimage"),
    ("motorcycle_right", "object", "skimage"),
    ("flower", "object", "sklearn"),
    ("china", "scene", "sklearn"),
    ("hubble_deep_field", "scene", "skimage"),
    ("retina", "scene", "skimage"),
    ("immunohistochemistry", "scene", "skimage"),
)
NO_ANIME_NOTE = "no installed package ships an anime picture, so the demo has no `anime` domain"
SHARED_HINTS = {"vae": ("taesd",), "sr": ("sr",)}


@dataclass(frozen=True)
class Photo:
    """One real photograph: its name, semantic domain, the package it comes from, and RGB pixels [H, W, 3] uint8."""

    name: str
    domain: str
    origin: str
    pixels: np.ndarray


def _load_pixels(name: str, origin: str) -> np.ndarray:
    if origin == "skimage":
        import skimage.data

        if name.startswith("motorcycle_"):
            left, right, _ = skimage.data.stereo_motorcycle()
            return left if name.endswith("left") else right
        return getattr(skimage.data, name)()
    if origin == "sklearn":
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")
    if origin == "matplotlib":
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data(f"{name}.jpg") as fh:
            return np.asarray(Image.open(fh).convert("RGB"))
    raise ValueError(f"unknown photo origin {origin!r}")


def collect_photos(sources: tuple[tuple[str, str, str], ...] = PHOTO_SOURCES) -> tuple[list[Photo], list[str]]:
    """Load the shipped photos that are available offline; grayscale ones and missing packages are skipped.

    Returns:
        The photos, and one note per skipped source saying why.
    """
    photos, skipped = [], []
    for name, domain, origin in sources:
        try:
            pixels = np.asarray(_load_pixels(name, origin))
        except Exception as err:  # a package missing, or a file that needs a download: skip it, say why
            skipped.append(f"{origin}:{name}: {type(err).__name__}: {str(err).splitlines()[0][:120]}")
            continue
        if pixels.ndim != 3 or pixels.shape[2] < 3:
            skipped.append(f"{origin}:{name}: grayscale, skipped (a gray real would make colour a shortcut)")
            continue
        photos.append(Photo(name, domain, origin, np.ascontiguousarray(pixels[..., :3].astype(np.uint8))))
    if not photos:
        raise FileNotFoundError("no demo photo could be loaded: install scikit-image and scikit-learn (`.[demo]`)")
    return photos, skipped


def _crop_boxes(photo: Photo, count: int, *, size: int, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """`count` seeded square boxes (x, y, side) inside the photo, side uniform in [size, min(size / 0.4, H, W)]."""
    h, w = photo.pixels.shape[:2]
    top = min(size / 0.4, h, w)
    boxes = []
    for _ in range(count):
        side = int(rng.uniform(size, top)) if top > size else int(top)
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        boxes.append((x, y, side))
    return boxes


def _balanced_counts(domains: list[str], total: int) -> list[int]:
    """Split `total` evenly over the distinct domains, then evenly over each domain's photos (in order)."""
    names = list(dict.fromkeys(domains))
    per_domain = {d: total // len(names) + (i < total % len(names)) for i, d in enumerate(names)}
    counts, seen = [], {d: 0 for d in names}
    for d in domains:
        n_d, k = domains.count(d), seen[d]
        counts.append(per_domain[d] // n_d + (k < per_domain[d] % n_d))
        seen[d] += 1
    return counts


def cut_crops(
    photos: list[Photo], out_dir: str | Path, *, n_crops: int, size: int = 128, seed: int = 0
) -> pd.DataFrame:
    """Cut about `n_crops` square crops (seeded positions and scales, resized to `size`) and save them as PNG.

    Crops are spread evenly over the domains, then over each domain's photos, and written to
    `out_dir/real/<photo>_<k>.png`; existing files are kept (the crops depend only on the photos, `n_crops`,
    `size` and `seed`). A CSV index for `aigi index` is
    written to `out_dir/real.csv` with the columns path, label, source, domain.

    Returns:
        The CSV's rows.
    """
    out_dir = Path(out_dir)
    (out_dir / "real").mkdir(parents=True, exist_ok=True)
    per_photo = _balanced_counts([p.domain for p in photos], n_crops)
    rows = []
    for index, (photo, count) in enumerate(zip(photos, per_photo)):
        rng = np.random.default_rng([seed, index])
        for k, (x, y, side) in enumerate(_crop_boxes(photo, int(count), size=size, rng=rng)):
            rel = f"real/{photo.name}_{k:03d}.png"
            if not (out_dir / rel).exists():
                crop = Image.fromarray(photo.pixels[y : y + side, x : x + side])
                if side != size:
                    crop = crop.resize((size, size), Image.Resampling.LANCZOS)
                with atomic_path(out_dir / rel) as tmp:
                    crop.save(tmp, format="PNG")
            rows.append({"path": rel, "label": 0, "source": "real", "domain": photo.domain})
    table = pd.DataFrame(rows)
    table.to_csv(out_dir / "real.csv", index=False)
    return table


def load_rgb(paths: list[str | Path]) -> np.ndarray:
    """Read same-sized images into one uint8 array [N, H, W, 3]."""
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


def psnr(real: np.ndarray, fake: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of uint8 (or [0, 255]) images, over all pixels of all images."""
    mse = float(np.mean((np.asarray(real, np.float64) - np.asarray(fake, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def find_shared_weights(
    kind: str, *, explicit: str | Path | None = None, roots: list[Path] | None = None
) -> Path | None:
    """The weights to use for `kind` (`vae` or `sr`): the user's file or folder, else `../shared/data/<name>`.

    `../shared/data` is looked up beside the current directory and beside the repository root.

    Raises:
        FileNotFoundError: an explicit path that does not exist.
    """
    if explicit:
        path = Path(explicit)
        if not path.exists():
            raise FileNotFoundError(f"--{kind}-weights {path} does not exist; give a weights file or folder")
        return path
    repo = Path(__file__).resolve().parents[2]
    for root in roots if roots is not None else [Path.cwd(), repo]:
        for name in SHARED_HINTS[kind]:
            folder = root.parent / "shared" / "data" / name
            hits = _weights_in(folder, kind)
            if hits is not None:
                return hits
    return None


def _weights_in(folder: Path, kind: str) -> Path | None:
    if not folder.is_dir():
        return None
    if kind == "vae":
        return folder if any(folder.glob("*_encoder.pth")) or (folder / "config.json").exists() else None
    files = sorted(p for p in folder.iterdir() if p.suffix in (".pth", ".pt", ".safetensors"))
    return files[0] if files else None


def _batches(crops: np.ndarray, *, batch: int, patch: int, rng: np.random.Generator):
    """Endless random minibatches of random `patch`-sized windows of the crops, as float tensors in [0, 1]."""
    import torch

    n, h, w, _ = crops.shape
    while True:
        idx = rng.integers(0, n, batch)
        ys, xs = rng.integers(0, h - patch + 1, batch), rng.integers(0, w - patch + 1, batch)
        arr = np.stack([crops[i, y : y + patch, x : x + patch] for i, y, x in zip(idx, ys, xs)])
        flips = rng.random(batch) < 0.5
        arr[flips] = arr[flips, :, ::-1]
        yield torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(255.0)


def train_for(
    step: Callable[[object], float], batches, *, seconds: float, max_steps: int, desc: str
) -> tuple[int, float]:
    """Call `step(batch)` until `seconds` pass or `max_steps` are done, with a progress bar; (steps, last loss)."""
    from tqdm.auto import tqdm

    start, loss, steps = time.monotonic(), float("nan"), 0
    with tqdm(total=max_steps, desc=desc, unit="step", disable=None, leave=False) as bar:
        while steps < max_steps and time.monotonic() - start < seconds:
            loss = step(next(batches))
            steps += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
    return steps, loss


# ---------------------------------------------------------------------------------------------------------------
# fallback fake makers: used only when no pretrained weights are given or found


def _reconstruct_psnr(forward: Callable, crops: np.ndarray) -> float:
    """PSNR of `forward` (uint8-range float tensors [B, 3, H, W] in [0, 1] -> same) over `crops`, 8 at a time."""
    import torch

    outs = []
    with torch.inference_mode():
        for i in range(0, len(crops), 8):
            x = torch.from_numpy(crops[i : i + 8]).permute(0, 3, 1, 2).float().div(255.0)
            outs.append(forward(x).clamp(0, 1).mul(255.0).round().byte().permute(0, 2, 3, 1).numpy())
    return psnr(crops, np.concatenate(outs))


def small_vae_config(*, channels: int = 24, levels: int = 2, latent_channels: int = 6) -> dict:
    """A diffusers `AutoencoderTiny` config small enough to train on a CPU in a minute (2^(levels-1) down)."""
    return dict(
        encoder_block_out_channels=(channels,) * levels,
        decoder_block_out_channels=(channels,) * levels,
        num_encoder_blocks=(1,) * levels,
        num_decoder_blocks=(1,) * levels,
        latent_channels=latent_channels,
    )


def train_small_vae(
    crops: np.ndarray, out_dir: str | Path, *, seconds: float = 60.0, seed: int = 0, holdout: np.ndarray | None = None
) -> dict:
    """Train a small diffusers `AutoencoderTiny` on the crops and `save_pretrained` it to `out_dir`.

    The result loads like any diffusers VAE folder (`aigi fakes vae --weights out_dir`).

    Args:
        crops: real training crops [N, H, W, 3] uint8.
        out_dir: the folder to write (config.json + diffusion_pytorch_model.safetensors).
        seconds: training time budget.
        seed: seeds the weights and the minibatches.
        holdout: crops to measure the reconstruction PSNR on (default: up to 32 of `crops`).

    Returns:
        {"path", "steps", "seconds", "psnr"}.
    """
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    model = AutoencoderTiny(**small_vae_config())
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def forward(x: torch.Tensor) -> torch.Tensor:  # [0, 1] in and out; diffusers' VAEs work in [-1, 1]
        return model.decode(model.encode(x * 2 - 1).latents).sample.add(1).div(2)

    def step(x: torch.Tensor) -> float:
        loss = torch.nn.functional.mse_loss(forward(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss.detach())

    start = time.monotonic()
    batches = _batches(crops, batch=16, patch=min(48, crops.shape[1]), rng=np.random.default_rng(seed))
    steps, _ = train_for(step, batches, seconds=seconds, max_steps=100_000, desc="train small VAE")
    model.eval()
    measured = _reconstruct_psnr(forward, holdout if holdout is not None else crops[:32])
    model.save_pretrained(str(out_dir))
    return {"path": str(out_dir), "steps": steps, "seconds": time.monotonic() - start, "psnr": measured}


def train_small_sr(
    crops: np.ndarray, out_path: str | Path, *, scale: int = 4, seconds: float = 30.0, seed: int = 0
) -> dict:
    """Train a small Real-ESRGAN-Compact (SRVGG) upsampler on the crops; saved as `{"params": state_dict}` .pth.

    That is how Real-ESRGAN ships its weights: spandrel recognises the file (`aigi fakes sr --weights out_path`).

    Returns:
        {"path", "steps", "seconds", "psnr"} (PSNR of upsample(downsample(crop)) against the crop).
    """
    import torch
    from spandrel.architectures.Compact import Compact

    from pipeline.fakes.sr import downscale

    torch.manual_seed(seed)
    model = Compact(num_in_ch=3, num_out_ch=3, num_feat=32, num_conv=8, upscale=scale, act_type="prelu")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(x: torch.Tensor) -> float:
        loss = torch.nn.functional.l1_loss(model(downscale(x, scale)), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss.detach())

    start = time.monotonic()
    patch = min(64, crops.shape[1]) // scale * scale
    steps, _ = train_for(step, _batches(crops, batch=16, patch=patch, rng=np.random.default_rng(seed)),
                         seconds=seconds, max_steps=100_000, desc="train small SR")  # fmt: skip
    model.eval()
    measured = _reconstruct_psnr(lambda x: model(downscale(x, scale)), crops[:32])
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"params": model.state_dict()}, out_path)
    return {"path": str(out_path), "steps": steps, "seconds": time.monotonic() - start, "psnr": measured}
