"""Name -> extractor builder registry, with errors that suggest close matches."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .base import Extractor

Builder = Callable[..., Extractor]
_BUILDERS: dict[str, Builder] = {}
_PREFIXES: dict[str, Builder] = {}  # "timm:" -> builder taking the rest of the name as `arch`


def register_extractor(name: str, *, prefix: bool = False) -> Callable[[Builder], Builder]:
    """Register a builder under `name` (or, with prefix=True, every name starting with `name`)."""

    def decorate(fn: Builder) -> Builder:
        table = _PREFIXES if prefix else _BUILDERS
        if name in table:
            raise ValueError(f"extractor {name!r} is registered twice")
        table[name] = fn
        return fn

    return decorate


def available() -> list[str]:
    """Registered names; prefix families are shown as e.g. "timm:<model name>"."""
    return sorted(_BUILDERS) + [f"{p}<model name>" for p in sorted(_PREFIXES)]


def build(
    name: str,
    *,
    weights: str | Path | None = None,
    features: list[str] | None = None,
    preprocess: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    **arch_overrides: Any,
) -> Extractor:
    """Build a frozen backbone by name.

    Args:
        name: a name from `available()`, e.g. "clip-l14-336", "aim-v1-3b" or "timm:vit_base_patch16_224".
        weights: local weights file (AIM-v1: backbone and head files joined by a comma, or their folder).
            None builds random weights (tests, benchmarks).
        features: feature names (`l<i>.cls`, `l<i>.mean`, `pooler`, `proj`, `probe`, ...); None = the default.
        preprocess: "resize", "center_crop" or "rich_patch", optionally with parameters ("resize:size=448");
            None = the backbone's default policy.
        device: "auto" (CUDA if present), "cpu", "cuda", "cuda:1", ...
        dtype: "auto" (fp32 on CPU, bf16/fp16 autocast on GPU), "fp32", "bf16" or "fp16".
        **arch_overrides: architecture changes (e.g. embed_dim, depth, num_heads), for tiny test models.

    Returns:
        The Extractor.

    Raises:
        ValueError: unknown name (with suggestions), bad feature names, options or weights.
    """
    kwargs = dict(weights=weights, features=features, preprocess=preprocess, device=device, dtype=dtype)
    if name in _BUILDERS:
        return _BUILDERS[name](name=name, **kwargs, **arch_overrides)
    for prefix, builder in _PREFIXES.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            return builder(name=name, arch=name[len(prefix) :], **kwargs, **arch_overrides)
    close = difflib.get_close_matches(name, list(_BUILDERS) + list(_PREFIXES), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown extractor {name!r}.{hint} Available: {', '.join(available())}")
