"""`timm:<model>`: any timm model with `forward_intermediates`, plus the per-block pooling shared with CLIP.

Features: `l<i>.cls` (class token leaving block i, 0-based; models with a class token), `l<i>.mean` (mean of the
patch tokens leaving block i, prefix/register tokens excluded; for CNNs the spatial mean of stage i), `l<i>.tokens`
(every token leaving block i, prefix tokens first, [T, D] per row; ViT-like models: the input of the frozen tail
`extractors.build_tail` rebuilds; for timm's EfficientNet-family CNNs such as MobileNetV2 the feature map leaving
single block i as [H * W, C], blocks counted as in `cnn_tokens`) and `pooler` (= `pre_logits`: timm's
`forward_head(..., pre_logits=True)`, the pooled final representation).
Weights come from a local file only (timm, OpenAI/open_clip CLIP formats are converted by timm's own filters;
torchvision's MobileNetV2 and ResNet state dicts by `layouts`).
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aigi.common.device import resolve_device
from aigi.common.files import sha256_file

from ._registry import register_extractor
from .base import Extractor, ExtractorSpec, parse_layer_feature, resolve_dtype
from .cnn_tokens import TokenCapture, cnn_token_blocks, cnn_token_shapes, run_cnn_blocks
from .layouts import to_timm_layout
from .preprocess import policy_fields, resolve_policy
from .weights import read_state_dict

RANDOM_INIT = "random-init"
_FINAL_FEATURES = ("pooler", "pre_logits", "proj")


def plan_blocks(
    features: list[str],
    *,
    n_layers: int,
    pools: tuple[str, ...],
    extra: tuple[str, ...],
    token_layers: int | None = None,
) -> list[int]:
    """Sorted block indices the features need; validates every name.

    Args:
        features: requested names.
        n_layers: number of indexable blocks/stages.
        pools: per-block pools this backbone offers ("cls", "mean").
        extra: other feature names it offers ("pooler", "proj", "probe", ...).
        token_layers: when set, `l<i>.tokens` counts blocks on their own scale, i in 0..token_layers-1 (CNNs).

    Raises:
        ValueError: an unknown name or a block out of range, naming the valid choices.
    """
    if not features:
        raise ValueError("no feature requested")
    if len(set(features)) != len(features):
        raise ValueError(f"features repeated in {features}")
    blocks = set()
    for name in features:
        parsed = parse_layer_feature(name)
        if parsed is None and name in extra:
            continue
        if parsed and parsed[1] == "tokens" and token_layers is not None:
            if parsed[0] >= token_layers:
                raise ValueError(f"unknown feature {name!r}: l<i>.tokens has i in 0..{token_layers - 1} (0 = stem)")
            continue
        if parsed is None or parsed[1] not in pools or parsed[0] >= n_layers:
            choices = [f"l<i>.{p}" for p in pools] + list(extra)
            raise ValueError(f"unknown feature {name!r}; choose from {', '.join(choices)} with i in 0..{n_layers - 1}")
        blocks.add(parsed[0])
    return sorted(blocks)


@contextlib.contextmanager
def seeded(seed: int = 0):
    """Run a block with torch's global RNG seeded, restoring the previous state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class BlockFeatures(nn.Module):
    """Computes `l<i>.cls/mean`, `pooler` and (with a projection) `proj` from one timm forward.

    Args:
        model: a timm model with forward_intermediates.
        features: requested names (validated by plan_blocks).
        proj: optional module mapping the pooler to `proj` (CLIP's projection).
    """

    def __init__(self, model: nn.Module, features: list[str], proj: nn.Module | None = None) -> None:
        super().__init__()
        self.model, self.proj, self.features = model, proj, list(features)
        params = inspect.signature(model.forward_intermediates).parameters
        self.tokens = "return_prefix_tokens" in params  # ViT-like: NLC tokens with separate prefix tokens
        parsed = [p for p in map(parse_layer_feature, features) if p]
        cnn = not self.tokens and cnn_token_blocks(model) is not None
        self.cnn_tokens = sorted({i for i, pool in parsed if pool == "tokens" and cnn})  # single blocks, by hooks
        self.capture = TokenCapture(model, self.cnn_tokens) if self.cnn_tokens else None
        self.blocks = sorted({i for i, pool in parsed if not (pool == "tokens" and cnn)})
        self.need_final = any(f in _FINAL_FEATURES for f in features)
        self.run_all = self.need_final or bool(self.cnn_tokens and self.blocks)  # stage features beside the hooks
        self.stop_early = "stop_early" in params
        if self.blocks and not self.run_all and hasattr(model, "prune_intermediate_layers"):
            model.prune_intermediate_layers(self.blocks, prune_norm=True, prune_head=True)  # drop unused blocks

    def _intermediates(self, x: torch.Tensor) -> tuple[torch.Tensor | None, list[Any]]:
        if self.cnn_tokens and not self.run_all:  # CNN tokens alone: stop after the last block asked for
            run_cnn_blocks(self.model, x, max(self.cnn_tokens))
            return None, []
        if not self.blocks:
            return self.model.forward_features(x), []
        kw: dict[str, Any] = {"indices": self.blocks}
        if self.tokens:
            kw.update(output_fmt="NLC", return_prefix_tokens=True, norm=False)
        if self.run_all:
            return self.model.forward_intermediates(x, **kw)
        if self.stop_early:
            kw["stop_early"] = True
        return None, self.model.forward_intermediates(x, intermediates_only=True, **kw)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        final, inter = self._intermediates(x)
        by_block = dict(zip(self.blocks, inter))
        out: dict[str, torch.Tensor] = {}
        for name in self.features:
            parsed = parse_layer_feature(name)
            if parsed and parsed[0] in self.cnn_tokens and parsed[1] == "tokens":
                out[name] = self.capture.take(parsed[0])
            elif parsed:
                out[name] = self._pool(by_block[parsed[0]], parsed[1])
        if self.need_final:
            pooled = self.model.forward_head(final, pre_logits=True)
            out["pooler"] = out["pre_logits"] = pooled
            if self.proj is not None:
                out["proj"] = self.proj(pooled)
        return out

    def _pool(self, item: Any, pool: str) -> torch.Tensor:
        if not self.tokens:  # CNN stage output [B, C, H, W]
            return item.mean(dim=(2, 3))
        patches, prefix = item if isinstance(item, tuple) else (item, None)
        if pool == "tokens":  # the whole sequence as the blocks see it: prefix tokens, then patches
            return patches if prefix is None else torch.cat([prefix, patches], dim=1)
        return prefix[:, 0] if pool == "cls" else patches.mean(dim=1)


