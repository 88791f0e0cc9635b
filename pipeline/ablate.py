"""The ablate stage: expand a grid of run configs x seeds, train and evaluate each once (resumably, in parallel),
tabulate.

An ablation config is a run config plus `variants` (named sets of dotted-key overrides), `grid` ({KEY: [VALUE, ...]},
crossed with every variant), `seeds`, `sort_by` and `eval_views`; overrides apply in the order base config -> variant
-> grid point -> seed. Each run is one resolved config, its id a readable name + 8 hex of the config's sha256; it
trains and evaluates in DIR/runs/RUN_ID/ and writes result.json last, atomically, so a re-run skips finished runs.

This module imports no other stage: the caller hands it the train and eval stages to run (`RunSteps`).
"""

from __future__ import annotations

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
SHARED_STAGES = "shared_stages"  # finished expert stages the runs share (pipeline.streaming.DiskStages)
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
    """The two stages an ablation runs for each config, and their options; the caller gives them (the command line:
    `pipeline.train.train_run` with its `TrainOptions`, `pipeline.evaluate.evaluate_run` with its `EvalOptions`), so
    this module imports no other stage. They travel to worker processes, so they are module-level functions.

    Attributes:
        train: `train(config, run_dir, options=train_options)` -> a result with val_metrics, train_rows, val_rows,
            seconds, stages.
        evaluate: `evaluate(run_dir, out_dir, eval_options, config=config)` -> a result with `metrics`.
        train_options: passed to `train`.
        eval_options: passed to `evaluate`, with `plots` off and `where` set per evaluated view (a dataclass).
    """

    train: Callable[..., Any]
    evaluate: Callable[..., Any]
    train_options: Any
    eval_options: Any


@dataclass(frozen=True)
class AblationResult:
    """What `run_ablation` ran and wrote.

    Attributes:
        ran, skipped: runs executed now / found finished.
        results: one row per run (results.parquet).
        summary: mean and std over seeds per setting, best first (summary.md).
        files: name -> path of results.parquet, summary.md and summary.png (with the `plots` extra).
    """

    ran: int
    skipped: int
    results: Any
    summary: Any
    files: dict[str, Path]


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
# one run (runs in a worker process)


def read_result(run_dir: str | Path) -> dict[str, Any] | None:
    """The finished result of a run directory, or None when the run has not finished."""
    path = Path(run_dir) / RESULT_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def execute_run(
    run_dir: str,
    config: RunConfig | Mapping[str, Any],
    identity: dict[str, Any],
    threads: int | None = None,
    steps: RunSteps | None = None,
) -> dict:
    """Train and evaluate one resolved config in `run_dir` with `steps`; skip it when its result exists.

    Idempotent: a finished run returns its stored result (with "skipped": True); leftovers of an unfinished
    attempt are removed first. Safe to retry after a worker dies.

    Args:
        run_dir: the run's directory (DIR/runs/RUN_ID).
        config: the run's `RunConfig` (or its plain-data form, `pipeline.config.to_dict`, parsed here).
        identity: run_id, setting, variant, values, seed (copied into the result).
        threads: torch threads for this process (None: leave as is).
        steps: the train and eval stages to run (required unless the run is finished).
    """
    done = read_result(run_dir)
    if done is not None:
        return {**done, "skipped": True}
    from aigi.cache.locking import folder_lock

    if steps is None:
        raise TypeError("execute_run needs the train and eval stages (steps=RunSteps(...)) to run an unfinished run")
    # one process per run: a re-run waits for a live process still working on it instead of deleting its folder
    with folder_lock(Path(run_dir).parent, f".{Path(run_dir).name}.lock"):
        done = read_result(run_dir)
        if done is not None:
            return {**done, "skipped": True}
        return _train_and_evaluate(run_dir, config, identity, threads, steps)


def _view_folder(view: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]", "_", view)


def _train_and_evaluate(
    run_dir: str, config: RunConfig | Mapping[str, Any], identity: dict[str, Any], threads: int | None, steps: RunSteps
) -> dict:
    """The body of `execute_run`, holding the run's lock: a fresh run folder, train, evaluate, write the result."""
    import torch

    from aigi.common.provenance import code_revision
    from aigi.pipeline import streaming
    from aigi.pipeline.config import parse_config

    path = Path(run_dir)
    # every run of this worker process reuses loaded rows; workers share finished expert stages through files
    streaming.REUSE, streaming.STAGE_DIR = True, str(path.parent.parent / SHARED_STAGES)
    if path.exists():
        shutil.rmtree(path)
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    loads = dict(streaming.ROW_LOADS)
    eval_options = dataclasses.replace(steps.eval_options, plots=False)  # plots cost seconds per run
    try:
        start, cpu = time.perf_counter(), time.process_time()
        cfg = config if isinstance(config, RunConfig) else parse_config(config, source=f"{path}/config.yaml")
        trained = steps.train(cfg, path, options=steps.train_options)
        evaluated = time.perf_counter()
        metrics = steps.evaluate(path, path / "eval", eval_options, config=cfg).metrics
        views = {
            v: steps.evaluate(path, path / "eval_views" / _view_folder(v),
                              dataclasses.replace(eval_options, where=(f"view={v}",)), config=cfg).metrics["mean"]
            for v in identity.get("eval_views") or []
        }  # fmt: skip
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        torch.set_num_threads(previous)
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
        "seconds": seconds,
        "row_sets": {k: v - loads[k] for k, v in streaming.ROW_LOADS.items()},  # read from disk / reused here
        "cpu_seconds": cpu,  # CPU time of the run in this process (all threads): a busy machine changes it little
        "stage_seconds": {**trained.stages, "eval": start + seconds - evaluated},
        "threads": torch.get_num_threads() if not threads else threads,
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


