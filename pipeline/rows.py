"""A run's rows: open its caches, choose how to hold the rows (memory budget, `data.stream`), load and join them,
split them into training and validation rows; the run config and cache fingerprints a head recorded. Used by
`aigi train`, `aigi eval`, `aigi calibrate`, `aigi robustness`, `aigi predict` and `aigi ablate`.

The rows themselves are `common.rows.Rows`: a `cache.FeatureSet` in memory, or a `cache.FeatureStream` (one cache)
/ `cache.JoinedStream` (several) streamed from disk. The choice between them is made here, once per selection
(`hold_choice`): `data.stream: auto` (the default) keeps the selected rows in memory as float32 when that copy fits
the memory budget, as float16 when only the stored float16 copy fits, and streams them otherwise; `true` always
streams, `false` never does. `data.memory_budget` (bytes, or text such as "1.5GB") defaults to half of the memory
this process may still take (`available_ram`: the RAM available now, within the process's own limits and its
cgroup's). Several caches are joined on (image_id, view); `data.join.max_dropped` bounds the share of rows a join
may drop (default 0: a row missing in one cache is an error naming the count).

Validation policy: the rows with split == val when the caches have any; otherwise a seeded `data.val_fraction` of
the training pairs (pair_id, or image_id for unpaired rows), so a real and its aligned fakes stay together.

Whoever runs several stages on the same rows (the ablation runner) passes a `RowStore`: the caches are opened and
each selection is read once for as long as the caller keeps the store. Nothing is kept between calls otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aigi.common import grammar

LOG = logging.getLogger(__name__)
GROUP_COLUMNS = ("source", "domain")
DEFAULT_RAM_FRACTION = 0.5
UNKNOWN_RAM = 8 * 10**9
MAX_KEPT = 4  # row selections a RowStore keeps (the most recent ones)


# ----------------------------------------------------------------------------------------------------------------
# the memory budget and the choice


def available_ram(*, proc: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """Bytes this process may still take: the RAM available now (MemAvailable), bounded by its own limits (RLIMIT_AS
    minus its address space, RLIMIT_DATA minus its data segment) and by its cgroup's memory limit minus the cgroup's
    usage (v1 or v2, every level up to the root); 8 GB when nothing can be read."""
    status = _proc_values(proc / "self" / "status")
    room = [_proc_values(proc / "meminfo").get("MemAvailable")]
    for limit, used in ((resource.RLIMIT_AS, "VmSize"), (getattr(resource, "RLIMIT_DATA", None), "VmData")):
        soft = resource.getrlimit(limit)[0] if limit is not None else resource.RLIM_INFINITY
        if soft != resource.RLIM_INFINITY and soft > 0:
            room.append(max(0, soft - status.get(used, 0)))
    room.append(_cgroup_room(proc / "self" / "cgroup", cgroup_root))
    known = [r for r in room if r is not None]
    return min(known) if known else UNKNOWN_RAM


def _proc_values(path: Path) -> dict[str, int]:
    """`Key: N kB` lines of a /proc file as bytes (empty when it cannot be read)."""
    out = {}
    try:
        for line in path.read_text(encoding="ascii", errors="replace").splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
                out[key] = int(parts[0]) * 1024
    except OSError:
        pass
    return out


def _cgroup_room(self_cgroup: Path, root: Path) -> int | None:
    """The least (limit - usage) of this process's memory cgroup and its ancestors, None without a limit."""
    try:
        lines = self_cgroup.read_text(encoding="ascii").splitlines()
    except OSError:
        return None
    found = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2
            found.append((root, path, "memory.max", "memory.current"))
        elif "memory" in controllers.split(","):  # v1
            found.append((root / "memory", path, "memory.limit_in_bytes", "memory.usage_in_bytes"))
    rooms = []
    for base, path, limit_name, usage_name in found:
        here = base / path.lstrip("/")
        here = here if here.is_dir() else base  # a cgroup namespace: the mount is this process's own cgroup
        while True:
            limit, usage = _read_int(here / limit_name), _read_int(here / usage_name)
            if limit is not None and limit < 2**60 and usage is not None:
                rooms.append(max(0, limit - usage))
            if here == base or not here.is_relative_to(base):
                break
            here = here.parent
    return min(rooms) if rooms else None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (v2): no limit


def parse_budget(value: Any) -> int:
    """Bytes from `data.memory_budget` (`aigi.common.grammar.parse_budget`): None or auto = half of
    `available_ram()`."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return grammar.parse_budget(value, default=int(available_ram() * DEFAULT_RAM_FRACTION))
    return grammar.parse_budget(value, default=0)


def gb(n: float) -> str:
    """A byte count for people: GB, MB or kB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n / 1e3:.1f} kB"


