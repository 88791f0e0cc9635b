"""The ablate stage: expand a grid of run configs x seeds, train them as head banks and evaluate each run once
(resumably, in parallel), tabulate.

An ablation config is a run config plus `variants` (named sets of dotted-key overrides), `grid` ({KEY: [VALUE, ...]},
crossed with every variant), `seeds`, `sort_by` and `eval_views`; overrides apply in the order base config -> variant
-> grid point -> seed. Each run is one resolved config, its id a readable name + 8 hex of the config's sha256; it
trains and evaluates in DIR/runs/RUN_ID/ and writes result.json last, atomically, so a re-run skips finished runs
(a failed run writes error.json instead, and is tried again). Runs that read the same rows train together in banks
(`heads.fit_many`: each batch read once for every head, linear heads stepped as one matmul, shared stages once).

This module imports no other stage: the caller hands it the train and eval stages to run (`RunSteps`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aigi.common.extras import require
from aigi.common.files import atomic_write
from aigi.common.grammar import set_dotted
from aigi.pipeline.config import RunConfig

ABLATION_KEYS = ("grid", "variants", "seeds", "sort_by", "prepare", "eval_views")
RESULT_FILE = "result.json"
ERROR_FILE = "error.json"  # why a run failed (a re-run tries it again)
SHARED_STAGES = "shared_stages"  # finished expert stages the runs share (heads.FolderStages)
DEFAULT_SORT = "auc"


@dataclass(frozen=True)
class AblateOptions:
    """How `aigi ablate` runs the runs.

    Attributes:
        jobs: local joblib (loky) processes; each gets cores // jobs torch threads.
        workers: dask LocalCluster worker processes (0: not dask).
        scheduler: the address of an existing dask scheduler (tcp://HOST:PORT).
        progress: report progress over the runs (`common.progress`).
    """

    jobs: int = 1
    workers: int = 0
    scheduler: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {self.jobs}")
        if (self.workers or self.scheduler) and self.jobs > 1:
            raise ValueError("give either --jobs N (joblib) or --workers N / --scheduler (dask), not both")

    @property
    def dask(self) -> bool:
        """Whether the runs go to dask workers."""
        return bool(self.workers or self.scheduler)


@dataclass(frozen=True)
class RunSteps:
    """The stages an ablation runs for each config, and their options; the caller gives them (the command line:
    `pipeline.train.train_bank` / `train_run` with its `TrainOptions`, `pipeline.evaluate.evaluate_run` with its
    `EvalOptions`), so this module imports no other stage. They travel to worker processes, so they are module-level
    functions.

    Attributes:
        train: `train(config, run_dir, options=train_options, rows=ROW_STORE, stage_store=STORE)` -> a result with
            val_metrics, train_rows, val_rows, seconds, stages.
        evaluate: `evaluate(run_dir, out_dir, eval_options, config=config, rows=ROW_STORE)` -> a result with
            `metrics`.
        train_options: passed to `train`.
        eval_options: passed to `evaluate`, with `plots` off and `where` set per evaluated view (a dataclass).
        train_bank: `train_bank([(config, run_dir), ...], options=..., rows=..., stage_store=..., errors="keep")` ->
            one result (or exception) per run: the runs of a bank trained together; None: `train` one by one.
    """

    train: Callable[..., Any]
    evaluate: Callable[..., Any]
    train_options: Any
    eval_options: Any
    train_bank: Callable[..., Any] | None = None


@dataclass(frozen=True)
class AblationResult:
    """What `run_ablation` ran and wrote.

    Attributes:
        ran, skipped: runs executed now / found finished.
        results: one row per run (results.parquet).
        summary: mean and std over seeds per setting, best first (summary.md).
        files: name -> path of results.parquet, summary.md and summary.png (with the `plots` extra).
        failed: the runs that failed: run_id, setting, seed, ..., "error" (their reason), also in summary.md.
    """

    ran: int
    skipped: int
    results: Any
    summary: Any
    files: dict[str, Path]
    failed: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class RunSpec:
    """One run of an ablation: a resolved run config and what distinguishes it from its siblings."""

    run_id: str
    setting: str
    variant: str
    values: dict[str, Any]
    seed: int
    config: dict[str, Any] = field(repr=False)  # the resolved config as plain data (its hash is in run_id)
    parsed: RunConfig | None = field(default=None, repr=False, compare=False)  # the same, parsed once


@dataclass(frozen=True)
class AblationPlan:
    """Every run of an ablation, in order, and how to summarise them."""

    runs: list[RunSpec]
    grid_keys: list[str]
    sort_by: str = DEFAULT_SORT
    prepare: str = ""  # the commands that make the data the config reads (its `prepare` key)
    eval_views: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------------------
# expansion


def _variants(raw: Any, *, source: str) -> list[tuple[str, dict[str, Any]]]:
    """Normalise `variants:` to [(name, {dotted key: value})]; no variants = one unnamed setting."""
    if raw is None:
        return [("base", {})]
    if isinstance(raw, Mapping):
        items = [(str(k), v) for k, v in raw.items()]
    elif isinstance(raw, Sequence) and not isinstance(raw, str):
        items = []
        for i, entry in enumerate(raw):
            if not isinstance(entry, Mapping) or not entry.get("name"):
                raise ValueError(f"{source}: variants[{i}] must be a mapping with a `name` and its overrides")
            items.append((str(entry["name"]), {k: v for k, v in entry.items() if k != "name"}))
    else:
        raise ValueError(f"{source}: `variants` must be a mapping NAME: {{overrides}} or a list of them")
    names = [n for n, _ in items]
    bad = [n for n in names if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", n)]
    if bad or len(set(names)) != len(names):
        raise ValueError(f"{source}: variant names must be unique and use letters, digits, _ . + - (got {names})")
    for name, overrides in items:
        if not isinstance(overrides, Mapping):
            raise ValueError(f"{source}: variant {name!r} must map dotted keys to values, got {overrides!r}")
    return [(n, dict(o)) for n, o in items]


def _grid(raw: Any, *, source: str) -> dict[str, list[Any]]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"{source}: `grid` must map dotted keys to lists of values, e.g. fit.lr: [1.0e-3, 1.0e-4]")
    out = {}
    for key, values in raw.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{source}: grid.{key} must be a non-empty list of values, got {values!r}")
        if key in ("fit.seed", "seed"):
            raise ValueError(f"{source}: put seeds in `seeds: [...]`, not in the grid")
        out[str(key)] = values
    return out


def _seeds(raw: Any, *, source: str) -> list[int]:
    if raw is None:
        return [0]
    seeds = [raw] if isinstance(raw, int) else raw
    if not isinstance(seeds, Sequence) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ValueError(f"{source}: `seeds` must be a list of integers, e.g. [0, 1, 2]; got {raw!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{source}: `seeds` has duplicates: {seeds}")
    return [int(s) for s in seeds]


def _eval_views(raw: Any, *, source: str) -> list[str]:
    if raw is None:
        return []
    from aigi.extractors.views import canonical_view

    if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
        raise ValueError(f"{source}: `eval_views` must be a list of views, e.g. [orig, jpeg:75]; got {raw!r}")
    try:
        return [canonical_view(v) for v in raw]
    except ValueError as err:
        raise ValueError(f"{source}: eval_views: {err}") from None


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "+".join(_short(v) for v in value)
    if isinstance(value, Mapping):
        return "+".join(str(k) for k in value)
    return str(value)


def setting_name(variant: str, values: Mapping[str, Any]) -> str:
    """Readable, file-system-safe name of a setting: variant + `lastkey=value` per grid key."""
    parts = [variant] + [f"{key.split('.')[-1]}={_short(v)}" for key, v in values.items()]
    name = re.sub(r"[^A-Za-z0-9_.+=-]+", "-", "_".join(parts)).strip("-")
    return name[:80]


def config_hash(config: Mapping[str, Any]) -> str:
    """The first 8 hex digits of the sha256 of a resolved config's canonical JSON."""
    from aigi.cache import fingerprint as sha256_of

    return sha256_of(dict(config))[:8]


def expand(
    raw: Mapping[str, Any], *, source: str = "ablation", seeds: Sequence[int] | None = None, sort_by: str | None = None
) -> AblationPlan:
    """Expand an ablation mapping into resolved runs: variants x grid points x seeds, each parsed strictly.

    Args:
        raw: the ablation YAML: a run config plus `variants`, `grid`, `seeds`, `sort_by`.
        source: name used in error messages (the file).
        seeds: replaces the config's seeds.
        sort_by: replaces the config's sort metric.
    """
    from aigi.pipeline.config import parse_config, to_dict

    if not isinstance(raw, Mapping):
        raise ValueError(f"{source}: an ablation config is a mapping (a run config plus grid/variants/seeds)")
    base = {k: copy.deepcopy(v) for k, v in raw.items() if k not in ABLATION_KEYS}
    grid = _grid(raw.get("grid"), source=source)
    seed_list = _seeds(raw.get("seeds") if seeds is None else list(seeds), source=source)
    views = _eval_views(raw.get("eval_views"), source=source)
    runs = []
    for variant, overrides in _variants(raw.get("variants"), source=source):
        for point in itertools.product(*grid.values()):
            values = dict(zip(grid, point, strict=True))
            setting = setting_name(variant, values)
            for seed in seed_list:
                data = copy.deepcopy(base)
                for key, value in [*overrides.items(), *values.items(), ("fit.seed", seed)]:
                    set_dotted(data, key, value)
                parsed = parse_config(data, source=f"{source} [{setting}, seed {seed}]")
                cfg = to_dict(parsed)
                run_id = f"{setting}_s{seed}-{config_hash({**cfg, 'eval_views': views} if views else cfg)}"
                runs.append(RunSpec(run_id, setting, variant, values, seed, cfg, parsed))
    seen: dict[str, str] = {}
    for r in runs:
        digest = r.run_id.rsplit("-", 1)[-1]
        if digest in seen:
            raise ValueError(f"{source}: {seen[digest]} and {r.run_id} resolve to identical configs; drop one")
        seen[digest] = r.run_id
    return AblationPlan(
        runs=runs,
        grid_keys=list(grid),
        sort_by=str(sort_by or raw.get("sort_by") or DEFAULT_SORT),
        prepare=" ".join(str(raw.get("prepare") or "").split()),
        eval_views=views,
    )


def check_inputs_exist(plan: AblationPlan) -> None:
    """Refuse to start when a cache or domains table of the runs is missing, saying how to make it."""
    data = plan.runs[0].parsed.data if plan.runs else None
    wanted = {**(data.caches if data else {}), **({"data.domains": data.domains} if data and data.domains else {})}
    missing = [f"{name} = {path}" for name, path in wanted.items() if not Path(path).exists()]
    if missing:
        how = f"make it first: {plan.prepare}" if plan.prepare else "pass --cache ALIAS=PATH / --set data.domains=PATH"
        raise FileNotFoundError(f"{'; '.join(missing)} does not exist; {how}")


def load_ablation(
    path: str | Path,
    *,
    overrides: Sequence[str] = (),
    caches: Sequence[str] = (),
    seeds: Sequence[int] | None = None,
    sort_by: str | None = None,
) -> AblationPlan:
    """Read an ablation YAML, apply `--cache` and `--set` overrides to its base config, and expand it."""
    from aigi.pipeline.config import apply_overrides, override_caches, read_yaml

    path = Path(path)
    missing = f"ablation config {path} does not exist (e.g. configs/ablate_fusion.yaml)"
    raw = read_yaml(path, what="an ablation config", missing=missing)
    raw = override_caches(raw, caches) if caches else dict(raw)
    return expand(apply_overrides(raw, overrides), source=str(path), seeds=seeds, sort_by=sort_by)


def check_tail_weights(plan: AblationPlan, weights: Sequence[str]) -> None:
    """Build the frozen tail of every distinct `tail_*` head of the runs once, before any run starts, so that
    missing or other backbone weights end the command at once (naming the file and the fix) instead of every run."""
    from aigi import heads
    from aigi.common.grammar import parse_aliased
    from aigi.pipeline.rows import open_caches
    from aigi.pipeline.tail import frozen_tail

    seen = set()
    for r in plan.runs:
        head, data = r.parsed.head, r.parsed.data
        key = (head.name, tuple(head.inputs), tuple(sorted(data.caches.items())))
        if key in seen or not heads.needs_frozen(head.name):
            continue
        seen.add(key)
        caches = open_caches(data.caches)
        specs = {alias: c.spec for alias, c in caches.items()}
        frozen_tail(head.name, head.inputs, specs, parse_aliased(list(weights), list(caches)))


def check_can_run(plan: AblationPlan, options: AblateOptions, *, weights: Sequence[str] = ()) -> None:
    """Before any run starts: dask is installed when the runs go to dask, and every `tail_*` head's backbone
    weights are there (`check_tail_weights`)."""
    if options.dask:
        require("dask.distributed", needed_for="--workers / --scheduler")
    check_tail_weights(plan, weights)


# ----------------------------------------------------------------------------------------------------------------
# one bank of runs (in this process or a worker process)


def read_result(run_dir: str | Path) -> dict[str, Any] | None:
    """The finished result of a run directory, or None when the run has not finished."""
    path = Path(run_dir) / RESULT_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def read_failure(run_dir: str | Path) -> dict[str, Any] | None:
    """Why the last attempt at a run failed (its error.json), or None."""
    path = Path(run_dir) / ERROR_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def execute_run(
    run_dir: str,
    config: RunConfig | Mapping[str, Any],
    identity: dict[str, Any],
    threads: int | None = None,
    steps: RunSteps | None = None,
    rows: Any = None,
) -> dict:
    """Train and evaluate one resolved config in `run_dir` with `steps`; skip it when its result exists (a bank of
    one run: `execute_bank`).

    Idempotent: a finished run returns its stored result (with "skipped": True); leftovers of an unfinished
    attempt are removed first. Safe to retry after a worker dies.

    Args:
        run_dir: the run's directory (DIR/runs/RUN_ID).
        config: the run's `RunConfig` (or its plain-data form, `pipeline.config.to_dict`, parsed here).
        identity: run_id, setting, variant, values, seed (copied into the result).
        threads: torch threads for this process (None: leave as is).
        steps: the train and eval stages to run (required unless the run is finished).
        rows: a `pipeline.rows.RowStore` kept by the caller (None: this call's own).
    """
    return execute_bank([(run_dir, config, identity)], threads, steps, rows)[0]


def execute_bank(
    runs: Sequence[tuple[str, RunConfig | Mapping[str, Any], dict[str, Any]]],
    threads: int | None = None,
    steps: RunSteps | None = None,
    rows: Any = None,
) -> list[dict]:
    """Train and evaluate runs that read the same rows, in this process: the rows are read once (`rows`, a
    `pipeline.rows.RowStore`), the heads trained as one bank (`steps.train_bank`, else one by one with
    `steps.train`), then each evaluated. A finished run is skipped; a run that fails writes its reason to
    RUN_DIR/error.json and the others go on. Each run's folder is locked meanwhile: a re-run waits for a live
    process still working on it instead of deleting its folder.

    Returns:
        One result per run, in order: result.json's content plus "skipped", or {"run_id", "error", "skipped"}.
    """
    from aigi.cache.locking import folder_lock

    done = [read_result(run_dir) for run_dir, _, _ in runs]
    if all(d is not None for d in done):
        return [{**d, "skipped": True} for d in done]
    if steps is None:
        raise TypeError("execute_bank needs the train and eval stages (steps=RunSteps(...)) to run an unfinished run")
    with contextlib.ExitStack() as locks:
        for run_dir in sorted(run_dir for run_dir, _, _ in runs):
            locks.enter_context(folder_lock(Path(run_dir).parent, f".{Path(run_dir).name}.lock"))
        done = [read_result(run_dir) for run_dir, _, _ in runs]
        todo = [r for r, d in zip(runs, done, strict=True) if d is None]
        fresh = iter(_train_and_evaluate(todo, threads, steps, rows))
        return [{**d, "skipped": True} if d is not None else next(fresh) for d in done]


def _view_folder(view: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]", "_", view)


def _train_and_evaluate(runs: list, threads: int | None, steps: RunSteps, rows: Any) -> list[dict]:
    """The body of `execute_bank`, holding the runs' locks: fresh run folders, train (a bank), evaluate, results."""
    import torch

    from aigi.pipeline.config import parse_config
    from aigi.pipeline.rows import RowStore

    store = rows if rows is not None else RowStore()
    paths = [Path(run_dir) for run_dir, _, _ in runs]
    for path in paths:
        if path.exists():  # an unfinished attempt's leftovers (or a failed attempt's error.json)
            shutil.rmtree(path)
    cfgs = [c if isinstance(c, RunConfig) else parse_config(c, source=f"{p}/config.yaml") for p, (_, c, _) in
            zip(paths, runs, strict=True)]  # fmt: skip
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        trained = _train(list(zip(cfgs, paths, strict=True)), steps, store)
        return [
            _evaluate(path, cfg, identity, t, steps, store, share)
            for path, cfg, (_, _, identity), (t, share) in zip(paths, cfgs, runs, trained, strict=True)
        ]
    finally:
        torch.set_num_threads(previous)


def _train(runs: list[tuple[RunConfig, Path]], steps: RunSteps, store: Any) -> list[tuple[Any, dict]]:
    """Each run's train result (or the exception it failed with) and its share of the work: wall and CPU seconds,
    and the row selections it read from disk / reused (`RowStore.counts`). One bank (`steps.train_bank`: its first
    run read the rows, the others reused them, the seconds split evenly), or one run after another."""
    from aigi.heads import FolderStages

    stages = FolderStages(runs[0][1].parent.parent / SHARED_STAGES) if runs else None
    if steps.train_bank is None:
        return [_train_one(cfg, path, steps, store, stages) for cfg, path in runs]
    start, cpu, loads = time.perf_counter(), time.process_time(), dict(store.counts)
    out = steps.train_bank(runs, options=steps.train_options, rows=store, stage_store=stages, errors="keep")
    n = max(len(runs), 1)
    first = {"loads": {k: store.counts[k] - loads[k] for k in loads}, "seconds": (time.perf_counter() - start) / n,
             "cpu": (time.process_time() - cpu) / n}  # fmt: skip
    rest = {**first, "loads": {"loaded": 0, "reused": 1}}
    return [(r, first if i == 0 else rest) for i, r in enumerate(out)]


def _train_one(cfg: RunConfig, path: Path, steps: RunSteps, store: Any, stages: Any) -> tuple[Any, dict]:
    """One run trained alone (a failure is returned, not raised: the next runs go on), and its share of the work."""
    start, cpu, loads = time.perf_counter(), time.process_time(), dict(store.counts)
    try:
        done = steps.train(cfg, path, options=steps.train_options, rows=store, stage_store=stages)
    except Exception as err:
        done = err
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return done, {"loads": {k: store.counts[k] - loads[k] for k in loads}, "seconds": seconds, "cpu": cpu}


def _evaluate(
    path: Path, cfg: RunConfig, identity: dict, trained: Any, steps: RunSteps, store: Any, share: dict
) -> dict:
    """Evaluate one trained run (or record its failure) and write its result.json (or error.json) atomically."""
    import torch

    from aigi.common.provenance import code_revision

    if isinstance(trained, Exception):
        failure = {**identity, "error": f"{type(trained).__name__}: {trained}", "finished_at": time.time()}
        path.mkdir(parents=True, exist_ok=True)
        atomic_write(path / ERROR_FILE, json.dumps(failure, indent=2, default=str) + "\n")
        return {**failure, "skipped": False}
    start, cpu, loads = time.perf_counter(), time.process_time(), dict(store.counts)
    eval_options = dataclasses.replace(steps.eval_options, plots=False)  # plots cost seconds per run
    metrics = steps.evaluate(path, path / "eval", eval_options, config=cfg, rows=store).metrics
    views = {}
    for v in identity.get("eval_views") or []:
        options = dataclasses.replace(eval_options, where=(f"view={v}",))
        folder = path / "eval_views" / _view_folder(v)
        views[v] = steps.evaluate(path, folder, options, config=cfg, rows=store).metrics["mean"]
    seconds = time.perf_counter() - start
    val = trained.val_metrics or {}
    result = {
        **identity,
        "code_revision": code_revision(),
        "metrics": {"mean": metrics["mean"], "groups": metrics["groups"], "threshold": metrics["threshold"]},
        "views": views,
        "train_views": cfg.data.where.get("view"),
        "train_rows": trained.train_rows,
        "val_rows": trained.val_rows,
        "val_ap": val.get("ap"),
        "train_seconds": trained.seconds,
        "seconds": share["seconds"] + seconds,  # the run's share of its bank's training, and its evaluation
        "row_sets": {k: share["loads"][k] + store.counts[k] - loads[k] for k in loads},  # read from disk / reused
        "cpu_seconds": share["cpu"] + time.process_time() - cpu,  # CPU time in this process (all threads)
        "stage_seconds": {**trained.stages, "eval": seconds},
        "threads": torch.get_num_threads(),
        "pid": os.getpid(),
        "finished_at": time.time(),
    }
    atomic_write(path / RESULT_FILE, json.dumps(result, indent=2, default=str) + "\n")
    return {**result, "skipped": False}


# ----------------------------------------------------------------------------------------------------------------
# running many


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows
        return os.cpu_count() or 1


def bank_tasks(
    plan: AblationPlan, out_dir: Path, pending: set[str], threads: int | None, steps: RunSteps
) -> list[tuple[str, tuple]]:
    """The unfinished runs as bank tasks `(key, (runs, threads, steps))`, largest estimated work first.

    Runs on the same rows (`pipeline.rows.same_rows`) are split into banks that gain from training together: every
    plain linear head of one fit setting (whatever its seed, learning rate and weight decay: one batched step), and
    the heads of one seed that share frozen experts (gating, concat, mean); any other run is a bank of its own, so
    that parallel workers balance."""
    from aigi.pipeline.rows import same_rows

    banks: dict[tuple, list[RunSpec]] = {}
    for r in plan.runs:
        if r.run_id in pending:
            banks.setdefault((same_rows(r.parsed), *_affinity(r)), []).append(r)
    tasks = []
    for members in banks.values():
        runs = [(str(out_dir / "runs" / r.run_id), r.parsed or r.config, _identity(r, plan)) for r in members]
        tasks.append((members[0].run_id, (runs, threads, steps), sum(_work(r) for r in members)))
    tasks.sort(key=lambda t: -t[2])
    return [(key, args) for key, args, _ in tasks]


def _identity(r: RunSpec, plan: AblationPlan) -> dict[str, Any]:
    identity = {"run_id": r.run_id, "setting": r.setting, "variant": r.variant, "values": r.values, "seed": r.seed}
    if plan.eval_views:
        identity["eval_views"] = list(plan.eval_views)
    return identity


def _affinity(r: RunSpec) -> tuple:
    """What groups a run with others in one bank (see `bank_tasks`); a run of its own gets its run id."""
    head, fit = r.parsed.head, dict(r.parsed.fit)
    if head.name == "linear" and not head.params.get("standardize"):
        rest = {k: v for k, v in fit.items() if k not in ("seed", "lr", "weight_decay")}
        return ("linear", repr(head.params), repr(sorted(rest.items())))
    if head.params.get("experts"):
        shared = {k: head.params.get(k) for k in ("inputs", "experts", "column", "rank")}
        return ("experts", repr(shared), repr(sorted(fit.items())))
    return ("alone", r.run_id)


def _work(r: RunSpec) -> float:
    """A rough size of a run's training, to start the largest banks first: stages x parameters x epochs."""
    head, fit = r.parsed.head, r.parsed.fit
    stages = {"router": 6, "gating": 3, "concat": 3, "mean": 3, "prototype": 2}.get(head.name, 1)
    width = {"router": 1 << 16, "gating": 1 << 15, "prototype": 1 << 15}.get(head.name, 1 << 13)
    return stages * width * max(1, int(fit.get("epochs", 5)))


def _exit_with_parent(parent: int) -> None:
    """In a worker process: end it (os._exit) soon after process `parent` is gone. Started once per process."""
    import threading

    from aigi.cache.locking import pid_alive

    if any(t.name == "exit-with-parent" for t in threading.enumerate()):
        return

    def watch() -> None:
        while pid_alive(parent) and os.getppid() != 1:
            time.sleep(0.5)
        os._exit(1)  # the main process died: do not go on with queued runs

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


# what a worker imports on its first bank (a torch optimizer imports torch._dynamo, the metrics sklearn's): about
# 3 s of CPU each, paid once before the workers fork
WORKER_IMPORTS = ("torch._dynamo", "sklearn.metrics", "sklearn.decomposition")
KEEP_WORKER_BYTES = 1 << 40  # a worker's memory may grow this much after its first run before loky replaces it


def _keep_worker() -> None:
    """In a loky worker: do not let loky replace this process when its memory grows after its first task.

    loky ends a worker whose resident memory grew by 300 MB after its first task (it takes that for a leak); an
    ablation worker keeps the rows it loaded and the stages it trained on purpose, for its next runs, and a new
    process would load them, and import torch and sklearn, again."""
    try:
        from joblib.externals.loky import process_executor
    except ImportError:  # another joblib layout: its workers may be replaced, the runs stay correct
        return
    if hasattr(process_executor, "_MAX_MEMORY_LEAK_SIZE"):
        process_executor._MAX_MEMORY_LEAK_SIZE = max(process_executor._MAX_MEMORY_LEAK_SIZE, KEEP_WORKER_BYTES)


def _watched_run(parent: int, index: int, run: Any, *args: Any) -> tuple[int, Any]:
    """`(index, run(*args))` in a joblib worker that ends with the main process `parent` and is kept for the next
    tasks however its memory grew."""
    _exit_with_parent(parent)
    _keep_worker()
    return index, run(*args)


def _count(result: Any) -> int:
    """Runs a task's result covers (a bank's list of results, or one run's)."""
    return len(result) if isinstance(result, list) else 1


def _run_local(
    tasks: list[tuple[str, tuple]], *, jobs: int, bar: Any, run: Any = execute_bank, threads: int = 1
) -> list[Any]:
    """`run(*args)` for every task (in order with one job, else on `jobs` loky processes with `threads` torch
    threads each); results in task order."""
    if jobs <= 1:
        results = []
        for _, args in tasks:
            results.append(run(*args))
            bar.update(_count(results[-1]))
        return results
    from joblib import Parallel, delayed, parallel_config

    out: list[Any] = [None] * len(tasks)
    with parallel_config(backend="loky", inner_max_num_threads=threads):
        parent = os.getpid()
        gen = Parallel(n_jobs=jobs, return_as="generator_unordered")(
            delayed(_watched_run)(parent, i, run, *a) for i, (_, a) in enumerate(tasks)
        )
        for i, result in gen:
            out[i] = result
            bar.update(_count(result))
    return out


def _run_forked(tasks: list[tuple[str, tuple]], *, jobs: int, bar: Any, rows: Any) -> list[Any]:
    """`execute_bank(*args, rows=rows)` for every task on `jobs` forked processes that take the next task when
    they finish one (largest first): they share the rows this process read into `rows` (copy-on-write pages, read
    only), and end with it. Results in task order."""
    import importlib
    import multiprocessing
    import queue

    for module in WORKER_IMPORTS:  # imported once here, not once in each worker
        importlib.import_module(module)
    ctx = multiprocessing.get_context("fork")
    todo, done = ctx.SimpleQueue(), ctx.Queue()
    for i in [*range(len(tasks)), *[None] * jobs]:
        todo.put(i)
    workers = [ctx.Process(target=_forked_worker, args=(os.getpid(), tasks, todo, done, rows), daemon=True)
               for _ in range(min(jobs, len(tasks)))]  # fmt: skip
    for w in workers:
        w.start()
    out: list[Any] = [None] * len(tasks)
    left = len(tasks)
    try:
        while left:
            try:
                i, result = done.get(timeout=1.0)
            except queue.Empty:
                dead = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
                if dead or not any(w.is_alive() for w in workers):
                    raise RuntimeError(
                        f"an ablation worker process ended early (exit codes {dead}); re-run to resume"
                    ) from None
                continue
            if isinstance(result, BaseException):
                raise result
            out[i], left = result, left - 1
            bar.update(_count(result))
    finally:
        for w in workers:
            if w.is_alive() and left:
                w.kill()
            w.join()
    return out


def _forked_worker(parent: int, tasks: list[tuple[str, tuple]], todo: Any, done: Any, rows: Any) -> None:
    """A forked worker's loop: take a task index, run the bank, send its results (or the exception)."""
    _exit_with_parent(parent)
    while (i := todo.get()) is not None:
        try:
            result = execute_bank(*tasks[i][1], rows=rows)
        except BaseException as err:  # handed to the main process, raised there
            result = RuntimeError(f"{type(err).__name__}: {err}")
        done.put((i, result))


def _run_dask(
    tasks: list[tuple[str, tuple]], *, workers: int, scheduler: str | None, out_dir: Path, bar: Any
) -> list[Any]:
    from aigi.pipeline.distributed import dask_client, map_tasks, task_key

    keyed = [(task_key("ablate", out_dir, key), args) for key, args in tasks]
    with dask_client(workers=workers, scheduler=scheduler) as client:
        return map_tasks(client, execute_bank, keyed, on_done=lambda _k, r: bar.update(_count(r)))


def prefetch(plan: AblationPlan, pending: set[str], steps: RunSteps) -> Any:
    """A `pipeline.rows.RowStore` holding the caches, training / validation rows and evaluated rows of the pending
    runs, read once here before the workers fork (they share these pages)."""
    from aigi.pipeline.rows import RowStore

    store = RowStore()
    split = getattr(steps.eval_options, "split", None)
    with store.ahead():
        _read_ahead(store, plan, pending, split)
    return store


def _read_ahead(store: Any, plan: AblationPlan, pending: set[str], split: str | None) -> None:
    from aigi.pipeline.rows import hold_choice, load_rows, open_caches, same_rows, train_val_rows

    seen = set()
    for r in plan.runs:
        cfg = r.parsed
        key = (same_rows(cfg), tuple(cfg.head.inputs))
        if r.run_id not in pending or key in seen or split == "all":
            continue
        seen.add(key)
        caches, data = open_caches(cfg.data.caches, store=store), cfg.data
        train_val_rows(caches, data, inputs=list(dict.fromkeys(i for s in plan.runs for i in s.parsed.head.inputs)),
                       store=store)  # fmt: skip
        where = {**data.where, data.split_column: split or data.test}
        hold = hold_choice(caches, data, inputs=cfg.head.inputs, where=where)
        if hold.mode != "stream":
            load_rows(caches, inputs=cfg.head.inputs, where=where, domains=data.domains, hold=hold, join=data.join,
                      store=store)  # fmt: skip


def run_ablation(
    plan: AblationPlan, out_dir: str | Path, steps: RunSteps, options: AblateOptions = AblateOptions()
) -> AblationResult:
    """Run every unfinished run of `plan` into OUT_DIR/runs/ as banks (`bank_tasks`), then write results.parquet,
    summary.md and summary.png.

    With one job the banks run here one after another over rows read once. With `--jobs N` they run on N worker
    processes, each taking the next bank when it finishes one: forked from this process after it read the rows
    (Linux; the workers share those pages), else loky processes that read the rows themselves. With dask, each bank
    is a task. A run that fails is listed with its reason at the end of summary.md; the others finish.

    Args:
        plan: from `expand` / `load_ablation`.
        out_dir: the ablation directory.
        steps: the train and eval stages each run runs (`RunSteps`).
        options: local processes or dask, and progress (`AblateOptions`).
    """
    from aigi.common.progress import progress

    out = Path(out_dir)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    threads = None if options.scheduler else max(1, _cores() // max(options.workers or options.jobs, 1))
    finished = {r.run_id: read_result(out / "runs" / r.run_id) for r in plan.runs}
    pending = {key for key, r in finished.items() if r is None}
    tasks = bank_tasks(plan, out, pending, threads, steps)
    results = {key: {**r, "skipped": True} for key, r in finished.items() if r is not None}
    desc = f"ablate ({len(results)} of {len(plan.runs)} runs already done)" if results else "ablate"
    with progress(total=len(pending), desc=desc, unit="run", quiet=not options.progress) as bar:
        if tasks and options.dask:
            new = _run_dask(tasks, workers=options.workers, scheduler=options.scheduler, out_dir=out, bar=bar)
        elif tasks and options.jobs > 1 and len(tasks) > 1 and "fork" in _start_methods():
            new = _run_forked(tasks, jobs=options.jobs, bar=bar, rows=prefetch(plan, pending, steps))
        elif tasks and options.jobs > 1:
            new = _run_local(tasks, jobs=options.jobs, bar=bar, threads=threads or 1)
        else:
            store = prefetch(plan, pending, steps) if tasks else None
            new = [execute_bank(*args, rows=store) for _, args in tasks]
            bar.update(sum(_count(r) for r in new))
    for (_, (runs, _, _)), done in zip(tasks, new, strict=True):
        results.update({identity["run_id"]: r for (_, _, identity), r in zip(runs, done, strict=True)})
    return _report(plan, out, [results[r.run_id] for r in plan.runs])


def _start_methods() -> list[str]:
    import multiprocessing

    return multiprocessing.get_all_start_methods()


def _report(plan: AblationPlan, out: Path, results: list[dict]) -> AblationResult:
    """results.parquet, summary.md (failed runs listed at its end) and summary.png of the finished runs."""
    from aigi.pipeline.report import ablation_summary, ablation_table, write_ablation_report

    failed = [r for r in results if "error" in r]
    ok = [r for r in results if "error" not in r]
    if not ok:
        first = "; ".join(f"{r['run_id']}: {r['error']}" for r in failed[:3])
        raise ValueError(f"every run of the ablation failed ({len(failed)}): {first}")
    ran = sum(not r.get("skipped") for r in ok)
    table = ablation_table(ok, grid_keys=plan.grid_keys)
    summary = ablation_summary(table, sort_by=plan.sort_by)
    files = write_ablation_report(out, table=table, summary=summary, sort_by=plan.sort_by)
    if failed:
        lines = ["", f"## Failed runs ({len(failed)})", "", *[f"- `{r['run_id']}`: {r['error']}" for r in failed]]
        text = files["summary"].read_text(encoding="utf-8").rstrip("\n") + "\n" + "\n".join(lines) + "\n"
        atomic_write(files["summary"], text)
    return AblationResult(ran=ran, skipped=len(ok) - ran, results=table, summary=summary, files=files,
                          failed=failed)  # fmt: skip
