"""Where a run's rows come from: open its caches, plan which feature comes from which cache, load and join the rows,
and split them into training and validation rows. Used by `aigi train`, `aigi eval` and `aigi predict`.

Validation policy: the rows with split == val when the caches have any; otherwise a seeded `data.val_fraction` of
the training pairs (pair_id, or image_id for unpaired rows), so a real and its aligned fakes stay together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

GROUP_COLUMNS = ("source", "domain")



def open_caches(paths: Mapping[str, str]) -> dict[str, Any]:
    """Open every cache of a run: alias -> `cache.Cache`."""
    import cache

    if not paths:
        raise ValueError("the run names no cache: set data.caches in the config or pass --cache PATH")
    return {alias: cache.open(path) for alias, path in paths.items()}


def feature_plan(caches: Mapping[str, Any], inputs: Sequence[str]) -> dict[str, list[str]]:
    """Which features to read from which cache: `alias/name` picks a cache, a bare name must be in exactly one."""
    plan: dict[str, list[str]] = {alias: [] for alias in caches}
    for name in inputs:
        alias, sep, feat = name.partition("/")
        if sep and alias in caches:
            owners = [alias] if feat in caches[alias].features else []
        else:
            feat, owners = name, [a for a, c in caches.items() if name in c.features]
        if len(owners) != 1:
            have = {a: sorted(c.features) for a, c in caches.items()}
            what = "is in no cache" if not owners else f"is in several caches ({owners}); name it ALIAS/{feat}"
            raise ValueError(f"head input {name!r} {what}; the caches hold {have}")
        plan[owners[0]].append(feat)
    return {alias: feats for alias, feats in plan.items() if feats}


def load_rows(caches: Mapping[str, Any], *, inputs: Sequence[str], where: Mapping[str, Any], domains: str = "") -> Any:
    """The rows matching `where` with the head's input features, joined across caches on (image_id, view).

    `domains` (data.domains) names an `aigi domains` table whose domain replaces each row's `domain` by image_id.
    """
    import cache

    plan = feature_plan(caches, inputs)
    sets = {alias: caches[alias].load(feats, where=dict(where)) for alias, feats in plan.items()}
    fs = next(iter(sets.values())) if len(sets) == 1 else cache.join(sets)
    missing = [name for name in inputs if name not in fs.features]
    if missing:
        raise ValueError(
            f"after joining {list(sets)} the features are {sorted(fs.features)}; inputs {missing} are "
            "missing (name them ALIAS/FEATURE when two caches share a name)"
        )
    if domains:
        from pipeline.domains import attach_domains

        fs = attach_domains(fs, domains)
    return fs


def train_val_rows(caches: Mapping[str, Any], data: Any, *, inputs: Sequence[str]) -> tuple[Any, Any, str]:
    """Training and validation FeatureSets of a run, following the validation policy (module docstring).

    Returns:
        (train, val or None, a sentence describing where val came from).
    """
    col = data.split_column
    rows = load_rows(caches, inputs=inputs, where={**data.where, col: [data.train, data.val]}, domains=data.domains)
    split = rows.column(col).astype(str)
    train, val = _checked_train(rows.subset(split == data.train), caches, data), rows.subset(split == data.val)
    if len(val):
        return train, val, _val_how(val, data)
    return _cut_val(train, data)


def val_rows(caches: Mapping[str, Any], data: Any, *, inputs: Sequence[str]) -> tuple[Any, str]:
    """Only the validation rows of a run (as `train_val_rows` picks them), loading the training rows only when the
    validation rows are a seeded share of them.

    Returns:
        (val or None, a sentence describing where val came from).
    """
    col = data.split_column
    val = load_rows(caches, inputs=inputs, where={**data.where, col: data.val}, domains=data.domains)
    if len(val):
        return val, _val_how(val, data)
    train = load_rows(caches, inputs=inputs, where={**data.where, col: data.train}, domains=data.domains)
    _, val, how = _cut_val(_checked_train(train, caches, data), data)
    return val, how


def _val_how(val: Any, data: Any) -> str:
    return f"{len(val)} rows with {data.split_column} == {data.val!r}"


def _checked_train(train: Any, caches: Mapping[str, Any], data: Any) -> Any:
    """`train`, or a ValueError naming the split values present when it has no row."""
    if len(train) == 0:
        col = data.split_column
        first = next(iter(caches.values()))
        present = sorted(first.meta()[col].astype(str).unique().tolist()) if col in first.meta().columns else []
        raise ValueError(
            f"no training rows: no row of {list(caches)} has {col} == {data.train!r} with "
            f"{dict(data.where)} (values present: {present}); assign splits at import/index time"
        )
    return train


def _cut_val(train: Any, data: Any) -> tuple[Any, Any, str]:
    """Cut a seeded `data.val_fraction` of the training pairs off as validation rows (none when it is 0)."""
    import cache

    if data.val_fraction <= 0:
        return train, None, "none (data.val_fraction is 0)"
    ratios = {"train": 1.0 - data.val_fraction, "val": data.val_fraction}
    cut = cache.assign_splits(train.meta, ratios, seed=data.val_seed)["split"].astype(str).to_numpy()
    if not (cut == "val").any() or not (cut == "train").any():
        return train, None, f"none (too few training pairs for a {data.val_fraction:g} validation share)"
    how = (
        f"{int((cut == 'val').sum())} rows: a seeded {data.val_fraction:g} of the training pairs (seed {data.val_seed})"
    )
    return train.subset(cut == "train"), train.subset(cut == "val"), how


def groups_of(fs: Any) -> dict[str, np.ndarray]:
    """Per-row string columns multi-stage heads select rows by."""
    return {c: fs.column(c).astype(str) for c in GROUP_COLUMNS if c in fs.meta.columns}
