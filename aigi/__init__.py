"""aigi's Python API: open a feature cache, build / fit / predict a head, evaluate scores or a trained run.

Thin wrappers over the packages that do the work (`cache`, `heads`, `pipeline`); heavy imports (torch) happen on
the first call, so `import aigi` stays fast. The command line (`aigi ...`) runs the same code.

    import aigi
    features = aigi.open_cache("features/uar")
    train = features.load(["probe"], where={"split": "train"})
    head = aigi.build_head("linear", dims=train.dims, inputs=["probe"])
    aigi.fit(head, train.features, train.labels, epochs=5)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aigi.common.provenance import package_version

__version__ = package_version()
__all__ = [
    "__version__",
    "available_heads",
    "build_head",
    "evaluate",
    "evaluate_run",
    "extract",
    "fit",
    "fit_many",
    "index",
    "load_config",
    "load_head",
    "open_cache",
    "predict",
    "predict_images",
    "presets",
    "save_head",
    "train",
]


def index(root: str | Path, output: str | Path, **options: Any) -> Any:
    """`aigi index`: write the manifest `output` (one row per image) of the images under `root`.

    `options` are `pipeline.index.IndexOptions` fields (layout, csv, source, domain, pair_by_stem, split,
    split_ratio, seed, ...). Returns an `IndexResult` (`.manifest`, `.skipped`, `.duplicates`).
    """
    from aigi.pipeline.index import IndexOptions, index_images

    return index_images(root, output, IndexOptions(**options))


def extract(manifest: str | Path, cache: str | Path, *, backbone: str, **options: Any) -> Any:
    """`aigi extract`: the `backbone` features of the manifest's images into the cache folder `cache` (resumable).

    `options` are `pipeline.extract.ExtractOptions` fields (weights or random_weights, features, views, root,
    device, batch_size, store_dtype, ...). Returns an `ExtractResult` (`.rows`, `.errors`, `.shards`).
    """
    from aigi.pipeline.extract import ExtractOptions, extract_features

    return extract_features(ExtractOptions(manifest=manifest, backbone=backbone, cache=cache, **options))


def open_cache(path: str | Path, *, source: str | None = None) -> Any:
    """A feature cache (`cache.Cache`): a cache folder, an .h5 file, a Parquet dataset or a UAR .npy folder.

    `.load(features, where={...})` gives a `cache.FeatureSet` (`.features`, `.labels`, `.meta`, `.dims`).
    """
    from aigi import cache

    return cache.open(path, source=source)


def available_heads() -> list[str]:
    """The names `build_head` accepts."""
    from aigi import heads

    return heads.available()


def build_head(name: str, *, dims: Mapping[str, Any] | None = None, seed: int = 0, **params: Any) -> Any:
    """A new head (`heads.build`): `name` from `available_heads()`, `inputs=[feature names]` and the head's own keys;
    `dims` (a FeatureSet's `.dims`) fills the input widths."""
    from aigi import heads

    return heads.build(name, dims=dims, seed=seed, **params)


def fit(head: Any, X: Any, y: Any, *, X_val: Any = None, y_val: Any = None, **settings: Any) -> dict[str, Any]:
    """Train `head` in place on features `X` (name -> [N, D] array) and labels `y` (0 real, 1 fake).

    `settings` are `heads.FitConfig` fields (epochs, lr, batch_size, optimizer, seed, device, ...). Returns the
    training history.
    """
    from aigi import heads

    return heads.fit(head, X, y, cfg=heads.FitConfig(**settings), X_val=X_val, y_val=y_val)


def fit_many(
    heads_: Sequence[Any],
    X: Any,
    y: Any,
    *,
    settings: Sequence[Mapping[str, Any]] | Mapping[str, Any] = (),
    X_val: Any = None,
    y_val: Any = None,
    groups: Mapping[str, Any] | None = None,
    groups_val: Mapping[str, Any] | None = None,
    errors: str = "raise",
) -> list[Any]:
    """Train several heads in place on the same rows as one head bank (`heads.fit_many`): each batch read once for
    every head, linear heads stepped as one matmul, shared stages trained once; each head trains as it would alone.

    `settings`: `heads.FitConfig` fields for every head (one mapping) or per head (one mapping each), e.g.
    `[{"lr": lr, "seed": s} for lr in lrs for s in seeds]`. `errors="keep"`: a failing head's entry is its
    exception and the others go on. Returns one training history (or exception) per head.
    """
    from aigi import heads

    per_head = [settings] * len(heads_) if isinstance(settings, Mapping) else list(settings) or [{}] * len(heads_)
    if len(per_head) != len(heads_):
        raise ValueError(f"settings: give one mapping for every head, or {len(heads_)} mappings; got {len(per_head)}")
    members = [heads.Member(h, heads.FitConfig(**dict(s))) for h, s in zip(heads_, per_head, strict=True)]
    return heads.fit_many(members, X, y, X_val=X_val, y_val=y_val, groups=groups, groups_val=groups_val, errors=errors)


def predict(head: Any, X: Any) -> Any:
    """P(fake) per row, a float64 numpy array.

    Raises:
        ValueError: when `X` (one array, or feature name -> array) is not rows of finite numbers of the head's width.
    """
    from aigi import heads

    _check_rows(head, X)
    return heads.predict(head, X)


def _check_rows(head: Any, X: Any) -> None:
    """The arrays a head scores: numbers, [N, D] for a head on vectors (D its width), every value finite."""
    import numpy as np

    cfg = getattr(head, "cfg", None)
    inputs = tuple(getattr(cfg, "inputs", ()) or ())
    arrays = X if isinstance(X, Mapping) else {inputs[0] if len(inputs) == 1 else "X": X}
    widths = getattr(cfg, "in_dims", None) or ([getattr(cfg, "in_dim", None)] * len(inputs) if inputs else [])
    vector = {n: w for n, w in zip(inputs, widths) if w is not None}
    for name, value in arrays.items():
        if not hasattr(value, "shape") and not isinstance(value, list | tuple):
            continue  # a batch source (streamed rows): checked where it is read
        arr = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        where = f"X[{name!r}]" if isinstance(X, Mapping) else "X"
        if arr.dtype.kind not in "fiub":
            raise ValueError(f"{where} holds {arr.dtype} values; features are numbers")
        if arr.ndim < 2 or (name in vector and (arr.ndim != 2 or arr.shape[1] != vector[name])):
            width = vector.get(name, "D")
            raise ValueError(
                f"{where} has shape {arr.shape}; the head scores rows [N, {width}] (one row x: x.reshape(1, -1))"
            )
        bad = ~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1) if arr.dtype.kind == "f" else None
        if bad is not None and bad.any():
            raise ValueError(f"{where} holds NaN/inf in {int(bad.sum())} row(s) (first: row {int(np.argmax(bad))})")


