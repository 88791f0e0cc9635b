"""Tensor helpers shared by the fake makers: PIL <-> tensor, reflect padding to a multiple, safe checkpoint reading."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 [3, H, W] in [0, 1]."""
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255)


def to_image(x: torch.Tensor) -> Image.Image:
    """Float [3, H, W] in [0, 1] -> RGB PIL image (rounded to the nearest 8-bit value)."""
    arr = x.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


def padded_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    """(H, W) rounded up to a multiple of `multiple`."""
    return math.ceil(height / multiple) * multiple, math.ceil(width / multiple) * multiple


def pad_to(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad [..., h, w] at the bottom/right to (height, width): reflect, or edge-replicate when the image is too
    small to reflect (a pad must be shorter than the side)."""
    h, w = x.shape[-2:]
    pad = (0, width - w, 0, height - h)
    if pad[1] == 0 and pad[3] == 0:
        return x
    mode = "reflect" if pad[1] < w and pad[3] < h else "replicate"
    return F.pad(x.unsqueeze(0), pad, mode=mode).squeeze(0)


def stack_padded(images: list[torch.Tensor], height: int, width: int) -> torch.Tensor:
    """Pad each [3, h, w] image to (height, width) and stack them into [B, 3, height, width]."""
    return torch.stack([pad_to(x, height, width) for x in images])


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint's contents without executing pickled code: safetensors, or torch.load(weights_only=True)."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.iterdir() if p.suffix in (".pth", ".pt", ".ckpt", ".safetensors", ".bin"))
        raise IsADirectoryError(
            f"--weights {path} is a folder; pass one weights file" + (f" inside it: {', '.join(found[:5])}" if found
                                                                       else " (.pth or .safetensors)")
        )  # fmt: skip
    if not path.is_file():
        raise FileNotFoundError(f"--weights {path} does not exist; pass a local weights file or hf-hub:ORG/REPO:FILE")
    fix = "save a plain state dict (torch.save(model.state_dict(), FILE)) or a .safetensors file"
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except SafetensorError as err:
            raise ValueError(f"{path}: not a readable .safetensors file ({err}); {fix}") from None
    import pickle

    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:
        raise ValueError(f"{path}: refused by the weights-only loader (it would run pickled code); {fix}") from None
    except Exception as err:  # zip errors, truncated files, text files
        reason = " ".join(str(err).split())[:120]
        raise ValueError(f"{path}: not a readable weights file ({type(err).__name__}: {reason}); {fix}") from None
