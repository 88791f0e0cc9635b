"""Frozen backbone tails for the `tail_*` heads, built from the extractor spec a cache or a head records and the
weights file the user names (the same one `aigi extract` used: its sha256 is checked)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aigi.common.grammar import parse_aliased


def token_input(inputs: Sequence[str], specs: Mapping[str, Mapping[str, Any]]) -> tuple[str, str]:
    """(backbone alias, feature) of a tail head's one input `l<i>.tokens` (or `ALIAS/l<i>.tokens`)."""
    if len(inputs) != 1:
        raise ValueError(f"a tail head reads one token feature 'l<i>.tokens'; got inputs {list(inputs)}")
    name = inputs[0]
    alias, sep, feat = name.partition("/")
    if sep and alias in specs:
        return alias, feat
    owners = [a for a, s in specs.items() if name in tuple(s.get("features", ()))]
    if len(owners) != 1:
        have = {a: list(s.get("features", ())) for a, s in specs.items()}
        raise ValueError(f"head input {name!r} is in {owners or 'no'} cache(s); they hold {have}")
    return owners[0], name


def frozen_tail(
    head_name: str,
    inputs: Sequence[str],
    specs: Mapping[str, Mapping[str, Any]],
    weights: Mapping[str, str | None],
    *,
    device: str = "cpu",
) -> Any:
    """The frozen tail a `tail_*` head runs (None for every other head).

    Args:
        head_name: the head's registry name.
        inputs: its inputs.
        specs: backbone alias -> the extractor spec its cache recorded.
        weights: backbone alias -> the weights file passed by the user.
        device: where the tail lives.

    Raises:
        ValueError: no weights given for a backbone that was not random-init, or weights that differ from the cache's.
    """
    from aigi import extractors, heads

    if not heads.needs_frozen(head_name):
        return None
    alias, feature = token_input(inputs, specs)
    spec = specs[alias]
    path = weights.get(alias)
    if path is None and spec.get("weights_sha256") != "random-init":
        raise ValueError(
            f"head '{head_name}' re-runs the last blocks of backbone {spec.get('name')!r}: pass --weights with the "
            "weights file the cache was extracted with"
        )
    return extractors.build_tail(dict(spec), weights=path, feature=feature, device=device)


def load_head(run_dir: str | Path, weights: Sequence[str] = (), *, device: str = "cpu") -> tuple[Any, dict]:
    """`heads.load` of a run, with the frozen tail a `tail_*` head needs (from its recorded spec and `weights`)."""
    from aigi import heads

    info = heads.read_info(run_dir)
    specs = info.get("extractor_spec") or {}
    frozen = None
    if heads.needs_frozen(info["name"]):
        by_alias = parse_aliased(list(weights), list(specs))
        frozen = frozen_tail(info["name"], info["inputs"], specs, by_alias, device=device)
    return heads.load(run_dir, frozen=frozen)