def save_head(head: Any, directory: str | Path, *, meta: Mapping[str, Any] | None = None) -> Path:
    """Write DIRECTORY/head.json + head.safetensors (never pickle)."""
    from aigi import heads

    return heads.save(head, directory, meta=dict(meta or {}))


def load_head(directory: str | Path) -> tuple[Any, dict[str, Any]]:
    """A saved head and its head.json content, as a pair: `head, info = aigi.load_head("runs/uar")`."""
    from aigi import heads

    return heads.load(directory)


def predict_images(head_dir: str | Path, images: Any, **options: Any) -> Any:
    """`aigi predict HEAD IMAGES`: score image files and folders with a trained or packed head, through the one
    scoring path (fingerprint checked, stored calibration, threshold and band); a DataFrame with one row per file:
    `path`, `logit`, `p_fake`, `verdict` (real / fake / unsure), `error`.

    `options` are `pipeline.predict.PredictOptions` fields (weights, expert_weights, device, batch_size), e.g.
    `aigi.predict_images("runs/uar", ["photos/"], weights=["ViT-L-14.pth"])`.
    """
    from aigi.pipeline.predict import PredictOptions
    from aigi.pipeline.predict import predict_images as run

    return run(head_dir, [images] if isinstance(images, str | Path) else list(images), PredictOptions(**options))


