"""LoRA at a CNN's pointwise convs: training a tail head from the stem's output (every block adapted) equals LoRA
fine-tuning of the whole MobileNetV2 on the images, the LoRA merged into the conv weights by
torch.nn.utils.parametrize (an independent implementation of the same update)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from aigi import heads
from aigi.extractors.tail import CnnTail
from tests.heads.test_tail import whole_model_losses


def _mobilenet() -> nn.Module:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=0).eval()
    with torch.no_grad():  # BatchNorms away from identity so the test sees them
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.5, 1.5)
    return model.requires_grad_(False)


class MergedConvLora(nn.Module):
    """A 1x1 conv weight [out, in, 1, 1] + s * B A."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.A, self.B, self.scale = nn.Parameter(a.clone()), nn.Parameter(b.clone()), scale

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + self.scale * (self.B @ self.A)[:, :, None, None]


def _reference_lora(model: nn.Module, head: nn.Module) -> list[nn.Parameter]:
    """Parametrize the whole model's pointwise convs with the head's initial adapters; returns their parameters."""
    flat = [blk for stage in model.blocks for blk in stage]
    params = []
    for key, pair in head.lora.experts[0].items():
        block, target = key[1:].split("_", 1)
        blk = flat[int(block) - 1]
        path = ("conv_pwl" if hasattr(blk, "conv_pwl") else "conv_pw") if target == "pw_project" else "conv_pw"
        merged = MergedConvLora(pair.A.detach(), pair.B.detach(), head.lora.scale)
        parametrize.register_parametrization(blk.get_submodule(path), "weight", merged)
        params += [merged.A, merged.B]
    return params


def test_whole_backbone_tail_equals_lora_finetuning_of_the_cnn() -> None:
    model = _mobilenet()
    torch.manual_seed(1)
    x, y = torch.rand(16, 3, 32, 32), np.array([0, 1] * 8)
    x[y == 1] += 0.2 * torch.randn(1, 3, 32, 32)  # a learnable difference
    with torch.no_grad():
        tokens = model.bn1(model.conv_stem(x)).flatten(2).transpose(1, 2).numpy()  # l0.tokens: the stem's map
    tail = CnnTail(_mobilenet(), 1)
    head = heads.build("tail_lora", frozen=tail, inputs=["l0.tokens"], targets=["pw"], rank=2, alpha=4.0)
    params = _reference_lora(model, head)
    assert len(params) == 2 * 33  # block 1: projection only; blocks 2..17: expansion and projection
    classifier = nn.Linear(1280, 1)
    classifier.load_state_dict(head.classifier.state_dict())
    cfg = heads.FitConfig(epochs=3, batch_size=8, lr=3e-3, seed=3)
    history = heads.fit(head, {"l0.tokens": tokens}, y, cfg=cfg)
    losses = whole_model_losses(model, classifier, params, x, y, cfg)
    got = [e["loss"] for e in history["stages"][0]["epochs"]]
    assert max(abs(a - b) for a, b in zip(got, losses)) <= 1e-4, (got, losses)
    assert losses[-1] < losses[0] - 1e-3  # it trained
    assert head.lora.experts[0]["b17_pw_expand"].B.abs().max() > 0  # the adapters moved off zero


def test_a_conv_adapter_adds_b_a_over_channels_at_every_pixel() -> None:
    tail = CnnTail(_mobilenet(), 16)
    head = heads.build("tail_lora", frozen=tail, inputs=["l15.tokens"], targets=["pw_project"], rank=3)
    conv = tail.blocks[0].conv_pwl  # block 16's projection 960 -> 160
    pair = head.lora.experts[0]["b16_pw_project"]
    torch.manual_seed(2)
    with torch.no_grad():
        pair.B.normal_()
    seen = {}
    hook = conv.register_forward_hook(lambda m, i, o: seen.update(x=i[0], y=o))
    with torch.no_grad():
        head.run_tail(torch.randn(2, 49, 160), 0)
    hook.remove()
    x = seen["x"]
    want = F.conv2d(x, conv.weight) + head.lora.scale * torch.einsum("or,ri,nihw->nohw", pair.B, pair.A, x)
    torch.testing.assert_close(seen["y"], want, rtol=1e-4, atol=1e-4)
