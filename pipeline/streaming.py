"""Rows in memory or streamed from disk: the memory budget, the choice (`data.stream`), progress, reuse in a worker.

`data.stream: auto` (the default) keeps the selected rows in memory as float32 when that copy fits the memory
budget, as float16 when only the stored float16 copy fits, and streams them from the cache otherwise;
`true` always streams, `false` never does. `data.memory_budget` (bytes, or text such as "1.5GB", "800MB") defaults
to half of the RAM available when the command starts. The choice is said in one line of the command's output.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from aigi.common import grammar

DEFAULT_RAM_FRACTION = 0.5
PROGRESS_SECONDS = 10.0


def available_ram() -> int:
    """Bytes of RAM available now (MemAvailable on Linux, else physical pages; 8 GB when unknown)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 * 10**9


def parse_budget(value: Any) -> int:
    """Bytes from `data.memory_budget` (`aigi.common.grammar.parse_budget`): None or auto = half the available RAM."""
    return grammar.parse_budget(value, default=int(available_ram() * DEFAULT_RAM_FRACTION))


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


class StreamedSet:
    """A FeatureSet look-alike whose features are a batch source streamed from the cache: same `meta`,
    `labels`, `dims`, `column`, `subset`; `features` is the (progress-reporting) source heads.fit/predict read."""

    def __init__(self, features: Any, meta: Any = None) -> None:
        self.stream = features.stream if isinstance(features, Reporting) else features
        if meta is not None:
            self.stream.meta = meta.reset_index(drop=True)
        self.features = Reporting(self.stream)

    meta = property(lambda self: self.stream.meta)
    labels = property(lambda self: self.stream.meta["label"].to_numpy(dtype=np.int64))
    dims = property(lambda self: self.stream.dims)

    def __len__(self) -> int:
        return len(self.stream)

    def column(self, name: str) -> np.ndarray:
        if name not in self.meta.columns:
            raise ValueError(f"unknown meta column {name!r}; columns are {list(self.meta.columns)}")
        col = self.meta[name]
        return col.to_numpy(dtype=object) if col.dtype == "string" else col.to_numpy()

    def subset(self, rows: np.ndarray) -> StreamedSet:
        from aigi.cache.stream import sorted_unique

        idx = np.asarray(rows)
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx
        if np.array_equal(idx, np.arange(len(self))):  # every row in order: the same rows, no copy
            return StreamedSet(self.stream)
        sub = self.stream.subset(idx)
        sub.meta = self.meta.iloc[sorted_unique(idx)].reset_index(drop=True)
        return StreamedSet(sub)


class Reporting:
    """A batch source passing batches through from a `cache.FeatureStream`, reporting rows/s and GB/s (as progress
    lines, or to `out`) every PROGRESS_SECONDS and once at the end of each pass over more than one batch."""

    def __init__(self, stream: Any, out: Any = None) -> None:
        self.stream, self.out = stream, out

    def __len__(self) -> int:
        return len(self.stream)

    dims = property(lambda self: self.stream.dims)
    labels = property(lambda self: self.stream.labels)

    def _emit(self, line: str) -> None:
        if self.out is None:
            logging.getLogger("aigi.progress").info(line)  # the command line shows it on stderr
        else:
            self.out.write(line + "\n")
            self.out.flush()

    def batches(self, batch_size: int, **kwargs: Any) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        start = last = time.perf_counter()
        rows0, bytes0, n, total = self.stream.stats.rows, self.stream.stats.bytes, 0, len(self.stream)
        if kwargs.get("rows") is not None:
            total = len(kwargs["rows"])
        for item in self.stream.batches(batch_size, **kwargs):
            n += 1
            yield item
            now = time.perf_counter()
            if now - last >= PROGRESS_SECONDS:
                last = now
                self._emit(self._line(now - start, rows0, bytes0, total))
        if n > 1:
            self._emit(self._line(time.perf_counter() - start, rows0, bytes0, total))

    def _line(self, seconds: float, rows0: int, bytes0: int, total: int) -> str:
        rows, nbytes = self.stream.stats.rows - rows0, self.stream.stats.bytes - bytes0
        s = max(seconds, 1e-9)
        return (
            f"stream: {rows:,}/{total:,} rows in {seconds:.1f} s, {rows / s:,.0f} rows/s, {nbytes / s / 1e9:.2f} GB/s"
        )


