"""Name -> extractor builder registry, with errors that suggest close matches."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from aigi.common.registry import Registry

from .base import Extractor
from .weights import resolve_weights

Builder = Callable[..., Extractor]
# The modules of the package register their builders when imported (`extractors.__getattr__` imports them all), so a
# new backbone is one file extractors/NAME.py. A family (`timm:`) builds every name that starts with it.
EXTRACTORS: Registry[Builder] = Registry("extractor", family_label="<model name>")


def register_extractor(name: str, *, prefix: bool = False) -> Callable[[Builder], Builder]:
    """Register a builder under `name` (or, with prefix=True, every name starting with `name`)."""
    return EXTRACTORS.register(name, family=prefix)


def available() -> list[str]:
    """Registered names; prefix families are shown as e.g. "timm:<model name>"."""
    return EXTRACTORS.names()


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
        weights: local weights file (AIM-v1: backbone and head files joined by a comma, or their folder), or a
            name `weights.resolve_weights` resolves (`hf-hub:...`, an alias such as `openai`). None builds random
            weights (tests, benchmarks).
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
    weights = resolve_weights(weights, backbone=name)  # a name -> local files; a local path stays as it is
    kwargs = dict(weights=weights, features=features, preprocess=preprocess, device=device, dtype=dtype)
    found = EXTRACTORS.find(name)
    if found is None:
        raise EXTRACTORS.unknown(name)
    builder, arch = found
    if arch is None:
        return builder(name=name, **kwargs, **arch_overrides)
    return builder(name=name, arch=arch, **kwargs, **arch_overrides)
