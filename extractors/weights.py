"""Read local weight files safely (no pickle); their content fingerprint is `common.files.sha256_file`."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from aigi.common.files import asks_to_run_code

_WRAPPER_KEYS = ("state_dict", "model", "module", "params")


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return any(n.endswith("constants.pkl") or "/code/" in n for n in names)


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    while isinstance(obj, dict):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(obj) // 2:
            return {k.removeprefix("module."): v for k, v in tensors.items()}
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    raise ValueError(f"{path}: no state dict (a mapping of names to tensors) found in this file")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict from a local .pth/.pt/.bin/.safetensors file without executing pickled code.

    Training checkpoints wrapping the weights under "state_dict" / "model" are unwrapped and a "module." prefix
    (DataParallel) is removed. Large zip-format files are memory-mapped rather than read into RAM.

    Args:
        path: the weights file.

    Returns:
        Parameter name -> tensor (on the CPU).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a TorchScript archive, a pickle that needs code execution, or no tensors in the file.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; pass the weights file itself (.pth, .pt, .bin or .safetensors)")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found (weights are never downloaded; pass a local file)")
    fix = "pass a plain state dict (torch.save(model.state_dict(), FILE)) or a .safetensors file"
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return _unwrap(load_file(str(path), device="cpu"), path)
        except SafetensorError as err:
            raise ValueError(f"{path}: not a readable .safetensors file ({err}); {fix}") from None
    if _is_torchscript(path):
        raise ValueError(
            f"{path} is a TorchScript archive (OpenAI's original CLIP release), which cannot be loaded without "
            'executing its code. Convert it once to a plain state dict: python -c "import torch; '
            "m = torch.jit.load('ViT-L-14.pt', map_location='cpu'); torch.save(m.state_dict(), 'ViT-L-14.pth')\""
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:  # weights_only refuses pickled code; random bytes are no pickle at all
        if not asks_to_run_code(err):
            raise ValueError(f"{path}: not a weights file (damaged, or another format); {fix}") from None
        raise ValueError(f"{path}: cannot be read as plain weights, reading it would run pickled code; {fix}") from None
    except Exception as err:  # zip errors, truncated or text files
        reason = " ".join(str(err).split())[:160]
        raise ValueError(f"{path}: cannot be read as plain weights ({type(err).__name__}: {reason}); {fix}") from None
    return _unwrap(obj, path)
