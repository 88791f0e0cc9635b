"""Save and load heads as head.json (name, config, inputs, metadata) + head.safetensors; never pickle."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from torch import nn

from aigi.common.files import atomic_write, temp_name
from aigi.heads._registry import build
from aigi.heads.calibration import Calibration

FORMAT = "aigi-head"
VERSION = 1
WEIGHTS, HEAD_JSON = "head.safetensors", "head.json"
WEIGHTS_DIGEST = "weights_sha256"  # head.json records the digest of the weights file saved with it
RESERVED = ("format", "version", "name", "config", "inputs", "standardize", "calibration", WEIGHTS_DIGEST)
FIX = "re-create the head with `aigi train` or `aigi head import-*`"


def save(
    head: nn.Module,
    directory: str | Path,
    *,
    meta: dict[str, Any] | None = None,
    calibration: Calibration | None = None,
) -> Path:
    """Write `directory/head.json` and `directory/head.safetensors`; returns the directory.

    Args:
        head: a head from `heads.build`.
        directory: created when missing; an existing head is replaced as a pair (both files or neither).
        meta: extra JSON-ready entries (fingerprints, training config, metrics, extractor spec).
        calibration: stored under `calibration` in head.json (see `heads.calibration`); none means identity.
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
    if calibration is not None:
        info["calibration"] = calibration.to_dict()
    tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    _check_finite(tensors, where=f"head '{head.head_name}' to save in {directory}")
    weights = save_bytes(tensors, metadata={"format": FORMAT})
    info[WEIGHTS_DIGEST] = hashlib.sha256(weights).hexdigest()
    text = json.dumps(info, indent=2, sort_keys=False, default=_json_default) + "\n"
    _write_pair(directory, {WEIGHTS: weights, HEAD_JSON: text.encode("utf-8")})
    return directory


