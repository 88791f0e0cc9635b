"""The extract stage: manifest rows x views -> frozen-backbone features -> cache shards, resumable and batched."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
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
        num_workers: DataLoader processes decoding images.
        device: auto (CUDA when present), cpu, cuda, cuda:1, ...
        dtype: the compute dtype (auto, fp32, bf16, fp16).
        store_dtype: the dtype the cache stores (recorded in the fingerprint); float32 keeps the forward's values.
        workers: run the shards on a local dask cluster of this many processes (0: in this process).
        scheduler: run the shards on an existing dask cluster, e.g. tcp://host:8786.
        arch: architecture keywords of the extractor (e.g. a timm model's).
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
    num_workers: int = 0
    device: str = "auto"
    dtype: str = "auto"
    store_dtype: str = "float16"
    workers: int = 0
    scheduler: str | None = None
    arch: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Checks the weights choice; paths as text, the root resolved (the manifest's folder by default), views in
        their canonical spelling."""
        check_weights_choice(self.weights, self.random_weights)
        fixed = {
            "manifest": str(self.manifest),
            "cache": str(self.cache),
            "root": str(Path(self.root) if self.root else Path(self.manifest).parent),
            "weights": None if self.weights is None else str(self.weights),
            "features": None if self.features is None else tuple(self.features),
            "views": tuple(parse_views(self.views)),
        }
        for name, value in fixed.items():
            object.__setattr__(self, name, value)

    @property
    def on_dask(self) -> bool:
        """Whether the shards run on dask (`workers` or `scheduler` given)."""
        return bool(self.workers or self.scheduler)

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
    `elsewhere` when another running process extracts it), the seconds taken and the cache."""

    shards: list[dict]
    seconds: float
    cache: str

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
        """Images (written or failed) per second."""
        return (self.rows + self.errors) / self.seconds if self.seconds > 0 else float("nan")


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


class ImageRows:
    """A map-style dataset over manifest rows: decode, apply the view, preprocess; failures carry their reason."""

    def __init__(self, rows: pd.DataFrame, *, root: str, transform: Callable[[Any, str], Any]) -> None:
        self.paths = [str(Path(root) / p) for p in rows["path"].astype(str)]
        self.ids = rows["image_id"].astype(str).tolist()
        self.views = rows["view"].astype(str).tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, Any, str]:
        from aigi.extractors import apply_view
        from aigi.extractors.images import ImageLoadError, load_image

        try:
            img = apply_view(load_image(self.paths[i]), self.views[i])
            return i, self.transform(img, self.ids[i]), ""
        except ImageLoadError as err:
            return i, None, err.reason
        except Exception as err:  # a broken file must never stop the run: record it
            return i, None, f"{type(err).__name__}: {err}"


def collate_rows(items: list) -> tuple[list[int], Any, list[tuple[int, str]]]:
    """Stack the images that decoded; keep (row, reason) for the ones that did not."""
    import torch

    ok = [(i, t) for i, t, _ in items if t is not None]
    failed = [(i, reason) for i, t, reason in items if t is None]
    batch = torch.stack([t for _, t in ok]) if ok else None
    return [i for i, _ in ok], batch, failed


_EXTRACTORS: dict[str, object] = {}


def get_extractor(cfg: ExtractOptions) -> Any:
    """Build the backbone once per process and configuration (dask workers reuse it across shard tasks)."""
    from aigi import extractors

    key = json.dumps([cfg.backbone, cfg.weights, cfg.features, cfg.preprocess, cfg.device, cfg.dtype, cfg.arch])
    if key not in _EXTRACTORS:
        _EXTRACTORS.clear()  # one backbone in memory at a time
        _EXTRACTORS[key] = extractors.build(cfg.backbone, **cfg.extractor_kwargs())
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


def _features_of(rows: pd.DataFrame, done: list[tuple[int, dict]], shapes: dict) -> dict[str, np.ndarray]:
    feats = {}
    for name, shape in shapes.items():
        arr = np.zeros((len(done), *shape), dtype=np.float32)
        for j, (_, out) in enumerate(done):
            arr[j] = out[name]
        feats[name] = arr
    return feats


def _shard_payload(
    rows: pd.DataFrame, done: list[tuple[int, dict]], failed: list[tuple[int, str]], shapes: dict
) -> tuple[pd.DataFrame, dict[str, np.ndarray], list[dict]]:
    """The meta rows, features (in row order) and error records of a shard's extracted and failed rows."""
    done.sort(key=lambda t: t[0])
    meta = rows.iloc[[i for i, _ in done]].reset_index(drop=True)
    errors = [
        {
            "image_id": str(rows["image_id"].iat[i]),
            "path": str(rows["path"].iat[i]),
            "view": str(rows["view"].iat[i]),
            "reason": reason,
        }
        for i, reason in sorted(failed)
    ]
    return meta, _features_of(rows, done, shapes), errors