def row_values(dims: Mapping[str, Sequence[int]]) -> int:
    """Feature values per row."""
    return int(sum(int(np.prod(s)) for s in dims.values()))


# ----------------------------------------------------------------------------------------------------------------
# reuse inside one process (the ablation runner's workers train many heads on the same rows)

REUSE = False  # set in ablation workers: rows of one selection are loaded once per process
_ROWS: dict[tuple, Any] = {}
_STAGES: dict[str, dict] = {}
MAX_KEPT = 4


ROW_LOADS = {"loaded": 0, "reused": 0}  # selections this process read from disk / found already loaded


def reuse_rows(key: tuple, load: Any) -> Any:
    """`load()` once per `key` in this process (the most recent MAX_KEPT results are kept)."""
    if key not in _ROWS:
        while len(_ROWS) >= MAX_KEPT:
            _ROWS.pop(next(iter(_ROWS)))
        _ROWS[key] = load()
        ROW_LOADS["loaded"] += 1
    else:
        ROW_LOADS["reused"] += 1
    return _ROWS[key]


STAGE_DIR: str | None = None  # set in ablation workers: finished shared stages are also kept here for the others


def stage_store() -> Any:
    """The store of finished shareable head stages (see heads.fit's `stage_store`): this process's, and when
    STAGE_DIR is set, files every worker of the ablation reads."""
    return DiskStages(STAGE_DIR, _STAGES) if STAGE_DIR else _STAGES


class DiskStages:
    """A `key -> finished stage` mapping kept in memory and as files `KEY.safetensors` (parameters, RNG states)
    + `KEY.json` (the stage's history record, written last: its presence marks a complete entry). No pickle."""

    def __init__(self, folder: str, memory: dict) -> None:
        from pathlib import Path

        self.folder, self.memory = Path(folder), memory

    def __contains__(self, key: object) -> bool:
        return key in self.memory or (self.folder / f"{key}.json").is_file()

    def __getitem__(self, key: str) -> dict:
        if key not in self.memory:
            import json

            from safetensors.torch import load_file

            tensors = load_file(str(self.folder / f"{key}.safetensors"))
            record = json.loads((self.folder / f"{key}.json").read_text(encoding="utf-8"))
            params = {k[len("param.") :]: v for k, v in tensors.items() if k.startswith("param.")}
            self.memory[key] = {"params": params, "gen": tensors["gen"], "rng": tensors["rng"], "record": record}
        return self.memory[key]

    def __setitem__(self, key: str, value: dict) -> None:
        import json

        from safetensors.torch import save_file

        self.memory[key] = value
        self.folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"param.{k}": v.contiguous() for k, v in value["params"].items()}
        tensors.update(gen=value["gen"], rng=value["rng"])
        for suffix, write in (
            (".safetensors", lambda tmp: save_file(tensors, str(tmp))),
            (".json", lambda tmp: tmp.write_text(json.dumps(value["record"], default=float), encoding="utf-8")),
        ):
            final = self.folder / f"{key}{suffix}"
            tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
            write(tmp)
            os.replace(tmp, final)


_CACHES: dict[str, tuple[tuple, Any]] = {}


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


def reuse_cache(path: Any, open_cache: Any) -> Any:
    """`open_cache(path)` once per cache folder in this process while none of its files changed (an opened cache
    keeps its meta table: the next runs of an ablation worker do not read it again)."""
    folder = os.path.realpath(path)
    stamp = _folder_stamp(folder)
    hit = _CACHES.get(folder)
    if hit is None or hit[0] != stamp:
        hit = _CACHES[folder] = (stamp, open_cache(path))
    return hit[1]


def cache_key(caches: Mapping[str, Any]) -> tuple:
    """What identifies the opened caches' content: path, fingerprint, row count and files' mtimes."""
    out = []
    for alias, c in sorted(caches.items()):
        mtimes = tuple(os.stat(p.path).st_mtime_ns for p in c.parts if hasattr(p, "path") and p.path.is_file())
        out.append((alias, str(c.path), c.fingerprint, len(c), mtimes))
    return tuple(out)