def load(directory: str | Path, *, frozen: nn.Module | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a saved head (on the CPU, in eval mode) and return it with head.json's content.

    `frozen`: the frozen backbone tail a `tail_*` head runs (`read_info(directory)` says what it was trained on).

    Raises:
        ValueError: naming the file, for damaged, truncated, mismatched or non-finite files and absurd shapes.
    """
    directory = Path(directory)
    json_path, weights = directory / HEAD_JSON, directory / WEIGHTS
    for path in (json_path, weights):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: a head directory holds head.json + head.safetensors "
                "(written by `aigi train` or `aigi head import-*`)"
            )
    info = _read_info(json_path)
    data = weights.read_bytes()
    digest = info.get(WEIGHTS_DIGEST)
    if digest is not None and hashlib.sha256(data).hexdigest() != digest:
        raise ValueError(f"{weights} does not match {json_path} (changed, damaged or from another save); {FIX}")
    try:
        state = load_bytes(data)
    except Exception as err:  # SafetensorError: truncated, empty or not a safetensors file
        raise ValueError(
            f"{weights} is not a readable safetensors file ({' '.join(str(err).split())}); {FIX}"
        ) from None
    head = _build_checked(info, state, json_path, weights, frozen=frozen)
    _check_finite(state, where=str(weights))
    head.load_state_dict(state, strict=True)
    return head.eval(), info


def _read_info(json_path: Path) -> dict[str, Any]:
    try:
        info = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{json_path} is not valid JSON ({err}); {FIX}") from None
    found = info.get("format") if isinstance(info, dict) else type(info).__name__
    if found != FORMAT:
        raise ValueError(f"{json_path} is not an aigi head file (format={found!r}); {FIX}")
    if not isinstance(info.get("config"), dict) or not isinstance(info.get("name"), str):
        raise ValueError(f"{json_path} lacks a head name or config mapping; {FIX}")
    cal = info.get("calibration")
    try:  # a hand-edited calibration (T = 0, a NaN threshold) is refused here, before it scores anything
        if cal is not None and not isinstance(cal, dict):
            raise ValueError(f"calibration must be a mapping, got {type(cal).__name__}")
        Calibration.from_dict(cal)
    except ValueError as err:
        raise ValueError(
            f"{json_path}: {err}; re-fit it with `aigi calibrate`, or delete the `calibration` entry"
        ) from None
    return info


def _build_checked(
    info: dict, state: dict, json_path: Path, weights: Path, *, frozen: nn.Module | None = None
) -> nn.Module:
    """Build the head on the meta device first (no memory), compare every shape with the file, then build it.

    A head with a frozen tail is built once, for real: the tail's weights exist already and its adapters are small.
    """
    kwargs = dict(standardize=bool(info.get("standardize", False)), **info["config"])
    if needs_frozen(info["name"]) and frozen is None:
        raise ValueError(
            f"head '{info['name']}' in {json_path.parent} runs the backbone's last blocks: it needs the frozen tail "
            "(`aigi eval` / `aigi predict` build it from the recorded extractor spec and --weights)"
        )
    try:
        if frozen is not None:
            head = build(info["name"], frozen=frozen, **kwargs)
            shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
        else:
            with torch.device("meta"):
                shapes = {k: tuple(v.shape) for k, v in build(info["name"], **kwargs).state_dict().items()}
    except (TypeError, ValueError, RuntimeError, OverflowError) as err:
        raise ValueError(f"{json_path}: its config does not build head {info['name']!r} ({err}); {FIX}") from None
    missing, unexpected = set(shapes) - set(state), set(state) - set(shapes)
    if missing or unexpected:
        raise ValueError(
            f"{weights} does not fit head '{info['name']}': missing {sorted(missing)}, unexpected {sorted(unexpected)}"
        )
    wrong = [f"{k} {tuple(state[k].shape)} vs {shapes[k]}" for k in shapes if tuple(state[k].shape) != shapes[k]]
    if wrong:
        raise ValueError(
            f"{json_path}: config shapes differ from {weights}: {wrong[:3]}; the files do not belong together"
        )
    return head if frozen is not None else build(info["name"], **kwargs)


def read_info(directory: str | Path) -> dict[str, Any]:
    """head.json of a saved head (name, config, inputs and the training metadata), checked, without building it."""
    json_path = Path(directory) / HEAD_JSON
    if not json_path.is_file():
        raise FileNotFoundError(
            f"{json_path} is missing: a head directory holds head.json + head.safetensors "
            "(written by `aigi train` or `aigi head import-*`)"
        )
    return _read_info(json_path)


def needs_frozen(name: str) -> bool:
    """Whether head `name` runs a frozen backbone tail (the `tail_*` heads)."""
    from aigi.heads._registry import head_class

    return bool(getattr(head_class(name), "needs_frozen", False))


def _check_finite(tensors: dict[str, torch.Tensor], *, where: str) -> None:
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"{where}: weights {bad[:5]} hold NaN/inf values; such a head cannot score images")


def _write_pair(directory: Path, files: dict[str, bytes]) -> None:
    """Replace head.safetensors and head.json together: both are written in full first; if either rename fails
    the previous pair is put back, so a failed save leaves the old head whole."""
    temps = {name: temp_name(directory / name) for name in files}
    backups = {name: directory / f".{name}.prev-{socket.gethostname()}-{os.getpid()}" for name in files}
    replaced: list[str] = []
    try:
        for name, data in files.items():
            with open(temps[name], "wb") as fh:
                fh.write(data)
        for name in files:
            if (directory / name).exists():
                os.link(directory / name, backups[name])
        for name in files:
            os.replace(temps[name], directory / name)
            replaced.append(name)
    except OSError as err:
        for name in replaced:
            if backups[name].exists():
                os.replace(backups[name], directory / name)
            else:
                (directory / name).unlink(missing_ok=True)
        failed = next((temps[n] for n in files if n not in replaced), directory)
        raise OSError(err.errno, f"saving the head failed: {err.strerror or err}; the previous head is kept",
                      str(failed.with_name(failed.name.split(".tmp-")[0].lstrip(".")))) from err  # fmt: skip
    finally:
        for path in (*temps.values(), *backups.values()):
            path.unlink(missing_ok=True)


def save_calibration(directory: str | Path, calibration: Calibration | None) -> Path:
    """Store (or with None remove) the calibration in an existing `directory/head.json`, atomically."""
    json_path = Path(directory) / "head.json"
    if not json_path.is_file():
        raise FileNotFoundError(f"{json_path} is missing: calibrate a head directory written by `aigi train`")
    info = json.loads(json_path.read_text(encoding="utf-8"))
    if info.get("format") != FORMAT:
        raise ValueError(f"{json_path} is not an aigi head file (format={info.get('format')!r})")
    info.pop("calibration", None)
    if calibration is not None:
        info["calibration"] = calibration.to_dict()
    atomic_write(json_path, json.dumps(info, indent=2, sort_keys=False, default=_json_default) + "\n")
    return Path(directory)


def calibration_of(info: dict[str, Any]) -> Calibration:
    """The calibration recorded in head.json's content (identity, threshold 0.5, when there is none)."""
    return Calibration.from_dict(info.get("calibration"))


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    raise TypeError(f"head.json cannot store {type(value).__name__}: {value!r}")