def run_shard(
    cfg: ExtractOptions, index: int, rows: pd.DataFrame, on_images: Callable[[int], None] | None = None
) -> dict:
    """Extract one shard and write it atomically; a finished shard is skipped. Returns counts for the summary."""
    extractor = get_extractor(cfg)
    writer = _writer(cfg, extractor)
    if writer.shard_done(index):
        return {"shard": index, "rows": len(rows), "errors": 0, "skipped": True}
    claim = writer.claim_shard(index)  # another live process of the same job may be extracting it
    if claim is None:
        return {"shard": index, "rows": len(rows), "errors": 0, "skipped": True, "elsewhere": True}
    try:
        meta, feats, errors = _extract_rows(cfg, extractor, rows, on_images)
        writer.write_shard(index, meta, feats, errors)
    finally:
        claim.unlink(missing_ok=True)
    return {"shard": index, "rows": len(meta), "errors": len(errors), "skipped": False}


def _extract_rows(
    cfg: ExtractOptions, extractor: Any, rows: pd.DataFrame, on_images: Callable[[int], None] | None
) -> tuple[pd.DataFrame, dict[str, np.ndarray], list[dict]]:
    """Decode, forward and collect one shard's rows: (meta, features, error records)."""
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(
        ImageRows(rows, root=cfg.root, transform=extractor.transform),
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        collate_fn=collate_rows,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )
    done, failed = [], []
    for idx, batch, bad in loader:
        failed.extend(bad)
        if batch is not None:
            out = {k: v.float().cpu().numpy() for k, v in extractor(batch).items()}
            done.extend((i, {k: v[j] for k, v in out.items()}) for j, i in enumerate(idx))
        if on_images is not None:
            on_images(len(idx) + len(bad))
    return _shard_payload(rows, done, failed, extractor.feature_shapes)


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
    """Run the shard tasks in this process, reporting progress over images."""
    extractor = get_extractor(cfg)
    _writer(cfg, extractor)  # writes or checks cache.json before any work (fingerprint guard)
    results = []
    total = sum(len(r) for _, r in tasks)
    with progress(total=total, unit="img", desc=f"extract {cfg.backbone}", delay_s=SHORT_WORK_S) as bar:
        for index, rows in tasks:
            res = run_shard(cfg, index, rows, on_images=bar.update)
            if res["skipped"]:
                bar.update(len(rows))
            results.append(res)
    return results


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
        require("dask.distributed", needed_for="--workers / --scheduler")  # before anything is written
    start = time.perf_counter()
    tasks, plan = prepare(options)
    if plan.get("skipped_already_cached"):
        LOG.warning(f"{plan['skipped_already_cached']} row(s) already in the cache are not extracted again")
    results = run_dask(options, tasks) if options.on_dask else run_local(options, tasks)
    fail_if_all_failed(options, tasks)
    return ExtractResult(results, time.perf_counter() - start, options.cache)
