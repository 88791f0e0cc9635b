"""Head registry: names -> head classes, and dict -> frozen config conversion that rejects typos."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from aigi.common import typed
from aigi.common.registry import Registry

# Every public module of the package registers its heads when imported (heads/__init__.py imports them all), so a
# new head is one file heads/NAME.py.
HEADS: Registry[type[nn.Module]] = Registry("head")


def register_head(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator adding a head under `name`; the class needs a `cfg_cls` frozen dataclass."""

    def add(cls: type[nn.Module]) -> type[nn.Module]:
        if not dataclasses.is_dataclass(getattr(cls, "cfg_cls", None)):
            raise TypeError(f"head '{name}' ({cls.__qualname__}) needs a dataclass `cfg_cls`")
        HEADS.register(name, cls)
        cls.head_name = name
        return cls

    return add


def available() -> list[str]:
    """Names of every registered head, sorted."""
    return HEADS.names()


def head_class(name: str) -> type[nn.Module]:
    """The class registered as `name`; unknown names raise ValueError with close matches."""
    return HEADS.get(name)


def build(
    name: str,
    *,
    dims: Mapping[str, Any] | None = None,
    seed: int = 0,
    standardize: bool = False,
    frozen: nn.Module | None = None,
    **cfg: Any,
) -> nn.Module:
    """Build head `name` from keyword config values.

    Args:
        name: a registered head name (see `available()`).
        dims: optional feature name -> per-row shape (or width), used to fill `in_dim` / `in_dims` when omitted.
        seed: seeds the parameter initialisation, so equal calls build equal heads.
        standardize: give the head an `input_norm` (per-dimension mean/std of the training rows, set by heads.fit
            and saved with the head); heads.fit/predict/explain standardise inputs with it, so a direct
            `head(x)` call then expects standardised features. Off by default (the seeds' heads use raw features).
        frozen: the frozen backbone tail a `tail_*` head runs (`extractors.build_tail`); other heads take none.
        **cfg: the head's config fields; unknown keys raise ValueError naming close matches.
    """
    cls = head_class(name)
    needs = getattr(cls, "needs_frozen", False)
    if needs and frozen is None:
        raise ValueError(
            f"head '{name}' runs the backbone's last blocks: it needs the frozen tail (extractors.build_tail from the "
            "cache's extractor spec; `aigi train` / `aigi predict` build it from --weights)"
        )
    if frozen is not None and not needs:
        raise ValueError(f"head '{name}' reads cached features only; it takes no frozen backbone tail")
    if needs and standardize:
        raise ValueError(f"head '{name}' reads cached tokens as the backbone's blocks see them; standardize is off")
    values = _fill_dims(cls.cfg_cls, dict(cfg), dims)
    config = make_config(cls.cfg_cls, values, what=f"head '{name}'")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = cls(config, frozen) if needs else cls(config)
    if standardize:
        from aigi.heads._norm import InputNorm, input_widths

        head.input_norm = InputNorm(config.inputs, input_widths(config))
    return head


def make_config(cfg_cls: type, values: Mapping[str, Any], *, what: str = "config") -> Any:
    """Turn a plain dict (YAML/JSON) into the frozen dataclass `cfg_cls` (`aigi.common.typed`: strict keys, values
    converted by the fields' type hints; lists become tuples)."""
    try:
        kwargs = typed.typed_fields(cfg_cls, values, source=what)
    except typed.UnknownKeys as err:
        hints = {k: typed.close_matches(k, err.known, n=2) for k in err.keys}
        hint = "; ".join(f"'{k}' (did you mean {v}?)" if v else f"'{k}'" for k, v in hints.items())
        raise ValueError(f"unknown key(s) for {what}: {hint}. Valid keys: {sorted(err.known)}") from None
    required = [name for name in typed.required_fields(cfg_cls) if name not in kwargs]
    if required:
        raise ValueError(f"{what} needs {required} (e.g. in_dim from the cache's feature width)")
    return cfg_cls(**{k: _freeze(v) for k, v in kwargs.items()})


def _freeze(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, Mapping):
        return {str(k): _freeze(v) for k, v in value.items()}
    return value


def _width(shape: Any) -> int:
    if isinstance(shape, int):
        return shape
    shape = tuple(shape)
    if len(shape) != 1:
        raise ValueError(f"heads take one vector per row; got per-row shape {shape}")
    return int(shape[0])


def _fill_dims(cfg_cls: type, values: dict[str, Any], dims: Mapping[str, Any] | None) -> dict[str, Any]:
    if isinstance(values.get("inputs"), str):
        values["inputs"] = (values["inputs"],)
    if not dims or "inputs" not in values:
        return values
    names = {f.name for f in dataclasses.fields(cfg_cls)}
    missing = [i for i in values["inputs"] if i not in dims]
    if missing:
        raise ValueError(f"input feature(s) {missing} are not in the cache; it has {sorted(dims)}")
    if not ({"in_dim", "in_dims"} & names):
        return values
    widths = [_width(dims[i]) for i in values["inputs"]]
    wanted = {"in_dims": tuple(widths), "in_dim": widths[0] if len(set(widths)) == 1 else None}
    for key in ("in_dim", "in_dims"):
        value = values.get(key) if key in names else None
        found = tuple(value) if isinstance(value, list | tuple) else value
        if value is not None and wanted[key] is not None and found != wanted[key]:
            raise ValueError(
                f"head.{key}={found!r}, but the input feature(s) {list(values['inputs'])} of the cache are "
                f"{wanted[key]!r} wide; leave {key} out (it is filled from the cache)"
            )
    if "in_dims" in names and "in_dims" not in values:
        values["in_dims"] = tuple(widths)
    if "in_dim" in names and "in_dim" not in values:
        if len(set(widths)) != 1:
            raise ValueError(f"inputs {list(values['inputs'])} have different widths {widths}; use one width")
        values["in_dim"] = widths[0]
    return values
