"""Save and load heads as head.json (name, config, inputs, metadata) + head.safetensors; never pickle."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from common.files import atomic_path, atomic_write
from heads._registry import build

FORMAT = "aigi-head"
VERSION = 1
RESERVED = ("format", "version", "name", "config", "inputs", "standardize")


def save(head: nn.Module, directory: str | Path, *, meta: dict[str, Any] | None = None) -> Path:
    """Write `directory/head.json` and `directory/head.safetensors`; returns the directory.

    Args:
        head: a head from `heads.build`.
        directory: created when missing; existing head files are replaced atomically.
        meta: extra JSON-ready entries (fingerprints, training config, metrics, extractor spec).
    """
    meta = dict(meta or {})
    clash = [k for k in meta if k in RESERVED]
    if clash:
        raise ValueError(f"meta keys {clash} are reserved by head.json; rename them")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    info = {
        "format": FORMAT,
        "version": VERSION,
        "name": head.head_name,
        "config": dataclasses.asdict(head.cfg),
        "inputs": list(head.cfg.inputs),
        "standardize": getattr(head, "input_norm", None) is not None,
        **meta,
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    with atomic_path(directory / "head.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
    atomic_write(directory / "head.json", json.dumps(info, indent=2, sort_keys=False, default=_json_default) + "\n")
    return directory


def load(directory: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a saved head (on the CPU, in eval mode) and return it with head.json's content."""
    directory = Path(directory)
    json_path, weights = directory / "head.json", directory / "head.safetensors"
    for path in (json_path, weights):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: a head directory holds head.json + head.safetensors "
                "(written by `aigi train` or `aigi head import-*`)"
            )
    info = json.loads(json_path.read_text(encoding="utf-8"))
    if info.get("format") != FORMAT:
        raise ValueError(f"{json_path} is not an aigi head file (format={info.get('format')!r})")
    head = build(info["name"], standardize=bool(info.get("standardize", False)), **info["config"])
    state = load_file(str(weights), device="cpu")
    missing, unexpected = set(head.state_dict()) - set(state), set(state) - set(head.state_dict())
    if missing or unexpected:
        raise ValueError(
            f"{weights} does not fit head '{info['name']}': missing {sorted(missing)}, unexpected {sorted(unexpected)}"
        )
    head.load_state_dict(state, strict=True)
    return head.eval(), info


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    raise TypeError(f"head.json cannot store {type(value).__name__}: {value!r}")
