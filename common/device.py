"""The device rule shared by extractors, heads and fake makers: `auto` is CUDA when available, else the CPU."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """ "auto" -> CUDA when available else CPU; anything else is passed to torch.device.

    Raises:
        ValueError: a CUDA device is asked for on a machine without one.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but no CUDA device is available; use --device cpu")
    return dev
