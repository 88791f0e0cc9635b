"""The predict stage: score image files with a trained head (features extracted on the fly with its recorded
backbone), or the rows of a feature cache, through the one scoring path (`pipeline.scoring.score_features`: the
fingerprint checked, then logit -> stored calibration -> P(fake) -> verdict with the stored threshold and band)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aigi.common.files import atomic_path, sha256_file
from aigi.common.grammar import parse_aliased, parse_assignments
from aigi.common.progress import SHORT_WORK_S, progress
from aigi.pipeline.index import printable

LOG = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".jfif"}


@dataclass(frozen=True)
class PredictOptions:
    """How `predict_images` and `predict_cache` score (the defaults are `aigi predict`'s).

    Attributes:
        weights: the backbone weights file(s), `PATH` or `ALIAS=PATH` per backbone when the head reads several
            (images; with a cache, the weights a `tail_*` head re-runs its blocks with).
        expert_weights: router heads: manual semantic-expert weights, e.g. `human=0.7,animal=0.3`.
        device: where the backbone runs: auto (CUDA when present), cpu, cuda, cuda:1, ...
        batch_size: images per batch.
        where: cache rows: filters `COLUMN=VALUE`.
        stream: cache rows: stream the features from disk (true, false, auto: when over the budget).
        memory_budget: cache rows: memory for the features, e.g. 1.5GB (default half the RAM).
    """

    weights: tuple[str, ...] = ()
    expert_weights: str | None = None
    device: str = "auto"
    batch_size: int = 16
    where: tuple[str, ...] = ()
    stream: str = "auto"
    memory_budget: str | None = None

    def __post_init__(self) -> None:
        """Checks the batch size; lists as tuples."""
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        object.__setattr__(self, "weights", tuple(str(w) for w in self.weights))
        object.__setattr__(self, "where", tuple(self.where))


@dataclass
class CacheScores:
    """Scores of cached rows: the table (meta columns, logit, p_fake, verdict, error), the row count, how the rows
    were held (in memory, or streamed from disk, and why) and the fingerprint check's warnings."""

    table: pd.DataFrame
    rows: int
    rows_held: str
    notes: tuple[str, ...] = ()


def list_images(inputs: list[str]) -> list[Path]:
    """Files named directly (whatever their suffix) and image files found recursively in named folders, sorted."""
    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.exists():
            out.append(path)
        else:
            raise FileNotFoundError(f"{path} does not exist")
    if not out:
        raise ValueError(f"no image files found in {inputs}")
    return out


def extractor_from_spec(spec: dict, *, weights: str | None, device: str, features: list[str] | None = None) -> Any:
    """Rebuild the extractor a cache was made with, from the spec recorded in the head (`features`: only these)."""
    from aigi import extractors

    params = dict(spec.get("preprocess_params") or [])
    policy = spec["preprocess"] + (":" + ",".join(f"{k}={v}" for k, v in params.items()) if params else "")
    dtype = spec.get("dtype", "fp32")
    if dtype != "fp32" and not str(device).startswith("cuda"):
        import torch

        if device != "auto" or not torch.cuda.is_available():
            raise ValueError(
                f"the head's features were extracted in {dtype}, which needs a GPU here; its fingerprint would not "
                "match fp32 features. Re-extract the training cache with --dtype fp32 to predict on a CPU."
            )
    return extractors.build(
        spec["name"],
        weights=weights,
        features=list(features or spec["features"]),
        preprocess=policy,
        device=device,
        dtype=dtype,
        **dict(spec.get("arch_params") or {}),
    )


def live_spec(extractor: Any, recorded_spec: dict) -> dict:
    """The spec the live extractor's features would be cached under: its own, plus the training cache's storage
    dtype (`aigi extract --store-dtype`), which `features_for` then rounds the features through."""
    spec = asdict(extractor.spec)
    if list(spec["features"]) != list(recorded_spec["features"]):  # built for a subset of them: compare the rest
        spec.update(features=recorded_spec["features"], dims=recorded_spec["dims"])
    if "storage_dtype" in recorded_spec:
        spec["storage_dtype"] = recorded_spec["storage_dtype"]
    return spec


def weights_hint(info: Mapping[str, Any], alias: str) -> str:
    """How the head names the backbone weights its training cache used: the file's name (recorded by `aigi head
    pack --weights`), else the cache it was trained on, and the weights' sha256."""
    spec = (info.get("extractor_spec") or {}).get(alias) or {}
    digest = str(spec.get("weights_sha256", ""))
    packed = ((info.get("backbone_weights") or {}).get(alias) or {}).get("file")
    cache_path = ((info.get("caches") or {}).get(alias) or {}).get("path")
    where = f"`{packed}`" if packed else f"the {spec.get('name')} weights file"
    used = f" that `aigi extract` used for cache {cache_path}" if cache_path and not packed else ""
    return f"{where}{used} (sha256 {digest[:16]}…)"


def check_fingerprint(
    extractor: Any, *, recorded: str | None, recorded_spec: dict, alias: str, hint: str = "the weights file"
) -> None:
    """Refuse features that would not match the head's training cache, naming the differing fields."""
    from aigi import cache

    spec = live_spec(extractor, recorded_spec)
    if recorded is None or cache.fingerprint(spec) == recorded:
        return
    diff = cache.spec_diff(recorded_spec, spec)
    raise ValueError(
        f"backbone {alias!r}: these weights/settings give fingerprint {cache.fingerprint(spec)[:12]}, but the head "
        f"was trained on {recorded[:12]}; differing fields: {diff}. Pass {hint} with --weights"
    )


def input_map(head: Any, specs: dict[str, dict]) -> dict[str, tuple[str, str]]:
    """Head input name -> (backbone alias, feature name), the way `aigi train` joined its caches."""
    out = {}
    for name in head.cfg.inputs:
        alias, sep, feat = name.partition("/")
        if sep and alias in specs:
            out[name] = (alias, feat)
            continue
        owners = [a for a, s in specs.items() if name in s["features"]]
        if len(owners) != 1:
            raise ValueError(f"head input {name!r} is produced by {owners or 'no'} recorded backbone(s)")
        out[name] = (owners[0], name)
    return out


def load_batch(paths: list[Path], transform: Callable[[Any, str], Any]) -> tuple[list[int], Any, list[tuple[int, str]]]:
    """Decode and preprocess `paths`: (positions read, their stacked tensors or None, (position, reason) of the
    others)."""
    import torch

    from aigi.extractors.images import ImageLoadError, load_image

    ok, tensors, bad = [], [], []
    for i, path in enumerate(paths):
        try:
            tensors.append(transform(load_image(path), sha256_file(path)))
            ok.append(i)
        except ImageLoadError as err:
            bad.append((i, err.reason))
    return ok, (torch.stack(tensors) if tensors else None), bad


def score_batches(
    paths: list[Path],
    backbones: dict[str, Any],
    *,
    batch_size: int,
    score: Callable[[dict], dict],
    storage: dict[str, str] | None = None,
) -> tuple[dict[str, np.ndarray], list[int], dict[int, str]]:
    """Extract each batch of readable images with every backbone and score it at once (features, token features
    above all, are never kept for the whole folder): ({column: values of the kept rows}, rows kept, failures).

    `storage` (alias -> numpy dtype) rounds a backbone's features as its training cache stored them.
    """
    columns: dict[str, list] = {}
    kept: list[int] = []
    failed: dict[int, str] = {}
    first = next(iter(backbones.values()))
    with progress(total=len(paths), desc="predict", unit="img", delay_s=SHORT_WORK_S) as bar:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            ok, batch, bad = load_batch(chunk, first.transform)
            failed.update({start + i: reason for i, reason in bad})
            if batch is not None:
                feats = _batch_features(backbones, batch, [chunk[i] for i in ok], storage or {})
                for name, values in score(feats).items():
                    columns.setdefault(name, []).append(np.asarray(values))
                kept.extend(start + i for i in ok)
            bar.update(len(chunk))
    return {name: np.concatenate(v) for name, v in columns.items()}, kept, failed


def _batch_features(
    backbones: dict[str, Any], batch: Any, paths: list[Path], storage: dict[str, str]
) -> dict[str, dict[str, np.ndarray]]:
    """Every backbone's features of one batch of readable images: the first backbone's input is `batch`, the others
    read `paths` again with their own preprocessing; `storage` rounds a backbone's features through its dtype."""
    first = next(iter(backbones.values()))
    out = {}
    for alias, ex in backbones.items():
        x = batch if ex is first else load_batch(paths, ex.transform)[1]
        feats = {name: value.numpy() for name, value in ex(x).items()}
        if storage.get(alias):
            feats = {name: v.astype(storage[alias]).astype(np.float32) for name, v in feats.items()}
        out[alias] = feats
    return out


def head_scores(head: Any, X: Any, info: dict) -> dict[str, np.ndarray]:
    """The raw logit, calibrated P(fake) and verdict (`scoring.score_features`, the one scoring path), an `error` for
    rows with NaN/inf features and, for expert heads, each expert's gate and score."""
    from aigi import heads
    from aigi.pipeline.scoring import NAN_FEATURES, score_features

    scored = score_features(head, info, X)
    out = {"logit": scored.logit, "p_fake": scored.p_fake, "verdict": scored.verdict_names(),
           "error": np.where(scored.invalid, NAN_FEATURES, "").astype(object)}  # fmt: skip
    if hasattr(head, "explain"):
        ex = heads.explain(head, X)
        for k, name in enumerate(ex["expert_names"]):
            out[f"gate.{name}"] = ex["gates"][:, k]
            out[f"expert.{name}"] = ex["expert_scores"][:, k]
    return out


OUTPUT_KINDS = (".csv", ".json", ".parquet")
SPEC_FIELDS = ("name", "features", "preprocess")


def check_output(path: str | None) -> None:
    """Refuse an `-o` that is a folder or of an unknown kind before any work is done."""
    if not path:
        return
    out = Path(path)
    if out.is_dir() or str(path).endswith(("/", os.sep)):
        raise IsADirectoryError(f"-o {path} is a folder; give a file name such as {out / 'scores.csv'}")
    if out.suffix.lower() not in OUTPUT_KINDS:
        raise ValueError(f"-o {path}: unknown file kind {out.suffix or '(none)'!r}; end it in .csv, .json or .parquet")


def check_scorable(info: dict, head_dir: str) -> dict[str, dict]:
    """The head's recorded extractor specs, or a ValueError saying why its features cannot be made from images."""
    if info.get("untrained"):
        raise ValueError(
            f"{head_dir} is an imported head whose {info['untrained']} is untrained; train stage 2 first: "
            f"aigi train configs/gapl.yaml --init {head_dir} -o RUN_DIR, then predict with RUN_DIR"
        )
    specs: dict[str, dict] = info.get("extractor_spec") or {}
    if not specs:
        raise ValueError(
            f"{head_dir} records no extractor (an imported head): extract a cache with the matching backbone "
            "and use `aigi eval`, or train the head with `aigi train` so it records its backbone"
        )
    for alias, spec in specs.items():
        missing = [k for k in SPEC_FIELDS if k not in spec]
        if missing:
            origin = (spec.get("extractor") or {}).get("source", "") if isinstance(spec.get("extractor"), dict) else ""
            raise ValueError(
                f"{head_dir} was trained on cache {alias!r} of imported features ({origin or 'no backbone recorded'}), "
                f"which records no {', '.join(missing)}, so its features cannot be re-extracted from images; "
                "extract a cache from images with `aigi extract --backbone ... --weights ...` "
                "(UAR: --backbone aim-v1-3b --features probe --preprocess rich_patch), train on it, and predict "
                "with that run"
            )
    return specs


def load_head(
    head_dir: str | Path, options: PredictOptions
) -> tuple[Any, dict, dict[str, dict], dict[str, str | None]]:
    """The head (with its frozen tail for `tail_*` heads), head.json, the recorded specs and the weights per alias."""
    from aigi import heads
    from aigi.pipeline.tail import frozen_tail

    info = heads.read_info(head_dir)
    specs = check_scorable(info, str(head_dir))
    weights = parse_aliased(list(options.weights), list(specs))
    head, info = heads.load(head_dir, frozen=frozen_tail(info["name"], info["inputs"], specs, weights))
    set_expert_weights(head, info, options.expert_weights)
    return head, info, specs, weights


def set_expert_weights(head: Any, info: Mapping[str, Any], text: str | None) -> None:
    """`--expert-weights DOMAIN=W,...` on a router head; a weight must be a finite number >= 0."""
    import math

    if not text:
        return
    if not hasattr(head, "set_manual_weights"):
        raise ValueError(f"--expert-weights needs a router head; this head is '{info.get('name')}'")
    manual = parse_assignments(text, what="weight")
    values = {}
    for name, value in manual.items():
        try:
            values[name] = float(value)
        except (TypeError, ValueError):
            values[name] = math.nan
        if not math.isfinite(values[name]) or values[name] < 0:
            raise ValueError(f"--expert-weights {name}={value}: a weight must be a finite number >= 0, e.g. {name}=0.5")
    head.set_manual_weights(values)


def warn_demo_head(info: Mapping[str, Any], head_dir: str | Path) -> list[str]:
    """Say first, for a head `aigi demo` trained, that its verdicts on other images mean nothing; the notes said."""
    from aigi.pipeline.scoring import is_demo_head

    if not is_demo_head(info):
        return []
    note = (
        f"{head_dir} is a demo head, not a detector: `aigi demo` trained it on crops of a dozen photos against toy "
        "fakes, so its P(fake) and verdicts on other images mean nothing (train on real data: see the README)"
    )
    LOG.warning(f"warning: {note}")
    return [note]


def predict_images(
    head_dir: str | Path, images: Sequence[str | Path], options: PredictOptions = PredictOptions()
) -> pd.DataFrame:
    """Calibrated P(fake), verdict (and expert gates) of the image files and folders `images`, one row per file
    (`path`, `logit`, `p_fake`, `verdict`, `error`, ...); each unreadable file gets an `error` and a warning.

    `head_dir`: a run folder, or a packed head (`aigi head pack`: a .aigi file or folder). The head's stored
    calibration (`aigi calibrate`) maps its logits to P(fake) and gives the threshold and the abstain band; a head
    without one uses sigmoid(logit) and 0.5.

    Raises:
        ValueError: when the head cannot score images, the weights do not reproduce its training fingerprint, or
            no file could be read.
    """
    from aigi.pipeline.pack import OpenedHead

    with OpenedHead(head_dir) as folder:
        return _predict_images(folder, images, options, name=str(head_dir))


def _predict_images(
    head_dir: Path, images: Sequence[str | Path], options: PredictOptions, *, name: str
) -> pd.DataFrame:
    """`predict_images` on a head folder (`name`: how the user named it)."""
    from aigi import heads

    head, info, specs, weights = load_head(head_dir, options)
    notes = warn_demo_head(info, name)
    inputs = input_map(head, specs)
    tail = heads.needs_frozen(info["name"])  # the backbone runs only up to the cached block, the head does the rest
    backbones = {}
    for alias, spec in specs.items():
        wanted = [feat for a, feat in inputs.values() if a == alias] if tail else None
        if tail and not wanted:
            continue
        if weights[alias] is None and spec.get("weights_sha256") != "random-init":
            hint = weights_hint(info, alias)
            raise ValueError(f"backbone {alias!r} ({spec.get('name')}): no --weights given; pass {hint} with --weights")
        ex = extractor_from_spec(spec, weights=weights[alias], device=options.device, features=wanted)
        check_fingerprint(ex, recorded=(info.get("fingerprints") or {}).get(alias), recorded_spec=spec, alias=alias,
                          hint=weights_hint(info, alias))  # fmt: skip
        backbones[alias] = ex
    paths = list_images([str(i) for i in images])
    storage = {a: s["storage_dtype"] for a, s in specs.items() if "storage_dtype" in s}

    def rows(feats: dict) -> dict:
        X = {name: feats[alias][feat] for name, (alias, feat) in inputs.items()}
        # a tail head scores each batch (its tokens are large); other heads score all rows at once, exactly as
        # `aigi eval` does on the cache
        return head_scores(head, X, info) if tail else {f"x:{name}": v for name, v in X.items()}

    columns, kept, failed = score_batches(paths, backbones, batch_size=options.batch_size, score=rows, storage=storage)
    if not tail and kept:
        columns = head_scores(head, {name[2:]: v for name, v in columns.items()}, info)
    table = pd.DataFrame({"path": [printable(p) for p in paths], "logit": np.nan, "p_fake": np.nan, "verdict": "",
                          "error": ""})  # fmt: skip
    for i, reason in failed.items():
        table.loc[i, "error"] = reason
    for column, values in columns.items():
        table.loc[kept, column] = values
    _check_read(table)
    table.attrs["notes"] = notes  # for the report's header
    return table


def _check_read(table: pd.DataFrame) -> None:
    """A warning per file that could not be read; a ValueError when none could."""
    bad = table[table["error"] != ""]
    for path, reason in bad[["path", "error"]].itertuples(index=False):
        LOG.warning(f"{'not scored' if reason.startswith('NaN') else 'skipped'} {path}: {reason}")
    if len(bad) == len(table):
        first = "; ".join(f"{p}: {r}" for p, r in bad[["path", "error"]].head(3).itertuples(index=False))
        raise ValueError(f"none of the {len(bad)} image(s) could be read ({first}); pass readable image files")


def predict_cache(
    head_dir: str | Path, cache_path: str | Path, options: PredictOptions = PredictOptions()
) -> CacheScores:
    """Logit, calibrated P(fake) and verdict of the rows of one cache matching `options.where`, after the cache's
    fingerprint matched the head's; scored as cached: in memory, or streamed when the features would exceed the memory
    budget (see pipeline.rows). `head_dir`: a run folder or a packed head."""
    from aigi.pipeline.pack import OpenedHead

    with OpenedHead(head_dir) as folder:
        return _predict_cache(folder, cache_path, options, name=str(head_dir))


def _predict_cache(head_dir: Path, cache_path: str | Path, options: PredictOptions, *, name: str) -> CacheScores:
    """`predict_cache` on a head folder (`name`: how the user named it)."""
    from aigi import cache
    from aigi.pipeline import tail
    from aigi.pipeline.rows import choose, parse_budget, row_values
    from aigi.pipeline.scoring import check_cache

    head, info = tail.load_head(head_dir, options.weights)  # with the tail a `tail_*` head runs on tokens
    warn_demo_head(info, name)
    set_expert_weights(head, info, options.expert_weights)
    store = cache.open(cache_path)
    notes = check_cache(info, store, head_dir=head_dir)  # a cache of other features is refused, as by `aigi eval`
    for note in notes:
        LOG.warning(f"warning: {note}")
    where = parse_assignments(",".join(options.where), what="filter") if options.where else {}
    names = list(head.cfg.inputs)
    unknown = [n for n in names if n not in store.features]
    if unknown:
        raise ValueError(f"{cache_path}: the head reads {unknown}, the cache holds {sorted(store.features)}")
    rows = int(np.count_nonzero(cache.featureset.where_mask(store.meta(), where))) if where else len(store)
    budget = parse_budget(options.memory_budget)
    dims = {n: store.features[n] for n in names}
    choice = choose(rows=rows, row_values=row_values(dims), stored=store.dtype, stream=options.stream, budget=budget)
    if choice.mode == "stream":
        from aigi.cache.stream import open_stream, stream_buffer

        fs = open_stream(store, names, where, buffer_bytes=stream_buffer(budget))
    else:
        fs = store.load(names, where=where, dtype=choice.mode)
    cols = [c for c in ("image_id", "path", "label", "source", "split", "view") if c in fs.meta.columns]
    table = fs.meta[cols].reset_index(drop=True).copy()
    for name, values in head_scores(head, fs, info).items():
        table[name] = values
    for row in table[table["error"] != ""].head(20).itertuples():
        LOG.warning(f"not scored: row {row.Index} ({getattr(row, 'image_id', '?')}): {row.error}")
    return CacheScores(table, rows, choice.why, tuple(notes))


def write_table(table: pd.DataFrame, path: str) -> None:
    """Write the rows as CSV, JSON (a list of records) or Parquet, by the file's suffix, atomically."""
    kind = Path(path).suffix.lower()
    with atomic_path(path) as tmp:
        if kind == ".json":
            tmp.write_text(table.to_json(orient="records", indent=1), encoding="utf-8")
        elif kind == ".parquet":
            table.to_parquet(tmp, index=False)
        else:
            table.to_csv(tmp, index=False)
