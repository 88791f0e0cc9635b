"""Turn released checkpoints into aigi heads: any linear probe (UnivFD, UAR, ...) and GAPL's projection + prototypes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from aigi.common.files import asks_to_run_code
from aigi.heads._registry import build


def _load_tensor_file(path: str | Path) -> Any:
    import pickle

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; pass the released .pth/.pt file itself")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass the released .pth/.pt file")
    try:
        value = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        if not asks_to_run_code(err):
            raise ValueError(
                f"{path} is not a torch tensor file (damaged, or another format); pass the released file"
            ) from None
        raise ValueError(
            f"{path}: refused, it needs pickled code to load (weights-only loading); pass the released tensor file"
        ) from None
    except Exception as err:  # torch raises several types for a non-torch file
        reason = " ".join(str(err).split())[:160]
        raise ValueError(f"{path} is not a plain torch tensor file ({type(err).__name__}: {reason})") from None
    _refuse_sparse(value, path)
    return value


def _refuse_sparse(value: Any, path: str | Path, depth: int = 0) -> None:
    """Refuse sparse (or other non-strided) tensors anywhere in a loaded file: heads hold dense weights."""
    if isinstance(value, Tensor) and value.layout != torch.strided:
        raise ValueError(f"{path} holds {value.layout} tensors; save dense ones (tensor.to_dense())")
    if isinstance(value, dict) and depth < 4:
        for item in value.values():
            _refuse_sparse(item, path, depth + 1)


_PROBE_PREFIXES = ("", "linear.", "fc.")
_WRAPPERS = ("state_dict", "model")


def _probe_state(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a probe file (.pth / .pt / .bin / .safetensors), unwrapped from a training checkpoint."""
    if Path(path).suffix == ".safetensors":
        from safetensors.torch import load_file

        if not Path(path).is_file():
            raise FileNotFoundError(f"{path} does not exist")
        state: Any = load_file(str(path), device="cpu")
    else:
        state = _load_tensor_file(path)
    while isinstance(state, dict) and not any(isinstance(v, Tensor) for v in state.values()):
        inner = next((state[k] for k in _WRAPPERS if isinstance(state.get(k), dict)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict of a linear layer, got {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, Tensor)}


def _find_probe(state: dict[str, Tensor], path: str | Path, prefixes: tuple[str, ...]) -> tuple[Tensor, Tensor]:
    found = [p for p in prefixes if f"{p}weight" in state]
    names = [f"{p}weight" for p in prefixes]
    if not found:
        raise ValueError(f"{path}: no linear probe ({' / '.join(names)} with its bias) among {sorted(state)[:8]}")
    if len(found) > 1:
        raise ValueError(f"{path}: several linear layers {[f'{p}weight' for p in found]}; keep only the probe's")
    prefix = found[0]
    weight = state[f"{prefix}weight"]
    bias = state.get(f"{prefix}bias", torch.zeros(weight.shape[0] if weight.ndim else 0, dtype=weight.dtype))
    extra = sorted(set(state) - {f"{prefix}weight", f"{prefix}bias"})
    if extra:
        raise ValueError(f"{path}: holds more than a linear probe ({extra[:6]}); pass a file with the probe alone")
    if weight.ndim != 2 or weight.shape[0] not in (1, 2) or tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(
            f"{path}: a probe's weight must have 1 or 2 rows (K, D) and its bias (K,); got "
            f"{tuple(weight.shape)} and {tuple(bias.shape)}"
        )
    return weight, bias


def linear_probe(
    path: str | Path, *, feature: str, fake_class: int = 1, prefixes: tuple[str, ...] = _PROBE_PREFIXES
) -> nn.Module:
    """A released linear probe as a `linear` head on `feature`, scoring `x @ w.T + b`.

    Layouts: `weight` / `bias` (UnivFD's `fc_weights.pth`, a bare `nn.Linear` state dict), `linear.*` (UAR),
    `fc.*`, optionally under "state_dict" / "model" and a "module." prefix, in .pth or .safetensors. A one-row
    weight is the fake logit as is; a two-row (2-class softmax) head becomes its logit difference
    `(w_fake - w_real) x + (b_fake - b_real)`, whose sigmoid is the softmax's P(fake).

    Args:
        path: the probe file (read with weights_only; never executes code).
        feature: the feature the probe was trained on (e.g. `proj` for UnivFD, `probe` for UAR); the head refuses
            inputs of another name or width.
        fake_class: the row of a two-row head that scores "fake".
        prefixes: the key prefixes to look for.
    """
    if fake_class not in (0, 1):
        raise ValueError(f"fake_class must be 0 or 1, got {fake_class}")
    weight, bias = _find_probe(_probe_state(path), path, prefixes)
    if weight.shape[0] == 2:
        weight = (weight[fake_class] - weight[1 - fake_class]).unsqueeze(0)
        bias = (bias[fake_class] - bias[1 - fake_class]).unsqueeze(0)
    head = build("linear", inputs=(feature,), in_dim=int(weight.shape[1]))
    head.load_state_dict({"linear.weight": weight.float(), "linear.bias": bias.float()})
    return head.eval()


def uar_linear(path: str | Path, *, feature: str = "probe") -> nn.Module:
    """UAR's released classifier (`{"linear.weight": (1, D), "linear.bias": (1,)}`) as a `linear` head.

    Args:
        path: the `.pth` state dict (saved from CUDA; loaded on the CPU with weights_only).
        feature: the input feature name the head reads (AIM-v1 `probe` for UAR).
    """
    return linear_probe(path, feature=feature, prefixes=("linear.",))


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