def evaluate(labels: Any, scores: Any, *, threshold: float = 0.5) -> dict[str, Any]:
    """ACC at `threshold`, real ACC, fake ACC, AP and AUC of one group of rows (`pipeline.metrics.binary_metrics`).

    Raises:
        ValueError: labels other than 0 / 1, scores outside [0, 1] or not finite, arrays of other shapes.
    """
    import numpy as np

    from aigi.pipeline.metrics import binary_metrics

    y, p = np.asarray(labels), np.asarray(scores)
    if y.ndim != 1 or p.shape != y.shape:
        raise ValueError(f"labels and scores must be 1-D arrays of one length; got shapes {y.shape} and {p.shape}")
    if y.dtype.kind not in "iubf" or not np.isin(y, (0, 1)).all():
        odd = np.unique(y[~np.isin(y, (0, 1))] if y.dtype.kind in "iubf" else y)[:5].tolist()
        raise ValueError(f"labels must be 0 (real) or 1 (fake); got also {odd}")
    if p.dtype.kind not in "iubf":
        raise ValueError(f"scores must be numbers (P(fake) in [0, 1]); got {p.dtype} values")
    if not np.isfinite(p).all():
        raise ValueError(f"scores must be P(fake) in [0, 1]; got NaN/inf in {int((~np.isfinite(p)).sum())} row(s)")
    if ((p < 0) | (p > 1)).any():
        raise ValueError(
            f"scores must be P(fake) in [0, 1]; got values from {p.min():.4g} to {p.max():.4g} (apply a sigmoid "
            "to logits)"
        )
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    return binary_metrics(y, p, threshold=threshold)


def presets() -> list[str]:
    """The shipped run-config presets (`load_config` / `train` accept their names)."""
    from aigi.pipeline.config import preset_names

    return preset_names()


def load_config(config: str | Path, *, overrides: Sequence[str] = (), caches: Sequence[str] = ()) -> Any:
    """A run config (a YAML file or a preset name) with `--set`-style overrides and `--cache` replacements."""
    from aigi.pipeline.config import load_config as load

    return load(config, overrides=overrides, caches=caches)


def train(
    config: Any,
    run_dir: str | Path,
    *,
    overrides: Sequence[str] = (),
    caches: Sequence[str] = (),
    weights: Sequence[str] = (),
) -> dict[str, Any]:
    """`aigi train`: fit the head of a run config (a RunConfig, YAML file or preset name) and save it in `run_dir`;
    `weights` (`PATH` / `ALIAS=PATH`, as `--weights`): the backbone weights a `tail_*` head re-runs its blocks with.
    Returns the summary (`pipeline.train.TrainResult.to_dict()`)."""
    from aigi.pipeline.config import RunConfig
    from aigi.pipeline.train import TrainOptions, train_run

    cfg = config if isinstance(config, RunConfig) else load_config(config, overrides=overrides, caches=caches)
    return train_run(cfg, run_dir, TrainOptions(weights=tuple(weights))).to_dict()


def evaluate_run(run_dir: str | Path, out_dir: str | Path, options: Any = None, **settings: Any) -> dict[str, Any]:
    """`aigi eval`: score a trained run's test split and write its report to `out_dir`; returns the metrics.

    `options` is a `pipeline.evaluate.EvalOptions`; or give its fields as keywords (split, by, threshold, reals,
    bootstrap, seed, where, caches, weights, plots), e.g. `aigi.evaluate_run(run, out, plots=False)`.
    """
    from aigi.pipeline.evaluate import EvalOptions
    from aigi.pipeline.evaluate import evaluate_run as run

    if options is not None and settings:
        raise TypeError("give either options=EvalOptions(...) or its fields as keywords, not both")
    return run(run_dir, out_dir, options if options is not None else EvalOptions(**settings)).metrics
