"""Fingerprints: the sha256 of the canonical JSON of a feature spec, and a readable diff between two specs."""

from __future__ import annotations

import hashlib
import json
from pathlib import PurePath
from typing import Any

import numpy as np


def _plain(value: Any) -> Any:
    """Turn tuples, paths and numpy scalars into JSON-native values (dict keys become strings)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"spec value {value!r} of type {type(value).__name__} is not JSON-serialisable")


def canonical_json(spec: dict) -> str:
    """The canonical JSON text of `spec`: sorted keys, no spaces, tuples as lists."""
    return json.dumps(_plain(spec), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def fingerprint(spec: dict) -> str:
    """sha256 hex digest of the canonical JSON of `spec` (everything that changes a feature)."""
    return hashlib.sha256(canonical_json(spec).encode("utf-8")).hexdigest()


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix or "<spec>": value}


def spec_diff(old: dict, new: dict) -> list[str]:
    """Human-readable differences between two specs, one `field: old -> new` line per differing dotted field."""
    a, b = _flatten(_plain(old)), _flatten(_plain(new))
    lines = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<absent>") != b.get(key, "<absent>") or (key in a) != (key in b):
            lines.append(f"{key}: {a.get(key, '<absent>')!r} -> {b.get(key, '<absent>')!r}")
    return lines