def timm_layer_info(model: nn.Module) -> tuple[int, list[int], tuple[str, ...]]:
    """(number of indexable blocks, their widths, pools offered) of a timm model."""
    info = list(getattr(model, "feature_info", []))
    if isinstance(info, list) and info and isinstance(info[0], dict):
        widths = [int(i["num_chs"]) for i in info]
    else:
        widths = list(model.feature_info.channels())
    params = inspect.signature(model.forward_intermediates).parameters
    vit_like = "return_prefix_tokens" in params
    has_cls = vit_like and getattr(model, "has_class_token", False)
    pools = ("cls", "mean") if has_cls else ("mean",)
    return len(widths), widths, pools + (("tokens",) if vit_like and token_count(model) else ())


def token_count(model: nn.Module) -> int | None:
    """Tokens a ViT-like timm model's blocks see (prefix + patches), None when it has no fixed count."""
    patches = getattr(getattr(model, "patch_embed", None), "num_patches", None)
    return None if patches is None else int(patches) + int(getattr(model, "num_prefix_tokens", 0))


def feature_dims(
    features: list[str],
    widths: list[int],
    others: dict[str, int],
    tokens: int | None = None,
    token_shapes: list[tuple[int, int]] | None = None,
) -> tuple[tuple[int, ...], ...]:
    """Per-row shape of each feature: block width for `l<i>.cls/mean`, (tokens, width) for `l<i>.tokens` (or
    `token_shapes[i]` when given: CNN blocks), `others[name]` for the rest."""
    out = []
    for f in features:
        p = parse_layer_feature(f)
        if p is None:
            out.append((others[f],))
        elif p[1] == "tokens" and token_shapes is not None:
            out.append(tuple(token_shapes[p[0]]))
        else:
            out.append((int(tokens), widths[p[0]]) if p[1] == "tokens" else (widths[p[0]],))
    return tuple(out)