@dataclass(frozen=True)
class Choice:
    """How a set of rows is held: "float32" / "float16" in memory, or "stream"; `why` is the sentence shown."""

    mode: str
    why: str
    budget: int = 0


def choose(*, rows: int, row_values: int, stored: str, stream: Any, budget: int) -> Choice:
    """Pick in memory (float32 / float16) or streamed for `rows` rows of `row_values` feature values each."""
    f32, f16 = rows * row_values * 4, rows * row_values * 2
    sizes = f"float32 copy {gb(f32)}, memory budget {gb(budget)}"
    mode = grammar.parse_stream(stream)
    if mode is True:
        return Choice("stream", f"streamed from disk (data.stream: true; {sizes})", budget)
    if f32 <= budget:
        return Choice("float32", f"in memory as float32 ({sizes})", budget)
    if stored == "float16" and (f16 <= budget or mode is False):
        return Choice("float16", f"in memory as stored float16 {gb(f16)} ({sizes})", budget)
    if mode is False:
        return Choice("float32", f"in memory as float32 although over budget (data.stream: false; {sizes})", budget)
    return Choice("stream", f"streamed from disk: the in-memory copy would exceed the budget ({sizes})", budget)


def row_values(dims: Mapping[str, Sequence[int]]) -> int:
    """Feature values per row."""
    return int(sum(int(np.prod(s)) for s in dims.values()))


# ----------------------------------------------------------------------------------------------------------------
# caches and selections kept for a caller


class RowStore:
    """Opened caches and loaded row selections, kept for as long as the caller holds this object.

    The ablation runner keeps one per worker: its runs open each cache and read each selection once. A cache whose
    files change is opened again; the `MAX_KEPT` most recent selections are kept. `counts` says how many
    selections reached this process from disk ("loaded": read now, or read ahead by `ahead()` and used here for
    the first time, e.g. by a process forked after reading them) and how many were found here again ("reused").
    """

    def __init__(self) -> None:
        self.caches: dict[str, tuple[tuple, Any]] = {}
        self.sets: dict[tuple, Any] = {}
        self.counts = {"loaded": 0, "reused": 0}
        self.unused: set[tuple] = set()  # read ahead, not used yet
        self.reading_ahead = False

    @contextlib.contextmanager
    def ahead(self) -> Iterator[RowStore]:
        """Read selections ahead of their use (counted when they are first used)."""
        self.reading_ahead = True
        try:
            yield self
        finally:
            self.reading_ahead = False

    def cache(self, path: str | Path, open_cache: Callable[[Any], Any]) -> Any:
        """`open_cache(path)` once per cache folder while none of its files changed."""
        folder = os.path.realpath(path)
        stamp = _folder_stamp(folder)
        hit = self.caches.get(folder)
        if hit is None or hit[0] != stamp:
            hit = self.caches[folder] = (stamp, open_cache(path))
        return hit[1]

    def rows(self, key: tuple, load: Callable[[], Any]) -> Any:
        """`load()` once per `key`."""
        if key not in self.sets:
            while len(self.sets) >= MAX_KEPT:
                self.unused.discard(old := next(iter(self.sets)))
                self.sets.pop(old)
            self.sets[key] = load()
            if self.reading_ahead:
                self.unused.add(key)
                return self.sets[key]
        elif self.reading_ahead:
            return self.sets[key]
        elif key in self.unused:
            self.unused.discard(key)
        else:
            self.counts["reused"] += 1
            return self.sets[key]
        self.counts["loaded"] += 1
        return self.sets[key]


def _folder_stamp(folder: str) -> tuple:
    """Every file under `folder` with its size and modification time: changes when the cache's content does."""
    out = []
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                st = os.stat(os.path.join(root, name))
            except OSError:  # removed meanwhile
                continue
            out.append((root, name, st.st_size, st.st_mtime_ns))
    return tuple(sorted(out))


def cache_key(caches: Mapping[str, Any]) -> tuple:
    """What identifies the opened caches' content: path, fingerprint, row count and files' mtimes."""
    out = []
    for alias, c in sorted(caches.items()):
        mtimes = tuple(os.stat(p.path).st_mtime_ns for p in c.parts if hasattr(p, "path") and p.path.is_file())
        out.append((alias, str(c.path), c.fingerprint, len(c), mtimes))
    return tuple(out)


def same_rows(cfg: Any) -> str:
    """What the runs that read the same rows share (one bank): the data section (caches, selection, splits,
    holding, joining) and the fit device."""
    import dataclasses

    return repr((dataclasses.asdict(cfg.data), dict(cfg.fit).get("device", "auto")))


