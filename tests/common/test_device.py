"""The one device rule: auto follows CUDA's availability, a missing CUDA device is a one-line error."""

from __future__ import annotations

import pytest
import torch

from aigi.common.device import resolve_device


def test_auto_and_explicit_devices() -> None:
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_names_the_fix() -> None:
    with pytest.raises(ValueError, match="--device cpu"):
        resolve_device("cuda:0")
