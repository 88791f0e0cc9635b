"""Frozen backbones behind one interface: registry, preprocessing, views, multi-layer pooling."""

from __future__ import annotations

from . import aim, clip, timm_backbone  # noqa: F401  (register their extractors)
from ._registry import available, build, register_extractor
from .base import Extractor, ExtractorSpec
from .views import apply_view, canonical_view, parse_views

__all__ = [
    "Extractor",
    "ExtractorSpec",
    "apply_view",
    "available",
    "build",
    "canonical_view",
    "parse_views",
    "register_extractor",
]
