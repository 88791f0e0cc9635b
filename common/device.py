"""The device rule shared by extractors, heads and fake makers: `auto` is CUDA when available, else the CPU."""

from __future__ import annotations

import torch


def visible_devices() -> list[str]:
    """The devices this process can use: `cpu`, then `cuda:0`, `cuda:1`, ... (those CUDA_VISIBLE_DEVICES shows)."""
    return ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)]


def _check_index(dev: torch.device, original: str) -> None:
    if dev.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise ValueError(f"device {original!r} requested but no CUDA device is available; use --device cpu")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"unknown device {original!r}; visible devices: {', '.join(visible_devices())}")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """ "auto" -> CUDA when available else CPU; anything else is passed to torch.device.

    Raises:
        ValueError: an unknown device name, or a CUDA device that is not there (naming the visible devices).
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {str(device)!r}; visible devices: {', '.join(visible_devices())}") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {str(device)!r} is not supported; visible devices: {', '.join(visible_devices())}")
    _check_index(dev, str(device))
    return dev


def parse_devices(text: str) -> list[str]:
    """`all` (every visible CUDA device) or a comma-separated list (`cuda:0,cuda:1`, `cpu,cpu`), each checked.

    Raises:
        ValueError: an empty list, an unknown or absent device, `all` without CUDA, or a CUDA device named twice.
    """
    if text.strip() == "all":
        found = visible_devices()[1:]
        if not found:
            raise ValueError("--devices all: no CUDA device is visible; give --device cpu (or --devices cpu,cpu)")
        return found
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ValueError(f"--devices {text!r} names no device; give all or e.g. cuda:0,cuda:1")
    devices = [resolve_device(name) for name in names]
    if any(d.type == "cuda" and d.index is None for d in devices) and len(devices) > 1:
        raise ValueError("--devices: name each GPU with its index (cuda:0,cuda:1), or give all")
    gpus = [str(d) for d in devices if d.type == "cuda"]
    if len(set(gpus)) != len(gpus):
        raise ValueError(f"--devices {text!r} names a GPU twice; each GPU takes one worker")
    return [str(d) for d in devices]
