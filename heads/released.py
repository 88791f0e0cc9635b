"""Turn released checkpoints into aigi heads: UAR's linear classifier and GAPL's projection + prototypes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from heads._registry import build


def _load_tensor_file(path: str | Path) -> Any:
    import pickle

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; pass the released .pth/.pt file itself")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass the released .pth/.pt file")
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:
        raise ValueError(
            f"{path}: refused, it needs pickled code to load (weights-only loading); pass the released tensor file"
        ) from None
    except Exception as err:  # torch raises several types for a non-torch file
        reason = " ".join(str(err).split())[:160]
        raise ValueError(f"{path} is not a plain torch tensor file ({type(err).__name__}: {reason})") from None


def uar_linear(path: str | Path, *, feature: str = "probe") -> nn.Module:
    """UAR's released classifier (`{"linear.weight": (1, D), "linear.bias": (1,)}`) as a `linear` head.

    Args:
        path: the `.pth` state dict (saved from CUDA; loaded on the CPU with weights_only).
        feature: the input feature name the head reads (AIM-v1 `probe` for UAR).
    """
    state = _load_tensor_file(path)
    if not isinstance(state, dict) or not {"linear.weight", "linear.bias"} <= set(state):
        keys = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path}: expected UAR's state dict with linear.weight and linear.bias, got {keys}")
    weight, bias = state["linear.weight"], state["linear.bias"]
    if weight.ndim != 2 or weight.shape[0] != 1 or bias.shape != (1,):
        raise ValueError(
            f"{path}: linear.weight must be (1, D) and linear.bias (1,), got "
            f"{tuple(weight.shape)} and {tuple(bias.shape)}"
        )
    head = build("linear", inputs=(feature,), in_dim=int(weight.shape[1]))
    head.load_state_dict({"linear.weight": weight.float(), "linear.bias": bias.float()})
    return head.eval()


def _tensor(path: str | Path, shape_hint: str) -> Tensor:
    value = _load_tensor_file(path)
    if not isinstance(value, Tensor) or value.ndim != 2:
        raise ValueError(f"{path}: expected one 2-D tensor ({shape_hint}), got {type(value).__name__}")
    return value.float()


def gapl_prototype(
    stage1_path: str | Path, prototypes_path: str | Path, *, feature: str = "pooler", **cfg: Any
) -> nn.Module:
    """GAPL's released stage-1 projection and prototypes as a `prototype` head ready for stage-2 training.

    GAPL ships the projection (`stage1.pt`, (128, D)) and the prototypes (`pca_*.pt`, (P, 128)) but not the
    attention or classifier weights: those start fresh, and `fit` runs stage 2 only (stage 1 and the PCA are off).

    Args:
        stage1_path: GAPL's `stage1.pt` (`foren_proj` weight).
        prototypes_path: GAPL's `prototype/pca_3type_num64.pt`.
        feature: the input feature name (CLIP ViT-L/14 `pooler`, 1024-d, in GAPL).
        **cfg: other `prototype` config values (e.g. heads).
    """
    proj, protos = _tensor(stage1_path, "(128, D)"), _tensor(prototypes_path, "(P, 128)")
    if protos.shape[1] != proj.shape[0] or protos.shape[0] % 2:
        raise ValueError(
            f"prototypes {tuple(protos.shape)} do not fit the projection {tuple(proj.shape)}: "
            "need (2 * per_class, embed_dim)"
        )
    head = build(
        "prototype",
        inputs=(feature,),
        in_dim=int(proj.shape[1]),
        embed_dim=int(proj.shape[0]),
        per_class=int(protos.shape[0]) // 2,
        train_stage1=False,
        fit_prototypes=False,
        **cfg,
    )
    with torch.no_grad():
        head.proj.weight.copy_(proj)
        head.prototypes.copy_(protos)
    return head.eval()
