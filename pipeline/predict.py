"""`aigi predict`: score image files with a trained head, extracting features on the fly with its recorded backbone."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aigi.common.files import atomic_path, sha256_file
from aigi.common.grammar import parse_aliased, parse_assignments
from aigi.pipeline.index import printable

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".jfif"}


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


def check_fingerprint(extractor: Any, *, recorded: str | None, recorded_spec: dict, alias: str) -> None:
    """Refuse features that would not match the head's training cache, naming the differing fields."""
    from aigi import cache

    spec = live_spec(extractor, recorded_spec)
    if recorded is None or cache.fingerprint(spec) == recorded:
        return
    diff = cache.spec_diff(recorded_spec, spec)
    raise ValueError(
        f"backbone {alias!r}: these weights/settings give fingerprint {cache.fingerprint(spec)[:12]}, but the head "
        f"was trained on {recorded[:12]}; differing fields: {diff}. Pass the weights file the training cache used."
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


def load_batch(paths: list[Path], transform) -> tuple[list[int], Any, list[tuple[int, str]]]:
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
    from tqdm import tqdm

    columns: dict[str, list] = {}
    kept: list[int] = []
    failed: dict[int, str] = {}
    for start in tqdm(range(0, len(paths), batch_size), desc="predict", unit="batch", disable=None):
        chunk = paths[start : start + batch_size]
        first = next(iter(backbones.values()))
        ok, batch, bad = load_batch(chunk, first.transform)
        failed.update({start + i: reason for i, reason in bad})
        if batch is None:
            continue
        feats: dict[str, dict[str, np.ndarray]] = {}
        for alias, ex in backbones.items():
            x = batch if ex is first else load_batch([chunk[i] for i in ok], ex.transform)[1]
            feats[alias] = {name: value.numpy() for name, value in ex(x).items()}
            if (storage or {}).get(alias):
                feats[alias] = {n: v.astype(storage[alias]).astype(np.float32) for n, v in feats[alias].items()}
        for name, values in score(feats).items():
            columns.setdefault(name, []).append(np.asarray(values))
        kept.extend(start + i for i in ok)
    return {name: np.concatenate(v) for name, v in columns.items()}, kept, failed


def head_scores(head: Any, X: dict[str, np.ndarray], info: dict) -> dict[str, np.ndarray]:
    """Calibrated P(fake), verdict and, for expert heads, each expert's gate and score."""
    from aigi import heads
    from aigi.heads.calibration import VERDICTS

    cal = heads.calibration_of(info)
    probs = cal.probability(heads.logits(head, X))
    out = {"p_fake": probs, "verdict": np.array([VERDICTS[int(v)] for v in cal.verdict(probs)], dtype=object)}
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


def load_head(args: argparse.Namespace) -> tuple[Any, dict, dict[str, dict], dict[str, str | None]]:
    """The head (with its frozen tail for `tail_*` heads), head.json, the recorded specs and the weights per alias."""
    from aigi import heads
    from aigi.pipeline.tail import frozen_tail

    info = heads.read_info(args.head_dir)
    specs = check_scorable(info, args.head_dir)
    weights = parse_aliased(args.weights or [], list(specs))
    head, info = heads.load(args.head_dir, frozen=frozen_tail(info["name"], info["inputs"], specs, weights))
    if args.expert_weights:
        if not hasattr(head, "set_manual_weights"):
            raise ValueError(f"--expert-weights needs a router head; this head is '{info.get('name')}'")
        head.set_manual_weights({k: float(v) for k, v in parse_assignments(args.expert_weights, what="weight").items()})
    return head, info, specs, weights


def score_images(args: argparse.Namespace) -> pd.DataFrame:
    """Calibrated P(fake), verdict (and expert gates) of the images in args.images; failed images get an `error`.

    The head's stored calibration (`aigi calibrate`) maps its logits to P(fake) and gives the threshold and the
    abstain band; a head without one uses sigmoid(logit) and 0.5.
    """
    from aigi import heads

    head, info, specs, weights = load_head(args)
    inputs = input_map(head, specs)
    tail = heads.needs_frozen(info["name"])  # the backbone runs only up to the cached block, the head does the rest
    backbones = {}
    for alias, spec in specs.items():
        wanted = [feat for a, feat in inputs.values() if a == alias] if tail else None
        if tail and not wanted:
            continue
        ex = extractor_from_spec(spec, weights=weights[alias], device=args.device, features=wanted)
        check_fingerprint(ex, recorded=(info.get("fingerprints") or {}).get(alias), recorded_spec=spec, alias=alias)
        backbones[alias] = ex
    paths = list_images(args.images)
    storage = {a: s["storage_dtype"] for a, s in specs.items() if "storage_dtype" in s}

    def rows(feats: dict) -> dict:
        X = {name: feats[alias][feat] for name, (alias, feat) in inputs.items()}
        # a tail head scores each batch (its tokens are large); other heads score all rows at once, exactly as
        # `aigi eval` does on the cache
        return head_scores(head, X, info) if tail else {f"x:{name}": v for name, v in X.items()}

    columns, kept, failed = score_batches(paths, backbones, batch_size=args.batch_size, score=rows, storage=storage)
    if not tail and kept:
        columns = head_scores(head, {name[2:]: v for name, v in columns.items()}, info)
    table = pd.DataFrame({"path": [printable(p) for p in paths], "p_fake": np.nan, "verdict": "", "error": ""})
    for i, reason in failed.items():
        table.loc[i, "error"] = reason
    for name, values in columns.items():
        table.loc[kept, name] = values
    return table


def score_cache(args: argparse.Namespace) -> pd.DataFrame:
    """Scores of the cached rows of `args.cache` matching `args.where`: in memory, or streamed when the features
    would exceed the memory budget (see pipeline.streaming)."""
    from aigi import cache, heads
    from aigi.pipeline import tail
    from aigi.pipeline.streaming import StreamedSet, choose, parse_budget, row_values

    head, info = tail.load_head(args.head_dir, args.weights or [])  # with the tail a `tail_*` head runs on tokens
    paths = [c.partition("=")[2] if "=" in c else c for c in args.cache]
    if len(paths) != 1:
        raise ValueError("--cache: give one cache (join several with `aigi eval`, which follows the run's config)")
    store = cache.open(paths[0])
    where = parse_assignments(",".join(args.where), what="filter") if args.where else {}
    names = list(head.cfg.inputs)
    unknown = [n for n in names if n not in store.features]
    if unknown:
        raise ValueError(f"{paths[0]}: the head reads {unknown}, the cache holds {sorted(store.features)}")
    rows = int(np.count_nonzero(cache.featureset.where_mask(store.meta(), where))) if where else len(store)
    dims = {n: store.features[n] for n in names}
    choice = choose(
        rows=rows, row_values=row_values(dims), stored=store.dtype, stream=args.stream,
        budget=parse_budget(args.memory_budget),
    )  # fmt: skip
    print(f"data: {rows:,} rows {choice.why}", file=sys.stderr)
    if choice.mode == "stream":
        from aigi.cache.stream import open_stream, stream_buffer

        fs = StreamedSet(open_stream(store, names, where, buffer_bytes=stream_buffer(parse_budget(args.memory_budget))))
    else:
        fs = store.load(names, where=where, dtype=choice.mode)
    cols = [c for c in ("image_id", "path", "label", "source", "split", "view") if c in fs.meta.columns]
    table = fs.meta[cols].reset_index(drop=True).copy()
    table["p_fake"] = heads.predict(head, fs.features)
    table["error"] = ""
    return table


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


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    check_output(args.output)
    if not args.images and not args.cache:
        raise ValueError("give image files/folders to score, or --cache PATH to score cached features")
    if args.cache:
        return _report_cache(args, score_cache(args))
    table = score_images(args)
    good, bad = table[table["error"] == ""], table[table["error"] != ""]
    for path, reason in bad[["path", "error"]].itertuples(index=False):
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if good.empty:
        first = "; ".join(f"{p}: {r}" for p, r in bad[["path", "error"]].head(3).itertuples(index=False))
        raise ValueError(f"none of the {len(bad)} image(s) could be read ({first}); pass readable image files")
    extra = [c for c in table.columns if c.startswith(("gate.", "expert."))]
    with pd.option_context("display.max_colwidth", 80, "display.width", 200):
        print(good[["path", "p_fake", "verdict", *extra]].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if args.output:
        write_table(table, args.output)
        print(f"wrote {len(table)} rows to {args.output}", file=sys.stderr)
    counts = good["verdict"].value_counts()
    verdicts = ", ".join(
        f"{int(counts.get(v, 0))} {v}" for v in ("fake", "real", "unsure") if v in counts or v != "unsure"
    )
    print(f"{len(good)} image(s) scored, {len(bad)} skipped ({verdicts})", file=sys.stderr)
    return 0


def _report_cache(args: argparse.Namespace, table: pd.DataFrame) -> int:
    shown = table.drop(columns=["error"])
    with pd.option_context("display.max_colwidth", 60, "display.width", 200):
        print(shown.head(20).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if len(table) > 20:
        print(f"... {len(table) - 20:,} more rows" + ("" if args.output else " (write them all with -o FILE.csv)"))
    if args.output:
        write_table(table, args.output)
        print(f"wrote {len(table)} rows to {args.output}", file=sys.stderr)
    print(f"{len(table):,} cached row(s) scored", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="score images with a trained head (features extracted on the fly)",
        description="Score image files or folders with a head trained by `aigi train`. Features are extracted with "
        "the backbone and preprocessing the head's training cache recorded; the weights must reproduce its "
        "fingerprint. Prints the calibrated P(fake) per image and the verdict (real / fake, or unsure inside the "
        "head's abstain band; see `aigi calibrate`) and, for expert heads, the gates and per-expert scores. Unreadable "
        "files are reported and skipped (exit code 0; 2 when no file could be read).",
    )
    p.add_argument("head_dir", help="RUN_DIR written by `aigi train`")
    p.add_argument("images", nargs="*", help="image files and/or folders (searched recursively)")
    p.add_argument(
        "--cache",
        action="append",
        default=[],
        metavar="PATH",
        help="score this cache's rows instead of images (features as cached; streamed when they exceed the budget)",
    )
    p.add_argument("--where", action="append", default=[], metavar="COL=VALUE", help="with --cache: row filters")
    p.add_argument("--stream", default="auto", help="with --cache: stream the features (true, false, auto)")
    p.add_argument("--memory-budget", help="with --cache: memory for features, e.g. 1.5GB (default half the RAM)")
    p.add_argument(
        "--weights",
        action="append",
        metavar="[ALIAS=]PATH",
        help="backbone weights file (ALIAS=PATH per backbone when the head reads several)",
    )
    p.add_argument(
        "--expert-weights",
        metavar="DOMAIN=W,...",
        help="router heads: manual semantic-expert weights, e.g. human=0.7,animal=0.3 (artifact gate stays 1)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("-o", "--output", help="write all rows (scores, gates, errors) to this .csv, .json or .parquet file")
    p.set_defaults(func=run)
