"""Load a VAE from local weights (diffusers folder, single file, TAESD-family pair) and reconstruct image batches."""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from aigi.common.device import resolve_device
from aigi.common.extras import require
from aigi.common.hub import DIFFUSERS_FOLDER, resolve_path
from aigi.fakes.ops import padded_size, read_checkpoint, stack_padded, to_image, to_tensor
from aigi.fakes.taesd import TinyAutoencoder, load_pair

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
LDM_PREFIXES = ("first_stage_model.", "vae.")
VAE_KEY_ROOTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
# Images up to this side are encoded whole; larger ones in overlapping tiles (diffusers' tiled encode/decode).
DEFAULT_TILE = 1024
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` -> fp16 on CUDA, fp32 elsewhere (half precision is slower than fp32 on CPUs)."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"bad --dtype {dtype!r}: choose auto, fp32, fp16 or bf16")
    return DTYPES[dtype]


def noise_seed(seed: int, image_id: str) -> int:
    """A 63-bit seed for one image's latent noise, from the run seed and the image id (batching-independent)."""
    return int(hashlib.sha256(f"{seed}:{image_id}".encode()).hexdigest()[:15], 16)


@dataclass
class VaeModel:
    """A loaded autoencoder. `kind` is `kl` (AutoencoderKL), `tiny` (AutoencoderTiny) or `taesd` (raw pair)."""

    name: str
    kind: str
    model: nn.Module
    device: torch.device
    dtype: torch.dtype
    downscale: int

    @property
    def stochastic(self) -> bool:
        """Whether the encoder has a latent distribution to sample from (only AutoencoderKL)."""
        return self.kind == "kl"

    @torch.inference_mode()
    def reconstruct(self, x: torch.Tensor, *, seeds: list[int] | None = None) -> torch.Tensor:
        """decode(encode(x)) for a batch in [0, 1] whose sides are multiples of `downscale`; result in [0, 1], fp32.

        Args:
            x: images [B, 3, H, W] in [0, 1].
            seeds: one noise seed per image to sample the latent (`noise_seed`); None takes the latent mean.
        """
        x = x.to(self.device, self.dtype)
        if self.kind == "taesd":
            return self.model(x).float().clamp(0, 1).cpu()
        x = x * 2 - 1
        if self.kind == "tiny":
            y = self.model.decode(self.model.encode(x).latents).sample
        else:
            dist = self.model.encode(x).latent_dist
            z = dist.mean
            if seeds is not None:
                z = z + dist.std * self._noise(seeds, tuple(z.shape[1:])).to(z.device, z.dtype)
            y = self.model.decode(z).sample
        return ((y.float() + 1) / 2).clamp(0, 1).cpu()

    @staticmethod
    def _noise(seeds: list[int], shape: tuple[int, ...]) -> torch.Tensor:
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        return torch.stack([torch.randn(shape, generator=g) for g in gens])


def _strip_vae_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in LDM_PREFIXES:
        if any(k.startswith(prefix + "encoder.") for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            break
    return {k: v for k, v in state.items() if k.startswith(VAE_KEY_ROOTS)}


def _count(state: dict, prefix: str) -> int:
    return len({k[len(prefix) :].split(".")[0] for k in state if k.startswith(prefix)})


def infer_kl_config(state: dict[str, torch.Tensor]) -> dict:
    """An AutoencoderKL config read off a state dict's keys and shapes (LDM/original or diffusers naming).

    Inferred: block_out_channels, layers_per_block, latent_channels, in/out channels, quant convs, mid-block
    attention. Not inferable and set to the SD/SDXL/FLUX value: norm_num_groups 32, act_fn silu; sample_size 512
    (only the tile size). `scaling_factor` does not matter for a reconstruction.
    """
    if "encoder.conv_out.weight" not in state:
        raise ValueError("not an AutoencoderKL checkpoint: no encoder.conv_out.weight (a VAE or full SD checkpoint)")
    ldm = any(k.startswith("encoder.down.") for k in state)
    down, res, conv1 = ("encoder.down.", "block", "conv1") if ldm else ("encoder.down_blocks.", "resnets", "conv1")
    n_blocks = _count(state, down)
    channels = [int(state[f"{down}{i}.{res}.0.{conv1}.weight"].shape[0]) for i in range(n_blocks)]
    attn = "encoder.mid.attn_1." if ldm else "encoder.mid_block.attentions."
    return {
        "_class_name": "AutoencoderKL",
        "in_channels": int(state["encoder.conv_in.weight"].shape[1]),
        "out_channels": int(state["decoder.conv_out.weight"].shape[0]),
        "down_block_types": ["DownEncoderBlock2D"] * n_blocks,
        "up_block_types": ["UpDecoderBlock2D"] * n_blocks,
        "block_out_channels": channels,
        "layers_per_block": _count(state, f"{down}0.{res}."),
        "latent_channels": int(state["encoder.conv_out.weight"].shape[0]) // 2,
        "norm_num_groups": 32,
        "act_fn": "silu",
        "sample_size": 512,
        "use_quant_conv": "quant_conv.weight" in state,
        "use_post_quant_conv": "post_quant_conv.weight" in state,
        "mid_block_add_attention": any(k.startswith(attn) for k in state),
    }


def _load_kwargs() -> dict:
    """Offline loading; diffusers' low-memory path only where `accelerate` is installed (else it warns)."""
    import importlib.util

    return {"local_files_only": True, "low_cpu_mem_usage": importlib.util.find_spec("accelerate") is not None}


def _load_kl_single_file(path: Path, config: Path | None) -> nn.Module:
    AutoencoderKL = require("diffusers", needed_for="an AutoencoderKL checkpoint").AutoencoderKL
    state = read_checkpoint(path)
    hint = "pass an AutoencoderKL checkpoint, a diffusers VAE folder or a folder with a TAESD encoder/decoder pair"
    if not isinstance(state, dict):
        raise ValueError(f"--weights {path} holds a {type(state).__name__}, not a VAE state dict; {hint}")
    if isinstance(state.get("state_dict"), dict):  # a Lightning/LDM training checkpoint
        state = state["state_dict"]
    state = _strip_vae_prefix(state)
    if "encoder.conv_out.weight" not in state:
        raise ValueError(f"--weights {path} is not an AutoencoderKL checkpoint (no encoder.conv_out.weight); {hint}")
    try:
        if config is not None:
            folder = config.parent if config.is_file() else config
            return AutoencoderKL.from_single_file(state, config=str(folder), **_load_kwargs())
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "config.json").write_text(json.dumps(infer_kl_config(state)))
            return AutoencoderKL.from_single_file(state, config=tmp, **_load_kwargs())
    except (KeyError, RuntimeError, AttributeError, TypeError) as err:  # weights that do not fit the architecture
        reason = " ".join(str(err).split())[:160]
        why = f"{type(err).__name__}: {reason}"
        raise ValueError(f"--weights {path}: does not fit an AutoencoderKL ({why}); {hint}") from None


def _load_diffusers_folder(folder: Path) -> tuple[str, nn.Module]:
    diffusers = require("diffusers", needed_for="a diffusers VAE folder")
    if not (folder / "config.json").is_file() and (folder / "vae" / "config.json").is_file():
        folder = folder / "vae"  # a pipeline folder
    cls_name = json.loads((folder / "config.json").read_text()).get("_class_name", "")
    if cls_name not in ("AutoencoderKL", "AutoencoderTiny"):
        raise ValueError(f"{folder}/config.json describes {cls_name!r}; expected AutoencoderKL or AutoencoderTiny")
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity(logging.CRITICAL)  # its fallback notes would break the one-line error below
    try:
        model = getattr(diffusers, cls_name).from_pretrained(str(folder), **_load_kwargs())
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:  # pickled code, damaged or missing files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{folder}: the {cls_name} weights cannot be loaded safely ({first})") from None
    finally:
        diffusers_logging.set_verbosity(verbosity)
    return ("kl" if cls_name == "AutoencoderKL" else "tiny"), model


def default_name(weights: Path) -> str:
    """The `vae:<name>` of a weights path: a file's stem, a folder's name (its parent's for a `vae/` subfolder)."""
    if weights.is_file():
        return weights.stem
    if weights.name == "vae":
        return weights.resolve().parent.name
    return weights.resolve().name


def load_vae(
    weights: str | Path,
    *,
    name: str | None = None,
    config: str | Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    tile_size: int | None = None,
) -> VaeModel:
    """Load an autoencoder for reconstruction.

    Args:
        weights: a diffusers VAE folder (AutoencoderKL or AutoencoderTiny), a pipeline folder with `vae/`,
            a single checkpoint file (AutoencoderKL, LDM or diffusers key names), or a folder with a TAESD-family
            `NAME_encoder.pth` + `NAME_decoder.pth` pair (incl. TAEF2); or a hub name: `hf-hub:ORG/REPO` (a
            diffusers VAE repository), `hf-hub:ORG/REPO:vae` (a pipeline's sub-folder), `hf-hub:ORG/REPO:FILE`.
        name: the model's name in `vae:<name>` (default: the file's stem, the folder's or repository's name); also
            picks NAME when a folder holds several TAESD pairs.
        config: a diffusers config folder / config.json for a single file (default: inferred from its keys).
        device: `auto`, `cpu`, `cuda`, `cuda:1`, ...
        dtype: `auto` (fp16 on CUDA, fp32 on CPU), `fp32`, `fp16`, `bf16`. A KL VAE whose config sets
            `force_upcast` runs in fp32 when fp16 is asked (SD/SDXL VAEs overflow in fp16).
        tile_size: tile side in pixels for tiled encode/decode of images larger than it (KL only); None: the
            larger of the config's sample_size and 1024; 0 turns tiling off.
    """
    weights, hub_name = resolve_path(weights, folder=DIFFUSERS_FOLDER)  # a hf-hub: name -> its cached file/folder
    name = name or hub_name
    if not weights.exists():
        raise FileNotFoundError(f"--weights {weights} does not exist")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if weights.is_file():
        if weights.suffix not in SINGLE_FILE_SUFFIXES:
            raise ValueError(f"--weights {weights}: unknown checkpoint type; expected one of {SINGLE_FILE_SUFFIXES}")
        kind, model = "kl", _load_kl_single_file(weights, Path(config) if config else None)
    elif any(weights.glob("*_encoder.pth")):
        pair_name, model = load_pair(weights, name)
        kind, name = "taesd", name or pair_name
    elif (weights / "config.json").is_file() or (weights / "vae" / "config.json").is_file():
        kind, model = _load_diffusers_folder(weights)
    else:
        raise ValueError(
            f"--weights {weights}: no config.json, vae/config.json or NAME_encoder.pth + NAME_decoder.pth found"
        )
    if kind == "kl" and dt == torch.float16 and getattr(model.config, "force_upcast", False):
        dt = torch.float32
    model = model.to(dev).eval().requires_grad_(False)
    if dt != torch.float32:
        model = model.to(dt)
    _set_tiling(model, kind, tile_size)
    return VaeModel(name or default_name(weights), kind, model, dev, dt, _downscale(model, kind))


def _downscale(model: nn.Module, kind: str) -> int:
    if kind == "taesd":
        return TinyAutoencoder.downscale
    if kind == "tiny":
        return 2 ** (len(model.config.encoder_block_out_channels) - 1)
    return 2 ** (len(model.config.block_out_channels) - 1)


def _set_tiling(model: nn.Module, kind: str, tile_size: int | None) -> None:
    if kind != "kl" or tile_size == 0:
        return
    factor = _downscale(model, kind)
    sample = model.config.sample_size
    tile_size = tile_size or max(int(sample[0] if isinstance(sample, (list, tuple)) else sample), DEFAULT_TILE)
    if tile_size % factor:
        raise ValueError(f"--tile-size {tile_size} must be a multiple of {factor}")
    model.enable_tiling()
    model.tile_sample_min_size = tile_size
    model.tile_latent_min_size = tile_size // factor


class VaeTransform:
    """Image -> VAE reconstruction of the same size: reflect-pad to the VAE's multiple, encode, decode, crop."""

    def __init__(self, vae: VaeModel, *, latent: str = "mean", seed: int = 0) -> None:
        if latent not in ("mean", "sample"):
            raise ValueError(f"bad --latent {latent!r}: choose mean or sample")
        self.vae, self.latent, self.seed = vae, latent, seed
        self.source = f"vae:{vae.name}"

    def batch_key(self, width: int, height: int) -> tuple[int, int]:
        """Images with equal keys (their padded size) can share a batch."""
        return padded_size(height, width, self.vae.downscale)

    def __call__(self, images: list[Image.Image], image_ids: list[str]) -> list[Image.Image]:
        """Reconstruct `images` (all with the same batch key); the latent noise of each depends on its id only."""
        tensors = [to_tensor(img) for img in images]
        height, width = self.batch_key(images[0].width, images[0].height)
        seeds = [noise_seed(self.seed, i) for i in image_ids] if self.latent == "sample" else None
        out = self.vae.reconstruct(stack_padded(tensors, height, width), seeds=seeds)
        return [to_image(y[:, : x.shape[1], : x.shape[2]]) for x, y in zip(tensors, out)]