def load_timm_weights(model: nn.Module, path: str | Path, *, drop_prefixes: tuple[str, ...] = ()) -> str:
    """Load a local checkpoint into a timm model through the model module's own checkpoint filter.

    Args:
        model: the timm model.
        path: weights file (timm, a layout `layouts.to_timm_layout` renames, e.g. torchvision's, or any format the
            model's `checkpoint_filter_fn` converts).
        drop_prefixes: key prefixes to ignore (e.g. the classifier of a headless model).

    Returns:
        The file's sha256.

    Raises:
        ValueError: missing or unexpected parameters (first few listed).
    """
    state = to_timm_layout(read_state_dict(path), model)
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, model)
    state = {k: v for k, v in state.items() if not k.startswith(drop_prefixes)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not fit {type(model).__name__}: missing {missing[:5]} ({len(missing)} in all), "
            f"unexpected {unexpected[:5]} ({len(unexpected)} in all). Is it the right file for this model?"
        )
    return sha256_file(path)


def classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    names = model.pretrained_cfg.get("classifier", "head")
    names = names if isinstance(names, (list, tuple)) else [names]
    return tuple(f"{n}." for n in names)


def create_timm(arch: str, overrides: dict[str, Any]) -> nn.Module:
    import timm

    if arch not in timm.list_models():
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        raise ValueError(f"unknown timm model {arch!r}.{' Did you mean ' + ', '.join(close) + '?' if close else ''}")
    with seeded(0):
        model = timm.create_model(arch, pretrained=False, num_classes=0, **overrides)
    if not hasattr(model, "forward_intermediates"):
        raise ValueError(f"timm model {arch!r} has no forward_intermediates; pick another model")
    return model


@register_extractor("timm:", prefix=True)
def build_timm(
    *,
    name: str,
    arch: str,
    weights: str | Path | None,
    features: list[str] | None,
    preprocess: str | None,
    device: str,
    dtype: str,
    **overrides: Any,
) -> Extractor:
    """Any timm model: default feature `pooler`, default preprocessing `center_crop` with the model's mean/std."""
    from timm.data import resolve_model_data_config

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    model = create_timm(arch, overrides)
    sha = load_timm_weights(model, weights, drop_prefixes=classifier_prefixes(model)) if weights else RANDOM_INIT
    n_layers, widths, pools = timm_layer_info(model)
    features = list(features or ["pooler"])
    cfg = resolve_model_data_config(model)
    size = int(cfg["input_size"][-1])
    cnn_blocks = cnn_token_blocks(model) if "tokens" not in pools else None
    layers = None if cnn_blocks is None else len(cnn_blocks)
    pools = pools if cnn_blocks is None else pools + ("tokens",)
    plan_blocks(features, n_layers=n_layers, pools=pools, extra=("pooler", "pre_logits"), token_layers=layers)
    policy = resolve_policy(preprocess, default="center_crop", size=size, norm=(cfg["mean"], cfg["std"]))
    wants_tokens = any(f.endswith(".tokens") for f in features)
    token_shapes = cnn_token_shapes(model, policy.kwargs["size"]) if cnn_blocks and wants_tokens else None
    pooled = int(getattr(model, "head_hidden_size", model.num_features))
    spec = ExtractorSpec(
        name=name,
        arch=arch,
        arch_params=tuple(sorted(overrides.items())),
        weights_sha256=sha,
        **policy_fields(policy),
        features=tuple(features),
        dims=feature_dims(features, widths, {"pooler": pooled, "pre_logits": pooled}, token_count(model), token_shapes),
        dtype=dt,
    )
    forward = BlockFeatures(model, features)
    return Extractor(spec=spec, model=forward, transform=policy.transform(), forward=forward, device=dev)
