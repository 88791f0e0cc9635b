"""Frozen backbones behind one interface: registry, preprocessing, views, multi-layer pooling.

Attributes are imported lazily, so `extractors.images` (image decoding) does not pull in torch, timm and open_clip.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

_EXPORTS = {
    "available": "._registry",
    "build": "._registry",
    "build_tail": ".tail",
    "register_extractor": "._registry",
    "Extractor": ".base",
    "ExtractorSpec": ".base",
    "apply_view": ".views",
    "canonical_view": ".views",
    "parse_views": ".views",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'aigi.extractors' has no attribute {name!r}")
    for module in pkgutil.iter_modules(__path__):  # importing them registers their extractors: a new one is one file
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value
