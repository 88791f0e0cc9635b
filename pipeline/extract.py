"""The extract stage: manifest rows x views -> frozen-backbone features -> cache shards, resumable and batched."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from aigi.common.extras import require
from aigi.common.files import atomic_path

JOBS_DIR = "jobs"
KEY_COLUMNS = ["image_id", "view"]


@dataclass(frozen=True)
class ExtractConfig:
    """Everything an extract run needs; picklable, so a dask worker can rebuild the same extractor from it."""

    manifest: str
    root: str
    backbone: str
    cache: str
    weights: str | None = None
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
    arch: dict = field(default_factory=dict)

    def extractor_kwargs(self) -> dict:
        feats = list(self.features) if self.features else None
        return dict(
            weights=self.weights,
            features=feats,
            preprocess=self.preprocess,
            device=self.device,
            dtype=self.dtype,
            **self.arch,
        )


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


def load_or_create_job(cfg: ExtractConfig, rows: pd.DataFrame, cached_keys: set[tuple[str, str]]) -> dict:
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

    def __init__(self, rows: pd.DataFrame, *, root: str, transform) -> None:
        self.paths = [str(Path(root) / p) for p in rows["path"].astype(str)]
        self.ids = rows["image_id"].astype(str).tolist()
        self.views = rows["view"].astype(str).tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from aigi.extractors import apply_view
        from aigi.extractors.images import ImageLoadError, load_image

        try:
            img = apply_view(load_image(self.paths[i]), self.views[i])
            return i, self.transform(img, self.ids[i]), ""
        except ImageLoadError as err:
            return i, None, err.reason
        except Exception as err:  # a broken file must never stop the run: record it
            return i, None, f"{type(err).__name__}: {err}"


def collate_rows(items: list) -> tuple[list[int], object, list[tuple[int, str]]]:
    """Stack the images that decoded; keep (row, reason) for the ones that did not."""
    import torch

    ok = [(i, t) for i, t, _ in items if t is not None]
    failed = [(i, reason) for i, t, reason in items if t is None]
    batch = torch.stack([t for _, t in ok]) if ok else None
    return [i for i, _ in ok], batch, failed


_EXTRACTORS: dict[str, object] = {}


def get_extractor(cfg: ExtractConfig):
    """Build the backbone once per process and configuration (dask workers reuse it across shard tasks)."""
    from aigi import extractors

    key = json.dumps([cfg.backbone, cfg.weights, cfg.features, cfg.preprocess, cfg.device, cfg.dtype, cfg.arch])
    if key not in _EXTRACTORS:
        _EXTRACTORS.clear()  # one backbone in memory at a time
        _EXTRACTORS[key] = extractors.build(cfg.backbone, **cfg.extractor_kwargs())
    return _EXTRACTORS[key]


def cache_spec(extractor, store_dtype: str, cache_dir: str | Path | None = None) -> dict:
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


def _writer(cfg: ExtractConfig, extractor):
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


def _shard_payload(rows: pd.DataFrame, done: list[tuple[int, dict]], failed: list[tuple[int, str]], shapes: dict):
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


def run_shard(cfg: ExtractConfig, index: int, rows: pd.DataFrame, progress=None) -> dict:
    """Extract one shard and write it atomically; a finished shard is skipped. Returns counts for the summary."""
    extractor = get_extractor(cfg)
    writer = _writer(cfg, extractor)
    if writer.shard_done(index):
        return {"shard": index, "rows": len(rows), "errors": 0, "skipped": True}
    claim = writer.claim_shard(index)  # another live process of the same job may be extracting it
    if claim is None:
        return {"shard": index, "rows": len(rows), "errors": 0, "skipped": True, "elsewhere": True}
    try:
        meta, feats, errors = _extract_rows(cfg, extractor, rows, progress)
        writer.write_shard(index, meta, feats, errors)
    finally:
        claim.unlink(missing_ok=True)
    return {"shard": index, "rows": len(meta), "errors": len(errors), "skipped": False}


def _extract_rows(cfg: ExtractConfig, extractor, rows: pd.DataFrame, progress):
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
        if progress is not None:
            progress(len(idx) + len(bad))
    return _shard_payload(rows, done, failed, extractor.feature_shapes)


def prepare(cfg: ExtractConfig) -> tuple[list[tuple[int, pd.DataFrame]], dict]:
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


def run_local(cfg: ExtractConfig, tasks: list[tuple[int, pd.DataFrame]]) -> list[dict]:
    """Run the shard tasks in this process, with one progress bar over images."""
    from tqdm import tqdm

    extractor = get_extractor(cfg)
    _writer(cfg, extractor)  # writes or checks cache.json before any work (fingerprint guard)
    results = []
    total = sum(len(r) for _, r in tasks)
    with tqdm(total=total, unit="img", desc=f"extract {cfg.backbone}", disable=None, dynamic_ncols=True) as bar:
        for index, rows in tasks:
            res = run_shard(cfg, index, rows, progress=bar.update)
            if res["skipped"]:
                bar.update(len(rows))
            results.append(res)
    return results


def run_dask(cfg: ExtractConfig, tasks: list, *, workers: int = 0, scheduler: str | None = None) -> list[dict]:
    """Extract every shard task on dask; the driver writes `cache.json` first and shows progress over images."""
    from tqdm import tqdm

    from aigi.pipeline.distributed import dask_client, map_tasks, task_key

    _writer(cfg, get_extractor(cfg))  # cache.json and the fingerprint guard, before any worker writes a shard
    resources = {"GPU": 1} if str(cfg.device).startswith("cuda") else None
    total = sum(len(rows) for _, rows in tasks)
    keyed = [(task_key("extract", cfg.cache, f"{index:05d}"), (cfg, index, rows)) for index, rows in tasks]
    with (
        dask_client(workers=workers, scheduler=scheduler) as client,
        tqdm(total=total, unit="img", desc=f"extract {cfg.backbone} (dask)", disable=None, dynamic_ncols=True) as bar,
    ):
        sizes = {key: len(args[2]) for key, args in keyed}
        return map_tasks(client, run_shard, keyed, resources=resources, on_done=lambda k, _: bar.update(sizes[k]))


def summary_line(results: list[dict], seconds: float, cfg: ExtractConfig) -> str:
    """The one line `aigi extract` prints at the end: rows, shards, failures, speed."""
    done = [r for r in results if not r["skipped"]]
    rows = sum(r["rows"] for r in done)
    errors = sum(r["errors"] for r in done)
    elsewhere = sum(bool(r.get("elsewhere")) for r in results)
    skipped = len(results) - len(done) - elsewhere
    rate = (rows + errors) / seconds if seconds > 0 else float("nan")
    other = f", {elsewhere} being extracted by another running process" if elsewhere else ""
    return (
        f"extracted {rows} rows into {len(done)} shard(s) ({skipped} already done{other}), {errors} image(s) "
        f"failed (see shards/*.errors.json), {rate:.1f} img/s; cache: {cfg.cache}"
    )


def config_from_args(args: argparse.Namespace) -> ExtractConfig:
    from aigi.extractors import parse_views

    manifest = Path(args.manifest)
    return ExtractConfig(
        manifest=str(manifest),
        root=str(Path(args.root) if args.root else manifest.parent),
        backbone=args.backbone,
        cache=str(args.cache),
        weights=args.weights,
        features=tuple(f.strip() for f in args.features.split(",") if f.strip()) if args.features else None,
        preprocess=args.preprocess,
        views=tuple(parse_views(args.views)),
        fmt=args.format,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
        dtype=args.dtype,
        store_dtype=args.store_dtype,
    )


def check_weights_choice(weights: str | None, random_weights: bool) -> None:
    """Refuse to extract with random weights unless asked: features of an untrained backbone look like real ones."""
    if weights and random_weights:
        raise ValueError("--weights and --random-weights exclude each other; pass one of them")
    if not weights and not random_weights:
        raise ValueError(
            "no --weights: the backbone would run with random weights; pass --weights FILE (a local file: nothing "
            "is downloaded), or --random-weights to extract features of a randomly initialised backbone on purpose"
        )


def fail_if_all_failed(cfg: ExtractConfig, tasks: list[tuple[int, pd.DataFrame]]) -> None:
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


def run(args: argparse.Namespace) -> int:
    check_weights_choice(args.weights, getattr(args, "random_weights", False))
    on_dask = bool(getattr(args, "workers", 0) or getattr(args, "scheduler", None))
    if on_dask:
        require("dask.distributed", needed_for="--workers / --scheduler")  # before anything is written
    cfg = config_from_args(args)
    start = time.perf_counter()
    tasks, plan = prepare(cfg)
    if plan.get("skipped_already_cached"):
        print(f"{plan['skipped_already_cached']} row(s) already in the cache are not extracted again", file=sys.stderr)
    if on_dask:
        results = run_dask(cfg, tasks, workers=args.workers, scheduler=args.scheduler)
    else:
        results = run_local(cfg, tasks)
    fail_if_all_failed(cfg, tasks)
    print(summary_line(results, time.perf_counter() - start, cfg))
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True, help="manifest.parquet from `aigi index` (or `aigi fakes`)")
    p.add_argument("--root", help="folder the manifest's paths are relative to (default: the manifest's folder)")
    p.add_argument("--backbone", required=True, help="extractor, e.g. clip-l14, aim-v1-3b, timm:vit_base_patch16_224")
    p.add_argument("--weights", help="local weights file of the backbone (nothing is downloaded)")
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="extract with a randomly initialised backbone on purpose (tests, benchmarks); without it --weights is "
        "required",
    )
    p.add_argument("--features", help="comma-separated feature names, e.g. l23.cls,proj (default: the backbone's)")
    p.add_argument("--preprocess", help="resize | center_crop | rich_patch (default: the backbone's)")
    p.add_argument(
        "--views",
        default="orig",
        help="comma-separated views: orig, jpeg:Q, webp:Q, blur:SIGMA, resize:SCALE, crop:FRACTION (e.g. orig,jpeg:75)",
    )
    p.add_argument("--cache", required=True, help="cache directory to create or extend")
    p.add_argument("--format", default="h5", choices=["h5", "parquet"], help="shard format")
    p.add_argument("--shard-size", type=int, default=1024, help="rows per shard (the unit of resume and distribution)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader processes decoding images")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"], help="compute dtype")
    p.add_argument(
        "--store-dtype",
        default="float16",
        choices=["float16", "float32"],
        help="dtype the cache stores (recorded in the fingerprint); float32 keeps the forward's values bit for bit",
    )
    p.add_argument("--workers", type=int, default=0, help="run shards on a local dask cluster of N processes")
    p.add_argument("--scheduler", help="run shards on an existing dask cluster, e.g. tcp://host:8786")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract",
        help="extract backbone features of a manifest's images into a cache",
        description="Extract frozen-backbone features into a feature cache. Batched, resumable (finished shards are "
        "skipped), fingerprinted; unreadable images are recorded in shards/*.errors.json and the run goes on.",
    )
    add_arguments(p)
    p.set_defaults(func=run)