def open_caches(paths: Mapping[str, str], *, store: RowStore | None = None) -> dict[str, Any]:
    """Open every cache of a run: alias -> `cache.Cache` (through `store` when given: once while unchanged)."""
    from aigi import cache

    if not paths:
        raise ValueError("the run names no cache: set data.caches in the config or pass --cache PATH")
    if store is not None:
        return {alias: store.cache(path, cache.open) for alias, path in paths.items()}
    return {alias: cache.open(path) for alias, path in paths.items()}


# ----------------------------------------------------------------------------------------------------------------
# loading and joining


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
        if feat not in plan[owners[0]]:
            plan[owners[0]].append(feat)
    return {alias: feats for alias, feats in plan.items() if feats}


def selected(caches: Mapping[str, Any], inputs: Sequence[str], where: Mapping[str, Any]) -> int:
    """Rows of the first cache the inputs read that match `where` (before any join)."""
    from aigi.cache.featureset import where_mask

    first = caches[next(iter(feature_plan(caches, inputs)))]
    return int(np.count_nonzero(where_mask(first.meta(), dict(where)))) if where else len(first)


def hold_choice(caches: Mapping[str, Any], data: Any, *, inputs: Sequence[str], where: Mapping[str, Any]) -> Choice:
    """How to hold the rows matching `where` (`choose` with data.stream / data.memory_budget): in memory as float32
    or float16, or streamed (several caches are joined while streaming when they store one dtype; caches of
    different dtypes are joined in memory)."""
    plan = feature_plan(caches, inputs)
    rows = selected(caches, inputs, where)
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
    hold: Choice | None = None,
    join: Any = None,
    store: RowStore | None = None,
) -> Any:
    """The rows matching `where` with the head's input features, joined across caches on (image_id, view).

    `domains` (data.domains) names an `aigi domains` table whose domain replaces each row's `domain` by image_id.
    `hold` (a `hold_choice`) keeps them in memory as float32 (default) or float16 (a `cache.FeatureSet`), or
    streams them from the cache (a `cache.FeatureStream` / `JoinedStream`). `join` (data.join) bounds the rows a
    join of several caches may drop. With a `store`, a selection is read once. The choice's sentence is kept as the
    rows' `held` attribute.
    """
    mode = "float32" if hold is None else hold.mode
    load = lambda: _load(caches, inputs=inputs, where=where, domains=domains, hold=hold, join=join)  # noqa: E731
    if store is not None:
        key = (cache_key(caches), tuple(inputs), repr(sorted(dict(where).items())), domains, mode, repr(join))
        rows = store.rows(key, load)
    else:
        rows = load()
    rows.held = "" if hold is None else hold.why
    return rows


def select(
    caches: Mapping[str, Any],
    data: Any,
    *,
    inputs: Sequence[str],
    where: Mapping[str, Any],
    store: RowStore | None = None,
) -> Any:
    """The rows matching `where` as a run's data section holds them (`hold_choice`, then `load_rows` with its
    domains and join policy): one call for a stage that scores a selection."""
    hold = hold_choice(caches, data, inputs=inputs, where=where)
    return load_rows(caches, inputs=inputs, where=where, domains=data.domains, hold=hold, join=_join(data), store=store)


def _load(
    caches: Mapping[str, Any],
    *,
    inputs: Sequence[str],
    where: Mapping[str, Any],
    domains: str,
    hold: Choice | None,
    join: Any,
) -> Any:
    from aigi import cache

    plan = feature_plan(caches, inputs)
    if hold is not None and hold.mode == "stream":
        from aigi.cache.stream import join_streams, open_stream, stream_buffer

        size = stream_buffer(hold.budget)
        parts = {a: open_stream(caches[a], feats, dict(where), buffer_bytes=size) for a, feats in plan.items()}
        joined = join_streams(parts)
    else:
        dtype = "float32" if hold is None else hold.mode
        parts = {alias: caches[alias].load(feats, where=dict(where), dtype=dtype) for alias, feats in plan.items()}
        joined = next(iter(parts.values())) if len(parts) == 1 else cache.join(parts)
    if len(parts) > 1:
        check_join({a: p.meta for a, p in parts.items()}, len(joined), join)
    missing = [name for name in inputs if name not in joined.dims]
    if missing:
        raise ValueError(
            f"after joining {list(plan)} the features are {sorted(joined.dims)}; inputs {missing} are "
            "missing (name them ALIAS/FEATURE when two caches share a name)"
        )
    if domains:
        from aigi.pipeline.domains import attach_domains

        joined = attach_domains(joined, domains)
    return joined