def _tasks(plan: AblationPlan, out_dir: Path, threads: int | None, steps: RunSteps) -> list[tuple[str, tuple]]:
    tasks = []
    for r in plan.runs:
        identity = {"run_id": r.run_id, "setting": r.setting, "variant": r.variant, "values": r.values, "seed": r.seed}
        if plan.eval_views:
            identity["eval_views"] = list(plan.eval_views)
        run_dir = str(out_dir / "runs" / r.run_id)
        tasks.append((r.run_id, (run_dir, r.parsed or r.config, identity, threads, steps)))
    return tasks


_WATCHED: list[int] = []


def _exit_with_parent(parent: int) -> None:
    """In a worker process: end it (os._exit) soon after process `parent` is gone. Started once per process."""
    import threading

    from aigi.cache.locking import pid_alive

    if _WATCHED:
        return
    _WATCHED.append(parent)

    def watch() -> None:
        while pid_alive(parent) and os.getppid() != 1:
            time.sleep(0.5)
        os._exit(1)  # the main process died: do not go on with queued runs

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


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


def _watched_run(parent: int, run: Any, *args: Any) -> dict:
    """`run(*args)` (`execute_run`) in a joblib worker that ends with the main process `parent` and is kept
    for the next runs however its memory grew."""
    _exit_with_parent(parent)
    _keep_worker()
    return run(*args)


def _run_local(tasks: list[tuple[str, tuple]], *, jobs: int, bar: Any, run: Any = execute_run) -> list[dict]:
    """`run(*args)` for every task (in order with one job, else on `jobs` loky processes); results in task order
    (each result's "run_id" is its task's key)."""
    if jobs <= 1:
        results = []
        for _, args in tasks:
            results.append(run(*args))
            bar.update(1)
        return results
    from joblib import Parallel, delayed, parallel_config

    threads = tasks[0][1][3] if tasks else 1
    order = {key: i for i, (key, _) in enumerate(tasks)}
    out: list[dict | None] = [None] * len(tasks)
    with parallel_config(backend="loky", inner_max_num_threads=threads):
        parent = os.getpid()
        gen = Parallel(n_jobs=jobs, return_as="generator_unordered")(
            delayed(_watched_run)(parent, run, *a) for _, a in tasks
        )
        for result in gen:
            out[order[result["run_id"]]] = result
            bar.update(1)
    return [r for r in out if r is not None]


def _run_dask(tasks: list[tuple[str, tuple]], *, workers: int, scheduler: str | None, out_dir: Path, bar: Any):
    from aigi.pipeline.distributed import dask_client, map_tasks, task_key

    keyed = [(task_key("ablate", out_dir, key), args) for key, args in tasks]
    with dask_client(workers=workers, scheduler=scheduler) as client:
        return map_tasks(client, execute_run, keyed, on_done=lambda _k, _r: bar.update(1))


def run_ablation(
    plan: AblationPlan, out_dir: str | Path, steps: RunSteps, options: AblateOptions = AblateOptions()
) -> AblationResult:
    """Run every unfinished run of `plan` into OUT_DIR/runs/, then write results.parquet, summary.md, summary.png.

    Args:
        plan: from `expand` / `load_ablation`.
        out_dir: the ablation directory.
        steps: the train and eval stages each run runs (`RunSteps`).
        options: local processes or dask, and progress (`AblateOptions`).
    """
    from aigi.common.progress import progress
    from aigi.pipeline.report import ablation_summary, ablation_table, write_ablation_report

    out = Path(out_dir)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    threads = None if options.scheduler else max(1, _cores() // max(options.workers or options.jobs, 1))
    finished = {r.run_id: read_result(out / "runs" / r.run_id) for r in plan.runs}
    pending = [(key, args) for key, args in _tasks(plan, out, threads, steps) if finished[key] is None]
    results = {key: {**r, "skipped": True} for key, r in finished.items() if r is not None}
    desc = f"ablate ({len(results)} of {len(plan.runs)} runs already done)" if results else "ablate"
    with progress(total=len(pending), desc=desc, unit="run", quiet=not options.progress) as bar:
        if pending and options.dask:
            new = _run_dask(pending, workers=options.workers, scheduler=options.scheduler, out_dir=out, bar=bar)
        else:
            new = _run_local(pending, jobs=options.jobs, bar=bar) if pending else []
    results.update({key: r for (key, _), r in zip(pending, new, strict=True)})
    results = [results[r.run_id] for r in plan.runs]
    ran = sum(not r.get("skipped") for r in results)
    table = ablation_table(results, grid_keys=plan.grid_keys)
    summary = ablation_summary(table, sort_by=plan.sort_by)
    files = write_ablation_report(out, table=table, summary=summary, sort_by=plan.sort_by)
    return AblationResult(ran=ran, skipped=len(results) - ran, results=table, summary=summary, files=files)
