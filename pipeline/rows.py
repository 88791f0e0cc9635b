"""Where a run's rows come from: open its caches, plan which feature comes from which cache, load and join the rows,
and split them into training and validation rows; the run config and cache fingerprints a head recorded. Used by
`aigi train`, `aigi eval`, `aigi calibrate`, `aigi robustness` and `aigi predict`.

Validation policy: the rows with split == val when the caches have any; otherwise a seeded `data.val_fraction` of
the training pairs (pair_id, or image_id for unpaired rows), so a real and its aligned fakes stay together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

GROUP_COLUMNS = ("source", "domain")


def open_caches(paths: Mapping[str, str]) -> dict[str, Any]:
    """Open every cache of a run: alias -> `cache.Cache`."""
    from aigi import cache
    from aigi.pipeline import streaming

    if not paths:
        raise ValueError("the run names no cache: set data.caches in the config or pass --cache PATH")
    if streaming.REUSE:  # an ablation worker: the caches its previous runs opened, while unchanged
        return {alias: streaming.reuse_cache(path, cache.open) for alias, path in paths.items()}
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


def hold_choice(caches: Mapping[str, Any], data: Any, *, inputs: Sequence[str], where: Mapping[str, Any]) -> Any:
    """How to hold the rows matching `where` (`pipeline.streaming.choose` with data.stream / data.memory_budget):
    in memory as float32 or float16, or streamed (several caches are joined while streaming when they store one
    dtype; caches of different dtypes are joined in memory)."""
    from aigi.cache.featureset import where_mask
    from aigi.pipeline.streaming import Choice, choose, parse_budget, row_values

    plan = feature_plan(caches, inputs)
    first = caches[next(iter(plan))]
    rows = int(np.count_nonzero(where_mask(first.meta(), dict(where)))) if where else len(first)
    dims = {f"{a}/{f}": caches[a].features[f] for a, feats in plan.items() for f in feats}
    stored = "float16" if all(caches[a].dtype == "float16" for a in plan) else "float32"
    budget = parse_budget(getattr(data, "memory_budget", None))
    choice = choose(rows=rows, row_values=row_values(dims), stored=stored, stream=data.stream, budget=budget)
    kinds = {a: str(caches[a].dtype) for a in plan}
    if choice.mode == "stream" and len(set(kinds.values())) > 1:
        if data.stream is True:
            raise ValueError(
                f"data.stream: true joins caches of one stored dtype while streaming, these store {kinds}; "
                "re-extract one of them in the other's dtype, or set data.stream: auto"
            )
        return Choice("float32", f"in memory as float32 (the joined caches store {kinds}; {choice.why})", budget)
    return choice


def load_rows(
    caches: Mapping[str, Any],
    *,
    inputs: Sequence[str],
    where: Mapping[str, Any],
    domains: str = "",
    hold: Any = None,
) -> Any:
    """The rows matching `where` with the head's input features, joined across caches on (image_id, view).

    `domains` (data.domains) names an `aigi domains` table whose domain replaces each row's `domain` by image_id.
    `hold` (a `hold_choice`) keeps them in memory as float32 (default) or float16, or streams them from the cache
    (a `pipeline.streaming.StreamedSet`). Inside an ablation worker the rows of one selection are loaded once
    (`pipeline.streaming.reuse_rows`). The choice's sentence is kept as the set's `held` attribute.
    """
    from aigi.pipeline import streaming

    mode = "float32" if hold is None else hold.mode
    load = lambda: _load(caches, inputs=inputs, where=where, domains=domains, hold=hold)  # noqa: E731
    if streaming.REUSE and mode != "stream":
        key = (streaming.cache_key(caches), tuple(inputs), repr(sorted(dict(where).items())), domains, mode)
        fs = streaming.reuse_rows(key, load)
    else:
        fs = load()
    fs.held = "" if hold is None else hold.why
    return fs


def _load(caches: Mapping[str, Any], *, inputs: Sequence[str], where: Mapping[str, Any], domains: str, hold: Any):
    from aigi import cache

    plan = feature_plan(caches, inputs)
    if hold is not None and hold.mode == "stream":
        from aigi.cache.stream import join_streams, open_stream, stream_buffer
        from aigi.pipeline.streaming import StreamedSet

        size = stream_buffer(hold.budget)
        streams = {a: open_stream(caches[a], feats, dict(where), buffer_bytes=size) for a, feats in plan.items()}
        fs = StreamedSet(join_streams(streams))
    else:
        dtype = "float32" if hold is None else hold.mode
        sets = {alias: caches[alias].load(feats, where=dict(where), dtype=dtype) for alias, feats in plan.items()}
        fs = next(iter(sets.values())) if len(sets) == 1 else cache.join(sets)
    missing = [name for name in inputs if name not in fs.dims]
    if missing:
        raise ValueError(
            f"after joining {list(plan)} the features are {sorted(fs.dims)}; inputs {missing} are "
            "missing (name them ALIAS/FEATURE when two caches share a name)"
        )
    if domains:
        from aigi.pipeline.domains import attach_domains

        fs = attach_domains(fs, domains)
    return fs


def train_val_rows(caches: Mapping[str, Any], data: Any, *, inputs: Sequence[str]) -> tuple[Any, Any, str]:
    """Training and validation FeatureSets of a run, following the validation policy (module docstring).

    Returns:
        (train, val or None, a sentence describing where val came from).
    """
    col = data.split_column
    where = {**data.where, col: [data.train, data.val]}
    hold = hold_choice(caches, data, inputs=inputs, where=where)
    rows = load_rows(caches, inputs=inputs, where=where, domains=data.domains, hold=hold)
    split = _strings(rows, col)
    train, val = _checked_train(rows.subset(split == data.train), caches, data), rows.subset(split == data.val)
    out = (train, val, _val_how(val, data)) if len(val) else _cut_val(train, data)
    for part in out[:2]:
        if part is not None:
            part.held = rows.held
    return out


def val_rows(caches: Mapping[str, Any], data: Any, *, inputs: Sequence[str]) -> tuple[Any, str]:
    """Only the validation rows of a run (as `train_val_rows` picks them), loading the training rows only when the
    validation rows are a seeded share of them.

    Returns:
        (val or None, a sentence describing where val came from).
    """
    col = data.split_column
    where = {**data.where, col: data.val}
    val = load_rows(
        caches,
        inputs=inputs,
        where=where,
        domains=data.domains,
        hold=hold_choice(caches, data, inputs=inputs, where=where),
    )
    if len(val):
        return val, _val_how(val, data)
    where = {**data.where, col: data.train}
    hold = hold_choice(caches, data, inputs=inputs, where=where)
    train = load_rows(caches, inputs=inputs, where=where, domains=data.domains, hold=hold)
    _, val, how = _cut_val(_checked_train(train, caches, data), data)
    return val, how


def _val_how(val: Any, data: Any) -> str:
    return f"{len(val)} rows with {data.split_column} == {data.val!r}"


def _checked_train(train: Any, caches: Mapping[str, Any], data: Any) -> Any:
    """`train`, or a ValueError naming the split values present when it has no row."""
    if len(train) == 0:
        check_where(caches, data.where)
        col = data.split_column
        first = next(iter(caches.values()))
        present = sorted(first.meta()[col].astype(str).unique().tolist()) if col in first.meta().columns else []
        raise ValueError(
            f"no training rows: no row of {list(caches)} has {col} == {data.train!r} with "
            f"{dict(data.where)} (values present: {present}); assign splits at import/index time"
        )
    return train


def check_where(caches: Mapping[str, Any], where: Mapping[str, Any], *, flag: str = "") -> None:
    """A ValueError naming the `data.where` value that matches no row, with the values its column holds."""
    for col, wanted in where.items():
        present = sorted({str(v) for c in caches.values() for v in c.meta().get(col, [])})
        values = [str(v) for v in (wanted if isinstance(wanted, list | tuple) else [wanted])]
        if not set(values) & set(present):
            how = f"{flag} {col}=VALUE" if flag else f"--set data.where.{col}=VALUE"
            raise ValueError(
                f"data.where.{col} = {wanted!r} matches no row: the values of {col!r} present are {present[:20]}; "
                f"pick one of them ({how})"
            )


def _cut_val(train: Any, data: Any) -> tuple[Any, Any, str]:
    """Cut a seeded `data.val_fraction` of the training pairs off as validation rows (none when it is 0)."""
    from aigi import cache

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
    """Per-row string columns multi-stage heads select rows by (numpy unicode arrays)."""
    return {c: _strings(fs, c) for c in GROUP_COLUMNS if c in fs.meta.columns}


def _strings(fs: Any, column: str) -> np.ndarray:
    """`fs.column(column).astype(str)`, converting each distinct value once (2 M rows: 0.03 s instead of 0.13 s)."""
    import pandas as pd

    col = fs.meta[column]
    if col.dtype == "string":
        codes, uniques = pd.factorize(col)
        if len(codes) and codes.min() >= 0:  # a missing value (code -1) takes the slow way, which spells it "<NA>"
            return np.asarray(uniques, dtype=object).astype(str)[codes]
    return fs.column(column).astype(str)


def check_fingerprints(info: Mapping[str, Any], caches: Mapping[str, Any], *, run_dir: Path) -> list[str]:
    """Refuse caches whose fingerprint differs from the one the head was trained on; return warnings.

    Raises:
        ValueError: naming both fingerprints, both paths and the differing extractor spec fields.
    """
    recorded = info.get("fingerprints") or {}
    if not recorded:
        return [f"{run_dir}/head.json records no cache fingerprint: the cache cannot be checked against the head"]
    warnings = []
    for alias, c in caches.items():
        want = recorded.get(alias)
        if want is None and len(recorded) == 1 and len(caches) == 1:
            alias_rec, want = next(iter(recorded.items()))
        else:
            alias_rec = alias
        if want is None:
            warnings.append(f"cache alias {alias!r} is not recorded in {run_dir}/head.json; not checked")
            continue
        if c.fingerprint != want:
            from aigi import cache

            spec = (info.get("extractor_spec") or {}).get(alias_rec)
            diff = "; ".join(cache.spec_diff(spec, c.spec)) if spec is not None else ""
            trained = ((info.get("caches") or {}).get(alias_rec) or {}).get("path", "?")
            raise ValueError(
                f"cache {c.path} has fingerprint {c.fingerprint[:16]}… but head {run_dir} was trained on {trained} "
                f"with fingerprint {want[:16]}…; differing spec fields (trained -> given): {diff or 'unknown'}. "
                "Extract the features with the head's extractor spec, or train a head on this cache"
            )
    return warnings


def run_config(run_dir: Path, info: Mapping[str, Any]) -> Any:
    """The run config a head was trained with: head.json's copy, else RUN_DIR/config.yaml, else head and inputs."""
    from aigi.pipeline.config import load_config, parse_config

    if info.get("run_config"):
        return parse_config(info["run_config"], source=f"{run_dir}/head.json")
    if (run_dir / "config.yaml").is_file():
        return load_config(run_dir / "config.yaml")
    return parse_config({"head": {"name": info["name"], "inputs": info["inputs"]}}, source=f"{run_dir}/head.json")