def check_join(metas: Mapping[str, Any], kept: int, join: Any) -> None:
    """Say how many rows a join of several caches dropped (the first cache's rows with no (image_id, view) match in
    another), and refuse when that share exceeds `join.max_dropped` (data.join; None: 0)."""
    from aigi.cache.featureset import KEY

    aliases = list(metas)
    first = metas[aliases[0]]
    dropped = len(first) - kept
    if dropped <= 0:
        return
    import pandas as pd

    def keys(meta: Any) -> Any:
        return pd.MultiIndex.from_frame(meta[list(KEY)].astype(str))

    lacking = {a: int((~keys(first).isin(keys(metas[a]))).sum()) for a in aliases[1:]}
    allowed = float(getattr(join, "max_dropped", 0.0) or 0.0)
    share = dropped / max(len(first), 1)
    what = (
        f"joining caches {aliases} on (image_id, view) dropped {dropped} of the {len(first)} selected rows of "
        f"{aliases[0]!r} ({share:.1%}; rows missing in {', '.join(f'{a!r}: {n}' for a, n in lacking.items())})"
    )
    if share > allowed:
        raise ValueError(
            f"{what}, more than data.join.max_dropped = {allowed:g}; extract the missing rows into every cache, or "
            f"accept the loss with --set data.join.max_dropped={min(1.0, np.ceil(share * 100) / 100):g}"
        )
    LOG.info(f"{what}; within data.join.max_dropped = {allowed:g}")


# ----------------------------------------------------------------------------------------------------------------
# training and validation rows


def train_val_rows(
    caches: Mapping[str, Any], data: Any, *, inputs: Sequence[str], store: RowStore | None = None
) -> tuple[Any, Any, str]:
    """Training and validation rows of a run, following the validation policy (module docstring): held as one
    `hold_choice` over both says, each selection read directly (no copy of a larger one).

    Returns:
        (train, val or None, a sentence describing where val came from).
    """
    col = data.split_column
    both = {**data.where, col: [data.train, data.val]}
    hold = hold_choice(caches, data, inputs=inputs, where=both)
    load = {"inputs": inputs, "domains": data.domains, "hold": hold, "join": _join(data)}

    def read() -> tuple[Any, Any]:
        train = _checked_train(load_rows(caches, where={**data.where, col: data.train}, **load), caches, data)
        where = {**data.where, col: data.val}
        return train, load_rows(caches, where=where, **load) if selected(caches, inputs, where) else None

    if store is None:
        train, val = read()
    else:  # one selection of the store: the training and validation rows together
        key = (cache_key(caches), tuple(inputs), repr(sorted(both.items())), data.domains, hold.mode, repr(_join(data)))
        train, val = store.rows(key, read)
    out = (train, val, _val_how(val, data)) if val is not None and len(val) else _cut_val(train, data)
    for part in out[:2]:
        if part is not None:
            part.held = hold.why
    return out


def val_rows(
    caches: Mapping[str, Any], data: Any, *, inputs: Sequence[str], store: RowStore | None = None
) -> tuple[Any, str]:
    """Only the validation rows of a run (as `train_val_rows` picks them), loading the training rows only when the
    validation rows are a seeded share of them.

    Returns:
        (val or None, a sentence describing where val came from).
    """
    col = data.split_column
    where = {**data.where, col: data.val}
    if selected(caches, inputs, where):
        val = select(caches, data, inputs=inputs, where=where, store=store)
        if len(val):
            return val, _val_how(val, data)
    train = select(caches, data, inputs=inputs, where={**data.where, col: data.train}, store=store)
    _, val, how = _cut_val(_checked_train(train, caches, data), data)
    return val, how


def val_in_memory(val: Any, budget: Any) -> Any:
    """Streamed validation rows small enough for a quarter of the budget, loaded (they are scored every epoch)."""
    if val is None or val.arrays() is not None or val.nbytes("float32") * 4 > parse_budget(budget):
        return val
    from aigi import cache

    out = cache.FeatureSet(val.load("float32"), val.meta)
    out.held = getattr(val, "held", "")
    return out


def _join(data: Any) -> Any:
    return getattr(data, "join", None)


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


# ----------------------------------------------------------------------------------------------------------------
# what a trained head recorded


def open_checked(
    info: Mapping[str, Any], paths: Mapping[str, str], *, run_dir: Path, store: RowStore | None = None
) -> tuple[dict[str, Any], list[str]]:
    """A trained run's caches opened (`open_caches`) and checked against the fingerprints its head recorded
    (`check_fingerprints`): the caches and the check's warnings."""
    caches = open_caches(paths, store=store)
    return caches, check_fingerprints(info, caches, run_dir=run_dir)


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
