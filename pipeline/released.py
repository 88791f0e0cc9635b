"""Released classifiers (any linear probe, UAR's, GAPL's) saved as aigi head folders, recording where they came from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aigi.common.files import sha256_file


@dataclass
class ImportedHead:
    """An imported head as written: its folder, head name, input feature and width, and its head.json extras."""

    out: Path
    name: str
    feature: str
    dim: int
    meta: dict[str, Any]


def _origin(kind: str, file: Path) -> dict[str, Any]:
    return {"imported_from": {"kind": kind, "file": file.name, "sha256": sha256_file(file)}}


def import_linear_head(
    file: str | Path, out: str | Path, *, feature: str, fake_class: int = 1, cache: str | Path | None = None
) -> ImportedHead:
    """Save a released linear probe (`heads.linear_probe`: UnivFD's, UAR's, ...) as a `linear` head in `out`.

    Args:
        file: the probe's state dict (.pth or .safetensors; never unpickled as code).
        out: the head folder to write.
        feature: the feature the probe was trained on (UnivFD: proj, UAR: probe).
        fake_class: the row of a two-row (softmax) head that scores "fake".
        cache: a cache holding that feature: the head records its fingerprint and extractor spec, as `aigi train`
            does, so that scoring refuses features made otherwise.
    """
    from aigi import heads

    file = Path(file)
    head = heads.linear_probe(file, feature=feature, fake_class=fake_class)
    meta = _origin("linear", file)
    if cache is not None:
        meta |= bound_cache(cache, feature, head.cfg.in_dim)
    heads.save(head, out, meta=meta)
    return ImportedHead(Path(out), "linear", feature, head.cfg.in_dim, meta)


def bound_cache(path: str | Path, feature: str, dim: int) -> dict[str, Any]:
    """head.json entries (as `aigi train` writes them) binding an imported head to the cache at `path`.

    Raises:
        ValueError: when the cache's `feature` is absent or not a vector of width `dim`.
    """
    from aigi import cache

    store = cache.open(path)
    shape = store.features.get(feature)
    if shape != (dim,):
        got = f"width {shape[0]}" if shape and len(shape) == 1 else ("shape " + str(shape) if shape else "absent")
        raise ValueError(
            f"the probe reads '{feature}' of width {dim}, but in {path} '{feature}' is {got}; pick the feature the "
            f"probe was trained on (the cache has {sorted(store.features)})"
        )
    alias = str(store.spec.get("name") or "features")
    return {
        "caches": {alias: {"path": str(store.path), "fingerprint": store.fingerprint, "format": store.format}},
        "fingerprints": {alias: store.fingerprint},
        "extractor_spec": {alias: store.spec},
    }


def import_uar_head(file: str | Path, out: str | Path, *, feature: str = "probe") -> ImportedHead:
    """Save UAR's released linear classifier (`linear.weight` (1, D), `linear.bias` (1,)) as a `linear` head."""
    from aigi import heads

    file = Path(file)
    head = heads.uar_linear(file, feature=feature)
    meta = _origin("uar", file)
    heads.save(head, out, meta=meta)
    return ImportedHead(Path(out), "linear", feature, head.cfg.in_dim, meta)


def import_gapl_head(
    stage1: str | Path, prototypes: str | Path, out: str | Path, *, feature: str = "pooler"
) -> ImportedHead:
    """Save GAPL's projection (`stage1.pt`, 128 x D) and prototypes (64 x 128) as a `prototype` head whose stage 2
    (attention and classifier) is untrained: head.json says so, and how to train it."""
    from aigi import heads

    head = heads.gapl_prototype(stage1, prototypes, feature=feature)
    files = {"stage1": Path(stage1), "prototypes": Path(prototypes)}
    meta = {
        "imported_from": {"kind": "gapl", **{k: {"file": p.name, "sha256": sha256_file(p)} for k, p in files.items()}},
        "untrained": "stage 2 (attention and classifier)",
        "note": "train stage 2 before scoring: aigi train configs/gapl.yaml --init HEAD_DIR -o RUN_DIR",
    }
    heads.save(head, out, meta=meta)
    return ImportedHead(Path(out), "prototype", feature, head.cfg.in_dim, meta)


def describe_head(directory: str | Path) -> dict[str, Any]:
    """What a saved head's head.json records, plus its counts of `parameters` and `buffers` values."""
    from aigi import heads

    head, info = heads.load(directory)
    return {
        **info,
        "parameters": sum(p.numel() for p in head.parameters()),
        "buffers": sum(b.numel() for b in head.buffers()),
    }
