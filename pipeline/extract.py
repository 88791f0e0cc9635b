"""The extract stage: manifest rows x views -> frozen-backbone features -> cache shards, resumable and batched."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from aigi.common.extras import require
from aigi.common.files import atomic_path
from aigi.common.grammar import parse_views
from aigi.common.progress import SHORT_WORK_S, progress

LOG = logging.getLogger(__name__)
JOBS_DIR = "jobs"
KEY_COLUMNS = ["image_id", "view"]
FORMATS = ("h5", "parquet")
DTYPES = ("auto", "fp32", "bf16", "fp16")
STORE_DTYPES = ("float16", "float32")
DECODES = ("auto", "cpu", "device")


@dataclass(frozen=True)
class ExtractOptions:
    """Everything an extract run needs (the defaults are `aigi extract`'s); picklable, so a dask worker can rebuild
    the same extractor from it.

    Attributes:
        manifest: the manifest file (`aigi index`, `aigi fakes`).
        backbone: the extractor, e.g. clip-l14, aim-v1-3b, timm:vit_base_patch16_224.
        cache: the cache folder to create or extend.
        root: the folder the manifest's paths are relative to (default: the manifest's folder).
        weights: a local weights file of the backbone, or a name (`hf-hub:ORG/REPO[:FILE][@REVISION]`, an alias
            such as `openai`) that `extractors.build` resolves through huggingface_hub's cache.
        random_weights: extract with a randomly initialised backbone on purpose; without it `weights` is required
            (features of an untrained backbone look like real ones), with it `weights` must be None.
        features: the feature names to store (default: the backbone's).
        preprocess: resize | center_crop | rich_patch (default: the backbone's).
        views: the views of each image (orig, jpeg:Q, webp:Q, blur:SIGMA, resize:SCALE, crop:FRACTION).
        fmt: the shard format, h5 or parquet.
        shard_size: rows per shard (the unit of resume and distribution).
        batch_size: images per forward.
        num_workers: processes decoding images, "auto" (this device's share of the cores, see
            `extractors.loader.auto_workers`) or a count (0: decode in this process, between forwards).
        device: auto (CUDA when present), cpu, cuda, cuda:1, ...
        dtype: the compute dtype (auto, fp32, bf16, fp16).
        store_dtype: the dtype the cache stores (recorded in the fingerprint); float32 keeps the forward's values.
        workers: run the shards on a local dask cluster of this many processes (0: in this process).
        scheduler: run the shards on an existing dask cluster, e.g. tcp://host:8786.
        arch: architecture keywords of the extractor (e.g. a timm model's).
        decode: where JPEGs are decoded: "device" (in batches on the extraction device: nvjpeg on CUDA, torchvision's
            decoder on the CPU), "cpu" (Pillow in the workers), "auto" (device on CUDA, else cpu). Other formats,
            views other than orig and files the device refuses are decoded by Pillow.
        compile: `torch.compile` the backbone's forward.
        devices: one worker per device on a local dask cluster: "all" (every visible GPU) or a list
            ("cuda:0,cuda:1"; "cpu,cpu" runs two CPU workers); the devices split the shards through their claims.
    """

    manifest: str
    backbone: str
    cache: str
    root: str | None = None
    weights: str | None = None
    random_weights: bool = False
    features: tuple[str, ...] | None = None
    preprocess: str | None = None
    views: tuple[str, ...] = ("orig",)
    fmt: str = "h5"
    shard_size: int = 1024
    batch_size: int = 32
    num_workers: int | str = "auto"
    device: str = "auto"
    dtype: str = "auto"
    store_dtype: str = "float16"
    workers: int = 0
    scheduler: str | None = None
    arch: dict = field(default_factory=dict)
    decode: str = "auto"
    compile: bool = False
    devices: str | None = None

    def __post_init__(self) -> None:
        """Checks the weights choice; paths as text, the root resolved (the manifest's folder by default), views in
        their canonical spelling."""
        check_weights_choice(self.weights, self.random_weights)
        check_run_choices(self)
        fixed = {
            "manifest": str(self.manifest),
            "cache": str(self.cache),
            "root": str(Path(self.root) if self.root else Path(self.manifest).parent),
            "weights": None if self.weights is None else str(self.weights),
            "features": None if self.features is None else tuple(self.features),
            "views": tuple(parse_views(self.views)),
            "num_workers": parse_workers(self.num_workers),
        }
        for name, value in fixed.items():
            object.__setattr__(self, name, value)

    @property
    def on_dask(self) -> bool:
        """Whether the shards run on dask (`workers`, `scheduler` or `devices` given)."""
        return bool(self.workers or self.scheduler or self.devices)

    def extractor_kwargs(self) -> dict:
        """The keywords of `extractors.build` besides the backbone's name."""
        feats = list(self.features) if self.features else None
        return dict(
            weights=self.weights,
            features=feats,
            preprocess=self.preprocess,
            device=self.device,
            dtype=self.dtype,
            **self.arch,
        )


@dataclass
class ExtractResult:
    """What `extract_features` did: one record per shard of the job (`shard`, `rows`, `errors`, `skipped`, and
    `elsewhere` when another running process extracts it), the seconds taken, of which `startup_seconds` before the
    extraction began (manifest, plan, and in one process the backbone's build), and the cache."""

    shards: list[dict]
    seconds: float
    cache: str
    startup_seconds: float = 0.0

    @property
    def done(self) -> list[dict]:
        """The shards this run extracted."""
        return [r for r in self.shards if not r["skipped"]]

    @property
    def rows(self) -> int:
        """Rows written by this run."""
        return sum(r["rows"] for r in self.done)

    @property
    def errors(self) -> int:
        """Images of this run that failed (recorded in shards/*.errors.json)."""
        return sum(r["errors"] for r in self.done)

    @property
    def elsewhere(self) -> int:
        """Shards being extracted by another running process."""
        return sum(bool(r.get("elsewhere")) for r in self.shards)

    @property
    def already_done(self) -> int:
        """Shards finished before this run."""
        return len(self.shards) - len(self.done) - self.elsewhere

    @property
    def rate(self) -> float:
        """Images (written or failed) per second, start-up included."""
        return (self.rows + self.errors) / self.seconds if self.seconds > 0 else float("nan")

    @property
    def extract_rate(self) -> float:
        """Images (written or failed) per second of extraction (decoding, forward, writing: after the start-up)."""
        seconds = self.seconds - self.startup_seconds
        return (self.rows + self.errors) / seconds if seconds > 0 else float("nan")

    @property
    def steady_rate(self) -> float:
        """Images per second between the first and the last shard this run wrote (the pipeline full: no start-up, no
        warm-up of the workers); NaN with fewer than two shards."""
        times = sorted((r["written_at"], r["rows"] + r["errors"]) for r in self.done if "written_at" in r)
        if len(times) < 2 or times[-1][0] <= times[0][0]:
            return float("nan")
        return sum(n for _, n in times[1:]) / (times[-1][0] - times[0][0])


# ---------------------------------------------------------------------------------------------------- planning


def _key_digest(keys: pd.DataFrame) -> str:
    h = hashlib.sha256()
    for image_id, view in zip(keys["image_id"].astype(str), keys["view"].astype(str)):
        h.update(f"{image_id}\t{view}\n".encode())
    return h.hexdigest()


def plan_rows(manifest: pd.DataFrame, views: tuple[str, ...]) -> pd.DataFrame:
    """Every (image, view) row of the job in a deterministic order: image_id, then the views as given."""
    base = manifest.sort_values("image_id", kind="stable").reset_index(drop=True)
    parts = [base.assign(view=v, _vorder=i) for i, v in enumerate(views)]
    rows = pd.concat(parts, ignore_index=True).sort_values(["image_id", "_vorder"], kind="stable")
    return rows.drop(columns="_vorder").reset_index(drop=True)


def load_or_create_job(cfg: ExtractOptions, rows: pd.DataFrame, cached_keys: set[tuple[str, str]]) -> dict:
    """The job's plan: which rows go to which shard. Re-running the same job finds and reuses its plan.

    A job is identified by the digest of its full (image_id, view) list. Rows already in the cache from another job
    are left out; the rest is cut into shards numbered after every shard, claim and other plan of the cache. The
    plan is made once, under the cache's lock, and written before any work, so a resumed, distributed or second
    concurrent run of the same job cuts exactly the same shards.
    """
    from aigi.cache.writer import job_plan

    cache_dir = Path(cfg.cache)
    digest = _key_digest(rows)[:16]
    keys_file = cache_dir / JOBS_DIR / f"{digest}.keys.parquet"

    def make(first: int) -> dict:
        todo = rows[[k not in cached_keys for k in zip(rows["image_id"].astype(str), rows["view"].astype(str))]]
        with atomic_path(keys_file) as tmp:  # the keys first: a plan on disk always has its keys
            todo[KEY_COLUMNS].reset_index(drop=True).astype(str).to_parquet(tmp, index=False)
        return {
            "job": digest,
            "first_shard": first,
            "n_shards": -(-len(todo) // cfg.shard_size),
            "shard_size": cfg.shard_size,
            "rows": len(todo),
            "skipped_already_cached": len(rows) - len(todo),
        }

    plan = job_plan(cache_dir, digest, make)
    if not keys_file.is_file():
        raise FileNotFoundError(f"{keys_file} is missing beside its plan; delete {keys_file.with_suffix('')}.json "
                                "(and the job's shards, or run `aigi cache repair`) to plan the job again")  # fmt: skip
    plan["keys"] = pd.read_parquet(keys_file)
    return plan


def shard_tasks(plan: dict, rows: pd.DataFrame) -> list[tuple[int, pd.DataFrame]]:
    """(shard index, its manifest rows in plan order) for every shard of the plan."""
    indexed = rows.set_index(KEY_COLUMNS, drop=False)
    keys = plan["keys"]
    ordered = indexed.loc[list(zip(keys["image_id"], keys["view"]))].reset_index(drop=True)
    size = plan["shard_size"]
    return [
        (plan["first_shard"] + i, ordered.iloc[i * size : (i + 1) * size].reset_index(drop=True))
        for i in range(plan["n_shards"])
    ]


# ---------------------------------------------------------------------------------------------------- running


def parse_workers(value: int | str) -> int | str:
    """`auto` or a count >= 0 (what `--num-workers` accepts).

    Raises:
        ValueError: anything else.
    """
    if str(value).strip() == "auto":
        return "auto"
    try:
        count = int(str(value).strip())
    except ValueError:
        count = -1
    if count < 0:
        raise ValueError(f"--num-workers must be auto or a count >= 0, got {value!r}")
    return count


def check_run_choices(cfg: ExtractOptions) -> None:
    """Refuse settings that exclude each other (one line naming the fix)."""
    if cfg.decode not in DECODES:
        raise ValueError(f"--decode must be one of {', '.join(DECODES)}, got {cfg.decode!r}")
    if cfg.devices is not None and (cfg.workers or cfg.scheduler):
        raise ValueError("--devices runs its own local cluster; give --devices or --workers / --scheduler, not both")
    if cfg.devices is not None and str(cfg.device) != "auto":
        raise ValueError("give --device (one device) or --devices (one worker per device), not both")
    if cfg.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {cfg.batch_size}")


_EXTRACTORS: dict[str, object] = {}


def get_extractor(cfg: ExtractOptions) -> Any:
    """Build the backbone once per process and configuration (dask workers reuse it across shard tasks); on a GPU it
    runs in the channels_last layout, compiled when `cfg.compile`."""
    from aigi import extractors

    fields = (cfg.backbone, cfg.weights, cfg.features, cfg.preprocess, cfg.device, cfg.dtype, cfg.arch, cfg.compile)
    key = json.dumps(fields)
    if key not in _EXTRACTORS:
        _EXTRACTORS.clear()  # one backbone in memory at a time
        extractor = extractors.build(cfg.backbone, **cfg.extractor_kwargs())
        extractor.tune(channels_last=extractor.device.type == "cuda", compile=cfg.compile)
        _EXTRACTORS[key] = extractor
    return _EXTRACTORS[key]


def cache_spec(extractor: Any, store_dtype: str, cache_dir: str | Path | None = None) -> dict:
    """The spec a cache of these features records: the extractor's, plus the storage dtype (float16 rounds the
    forward's values, float32 keeps them), so that the two never share a fingerprint.

    A cache written before the storage dtype was recorded keeps its spec when its stored dtype is the one asked,
    so that its extraction still resumes.
    """
    from aigi.cache.writer import CACHE_JSON, read_cache_json

    spec = asdict(extractor.spec)
    if cache_dir is not None and (Path(cache_dir) / CACHE_JSON).exists():
        header = read_cache_json(Path(cache_dir))
        if header["spec"] == json.loads(json.dumps(spec)) and header["dtype"] == store_dtype:
            return spec
    return {**spec, "storage_dtype": store_dtype}


def _writer(cfg: ExtractOptions, extractor: Any) -> Any:
    from aigi.cache import CacheWriter

    return CacheWriter(
        cfg.cache,
        spec=cache_spec(extractor, cfg.store_dtype, cfg.cache),
        features=dict(extractor.feature_shapes),
        fmt=cfg.fmt,
        shard_size=cfg.shard_size,
        dtype=cfg.store_dtype,
    )


def stream_settings(cfg: ExtractOptions, extractor: Any, *, devices: int = 1, threads: bool = False) -> Any:
    """How this process decodes and forwards: `auto` workers resolved for its device (and `devices` sharing the
    machine), JPEGs decoded on a CUDA device unless `--decode cpu`, two batches in flight on a GPU."""
    from aigi.extractors.loader import auto_workers
    from aigi.pipeline.shards import StreamSettings

    kind = extractor.device.type
    workers = auto_workers(kind, devices=devices) if cfg.num_workers == "auto" else int(cfg.num_workers)
    return StreamSettings(
        root=cfg.root,
        batch_size=cfg.batch_size,
        workers=workers,
        threads=threads,
        decode_on_device=cfg.decode == "device" or (cfg.decode == "auto" and kind == "cuda"),
        depth=2 if kind == "cuda" else 0,
        tune_threads=kind == "cpu",
    )


def run_shard(
    cfg: ExtractOptions, index: int, rows: pd.DataFrame, on_images: Callable[[int], None] | None = None
) -> dict:
    """Extract one shard (a dask task of `--workers` / `--scheduler`; decoding in threads, as a dask worker may not
    start processes) and write it atomically; a finished shard is skipped. Returns counts for the summary."""
    from aigi.pipeline.shards import extract_shards

    extractor = get_extractor(cfg)
    settings = stream_settings(cfg, extractor, threads=True)
    if cfg.num_workers == "auto":  # this worker's share of the machine: the threads dask gave it
        settings = replace(settings, workers=max(1, _torch_threads()))
    return extract_shards(extractor, _writer(cfg, extractor), [(index, rows)], settings, on_images)[0]


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def prepare(cfg: ExtractOptions) -> tuple[list[tuple[int, pd.DataFrame]], dict]:
    """Read the manifest, plan the job (or find its plan), and list the shard tasks."""
    from aigi.cache import read_manifest

    manifest = read_manifest(cfg.manifest)
    if manifest.empty:
        raise ValueError(f"{cfg.manifest} has no rows: nothing to extract")
    rows = plan_rows(manifest, cfg.views)
    cached = set()
    cache_dir = Path(cfg.cache)
    if (cache_dir / "cache.json").exists():
        from aigi import cache as cache_pkg

        meta = cache_pkg.open(cache_dir).meta()
        cached = set(zip(meta["image_id"].astype(str), meta["view"].astype(str)))
    plan = load_or_create_job(cfg, rows, cached)
    return shard_tasks(plan, rows), plan


def run_local(cfg: ExtractOptions, tasks: list[tuple[int, pd.DataFrame]]) -> list[dict]:
    """Run the shard tasks in this process (decoding workers beside it), reporting progress over images."""
    from aigi.pipeline.shards import extract_shards

    extractor = get_extractor(cfg)
    writer = _writer(cfg, extractor)  # writes or checks cache.json before any work (fingerprint guard)
    total = sum(len(r) for _, r in tasks)
    with progress(total=total, unit="img", desc=f"extract {cfg.backbone}", delay_s=SHORT_WORK_S) as bar:
        return extract_shards(extractor, writer, tasks, stream_settings(cfg, extractor), on_images=bar.update)


def run_dask(cfg: ExtractOptions, tasks: list[tuple[int, pd.DataFrame]]) -> list[dict]:
    """Extract every shard task on dask; the driver writes `cache.json` first and reports progress over images."""
    from aigi.pipeline.distributed import dask_client, map_tasks, task_key

    _writer(cfg, get_extractor(cfg))  # cache.json and the fingerprint guard, before any worker writes a shard
    resources = {"GPU": 1} if str(cfg.device).startswith("cuda") else None
    total = sum(len(rows) for _, rows in tasks)
    keyed = [(task_key("extract", cfg.cache, f"{index:05d}"), (cfg, index, rows)) for index, rows in tasks]
    with (
        dask_client(workers=cfg.workers, scheduler=cfg.scheduler) as client,
        progress(total=total, unit="img", desc=f"extract {cfg.backbone} (dask)", delay_s=SHORT_WORK_S) as bar,
    ):
        sizes = {key: len(args[2]) for key, args in keyed}
        return map_tasks(client, run_shard, keyed, resources=resources, on_done=lambda k, _: bar.update(sizes[k]))


def device_worker(cfg: ExtractOptions, devices: list[str], tasks: list[tuple[int, pd.DataFrame]]) -> dict:
    """A dask task of `--devices`: this worker's device (worker k of the cluster drives `devices[k]`) extracts every
    shard of the plan it can claim. A user's mistake comes back as {"error": message}, not retried."""
    from distributed import get_worker

    from aigi.pipeline.shards import extract_shards

    device = devices[int(get_worker().name) % len(devices)]
    if device.startswith("cuda"):
        import torch

        torch.cuda.set_device(device)  # before anything touches CUDA: no context on another GPU
    mine = replace(cfg, device=device, devices=None)
    try:
        extractor = get_extractor(mine)
        writer = _writer(mine, extractor)
        settings = stream_settings(mine, extractor, devices=len(devices))
        return {"device": device, "records": extract_shards(extractor, writer, tasks, settings)}
    except ValueError as err:
        return {"device": device, "error": str(err)}


def merge_records(tasks: list[tuple[int, pd.DataFrame]], per_worker: list[list[dict]]) -> list[dict]:
    """One record per shard from every worker's records: the worker that extracted it, else the first record."""
    merged = []
    for pos in range(len(tasks)):
        records = [records[pos] for records in per_worker]
        mine = [r for r in records if not r["skipped"]]
        merged.append(mine[0] if mine else records[0])
    return merged


def run_devices(cfg: ExtractOptions, tasks: list[tuple[int, pd.DataFrame]]) -> list[dict]:
    """`--devices`: one dask worker per device on this machine, each running `device_worker` over the whole plan;
    the shard claims split the shards between them. Progress follows the shards committed."""
    from aigi.common.device import parse_devices

    devices = parse_devices(cfg.devices)
    if len(devices) == 1:
        return run_local(replace(cfg, device=devices[0], devices=None), tasks)
    from aigi.pipeline.distributed import device_cluster, poll_tasks, task_key

    total = sum(len(rows) for _, rows in tasks)
    keyed = [(task_key("extract", cfg.cache, f"device{k}"), (cfg, devices, tasks)) for k in range(len(devices))]
    desc = f"extract {cfg.backbone} ({len(devices)} devices)"
    with (
        device_cluster(len(devices)) as client,
        progress(total=total, unit="img", desc=desc, delay_s=SHORT_WORK_S) as bar,
    ):
        committed = _commit_counter(cfg.cache, tasks, bar.update)
        results = poll_tasks(client, device_worker, keyed, resources={"DEVICE": 1}, every=committed)
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise ValueError(errors[0])
    return merge_records(tasks, [r["records"] for r in results])


def _commit_counter(cache_dir: str, tasks: list[tuple[int, pd.DataFrame]], update: Callable[[int], None]) -> Callable:
    """A callable that reports the rows of the shards committed since it last ran."""
    from aigi.cache.writer import read_index

    sizes = {f"{index:05d}": len(rows) for index, rows in tasks}
    seen: set[str] = set()

    def count() -> None:
        for name in read_index(Path(cache_dir)) or {}:
            stem = name.split(".")[0]
            if stem in sizes and stem not in seen:
                seen.add(stem)
                update(sizes[stem])

    return count


def check_weights_choice(weights: str | None, random_weights: bool) -> None:
    """Refuse to extract with random weights unless asked: features of an untrained backbone look like real ones."""
    if weights and random_weights:
        raise ValueError("--weights and --random-weights exclude each other; pass one of them")
    if not weights and not random_weights:
        raise ValueError(
            "no --weights: the backbone would run with random weights; pass --weights FILE (or a name: "
            "hf-hub:ORG/REPO[:FILE], an alias such as openai; docs/WEIGHTS.md), or --random-weights to extract "
            "features of a randomly initialised backbone on purpose"
        )


def fail_if_all_failed(cfg: ExtractOptions, tasks: list[tuple[int, pd.DataFrame]]) -> None:
    """When every image of this job failed, remove what the job wrote (a re-run after fixing the images or the
    manifest's paths then extracts them) and raise with the first reasons."""
    import shutil

    planned = sum(len(rows) for _, rows in tasks)
    shards = Path(cfg.cache) / "shards"
    errors: list[dict] = []
    for index, _ in tasks:
        listing = shards / f"{index:05d}.errors.json"
        if listing.is_file():
            errors += json.loads(listing.read_text())
    if not planned or len(errors) < planned:
        return
    from aigi.cache.writer import INDEX_JSON, drop_shards

    left = drop_shards(Path(cfg.cache), [index for index, _ in tasks])
    jobs = Path(cfg.cache) / JOBS_DIR
    if not left:  # the cache holds nothing else: remove what this run made
        shutil.rmtree(jobs, ignore_errors=True)
        for name in ("cache.json", INDEX_JSON, ".lock"):
            (Path(cfg.cache) / name).unlink(missing_ok=True)
        for folder in (shards, Path(cfg.cache)):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
    first = "; ".join(f"{e.get('path')}: {e.get('reason')}" for e in errors[:3])
    raise ValueError(
        f"every one of the {planned} image(s) failed ({first}); nothing was extracted. Fix the images, or the "
        f"manifest's paths (read relative to {cfg.root}; see --root), and re-run"
    )


def extract_features(options: ExtractOptions) -> ExtractResult:
    """Extract the features of the manifest's images (x views) into the cache, resuming a finished part.

    Rows already in the cache are not extracted again (noted as a warning); unreadable images are recorded in the
    cache's shards/*.errors.json and the run goes on.

    Raises:
        ValueError: for an empty manifest, weights whose fingerprint differs from the cache's, or when every image
            failed (what the run wrote is then removed).
    """
    if options.on_dask:
        require("dask.distributed", needed_for="--workers / --scheduler / --devices")  # before anything is written
    start = time.perf_counter()
    tasks, plan = prepare(options)
    if plan.get("skipped_already_cached"):
        LOG.warning(f"{plan['skipped_already_cached']} row(s) already in the cache are not extracted again")
    if not options.on_dask:
        _writer(options, get_extractor(options))  # the backbone built, cache.json written or checked
    ready = time.perf_counter()
    if options.devices:
        results = run_devices(options, tasks)
    else:
        results = run_dask(options, tasks) if options.on_dask else run_local(options, tasks)
    fail_if_all_failed(options, tasks)
    changed = sum(r.get("changed", 0) for r in results)
    if changed:
        LOG.warning(f"{changed} image(s) changed on disk since they were indexed and were not extracted (see "
                    "shards/*.errors.json); re-run `aigi index`, then `aigi extract`, to include them")  # fmt: skip
    return ExtractResult(results, time.perf_counter() - start, options.cache, startup_seconds=ready - start)
