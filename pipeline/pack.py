"""A shareable head: `aigi head pack RUN -o head.aigi` (a zip file) or `-o FOLDER`, and opening one for scoring.

A packed head holds head.safetensors and a head.json with no absolute path of the machine it was made on: the
config, the extractor spec of each backbone (name, preprocessing, features, dtypes and the weights' sha256), how to
get the weights (the file name it was made with, when given), the calibration and the eval table (metrics.json of
`aigi eval`, when there is one). `aigi predict head.aigi IMAGES --weights FILE` scores images on any machine that
has the backbone's weights: their sha256 must be the recorded one, as for a run folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aigi.common.files import atomic_path, sha256_file

PACK_SUFFIX = ".aigi"
PACK_FORMAT = "aigi-head-pack"
MEMBERS = ("head.json", "head.safetensors")
EVAL_NAME = "eval.json"
PACK_FILES = ("head.json", "head.safetensors", EVAL_NAME)  # what a packed folder holds


@dataclass(frozen=True)
class PackResult:
    """What `pack_head` wrote: the file or folder, its kind ("zip" or "folder"), the backbones' weights entries and
    whether an eval table went in."""

    out: Path
    kind: str
    weights: dict[str, dict[str, Any]]
    has_eval: bool


def portable(value: Any) -> Any:
    """A copy of head.json's content with every absolute path replaced by its last part (the file or folder name)."""
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v) for v in value]
    if isinstance(value, str) and (os.path.isabs(value) or value.startswith("~")) and len(value) > 1:
        return Path(value).name
    return value


def backbone_weights(info: dict[str, Any], weights: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Per backbone: the weights' sha256 (from the spec) and how to get them (`file`: the name of the file given
    with --weights, checked against the sha256; `how`: a sentence)."""
    out = {}
    for alias, spec in (info.get("extractor_spec") or {}).items():
        digest = str(spec.get("weights_sha256", ""))
        entry: dict[str, Any] = {"backbone": spec.get("name"), "sha256": digest}
        path = weights.get(alias)
        if path is not None:
            got = sha256_file(path)
            if got != digest:
                raise ValueError(
                    f"--weights {path}: sha256 {got[:16]}… is not the one backbone {alias!r} was extracted with "
                    f"({digest[:16]}…); give the weights file the training cache used"
                )
            entry["file"] = Path(path).name
        entry["how"] = (
            "random initialisation (no file)"
            if digest == "random-init"
            else f"the {spec.get('name')} weights file{' ' + entry['file'] if 'file' in entry else ''} with this "
            "sha256 (pass it to `aigi predict --weights`)"
        )
        out[alias] = entry
    return out


def pack_head(
    run_dir: str | Path, out: str | Path, *, weights: dict[str, str] | None = None, eval_dir: str | Path | None = None
) -> PackResult:
    """Write the run's head as a shareable zip (`out` ending in .aigi) or folder.

    Args:
        run_dir: a run folder (head.json + head.safetensors).
        out: `NAME.aigi` (one zip file) or a folder.
        weights: alias -> the backbone weights file, to record its name (its sha256 is checked).
        eval_dir: an `aigi eval` report folder whose metrics.json goes in (default RUN/eval when present).
    """
    from aigi import heads

    run_dir, out = Path(run_dir), Path(out)
    raw = heads.read_info(run_dir)
    if not heads.needs_frozen(raw["name"]):
        heads.load(run_dir)  # the pair is whole and belongs together (a tail head is checked when it is loaded)
    info = portable(raw)
    info["backbone_weights"] = backbone_weights(info, dict(weights or {}))
    info["packed"] = {"format": PACK_FORMAT, "from": run_dir.name}
    metrics = _eval_metrics(run_dir, eval_dir)
    files = {
        "head.json": (json.dumps(info, indent=2) + "\n").encode("utf-8"),
        "head.safetensors": (run_dir / "head.safetensors").read_bytes(),
    }
    if metrics is not None:
        files[EVAL_NAME] = (json.dumps(portable(metrics), indent=2) + "\n").encode("utf-8")
    if out.suffix == PACK_SUFFIX:
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, data in files.items():
                zf.writestr(name, data)
        kind = "zip"
    else:
        if (out / "head.json").exists():
            raise FileExistsError(f"-o {out} already holds a head; give a new folder or a NAME{PACK_SUFFIX} file")
        out.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (out / name).write_bytes(data)
        kind = "folder"
    return PackResult(out, kind, info["backbone_weights"], metrics is not None)


def _eval_metrics(run_dir: Path, eval_dir: str | Path | None) -> dict[str, Any] | None:
    path = Path(eval_dir) / "metrics.json" if eval_dir is not None else run_dir / "eval" / "metrics.json"
    if eval_dir is not None and not path.is_file():
        raise FileNotFoundError(f"--eval {eval_dir}: no metrics.json there; give a folder written by `aigi eval -o`")
    return json.loads(path.read_text()) if path.is_file() else None


def is_packed(path: str | Path) -> bool:
    """Whether `path` is a packed head file (a zip holding head.json and head.safetensors)."""
    path = Path(path)
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return set(MEMBERS) <= set(zf.namelist())


class OpenedHead:
    """A head folder to score with: the folder itself, or a packed file unpacked into a temporary folder (removed
    when the context ends)."""

    def __init__(self, path: str | Path) -> None:
        self.path, self._tmp = Path(path), None

    def __enter__(self) -> Path:
        if self.path.is_file():
            if not is_packed(self.path):
                raise ValueError(
                    f"{self.path} is neither a run folder nor a packed head ({PACK_SUFFIX} written by `aigi head pack`)"
                )
            self._tmp = tempfile.mkdtemp(prefix="aigi-head-")
            with zipfile.ZipFile(self.path) as zf:
                for name in MEMBERS + ((EVAL_NAME,) if EVAL_NAME in zf.namelist() else ()):
                    (Path(self._tmp) / name).write_bytes(zf.read(name))
            return Path(self._tmp)
        return self.path

    def __exit__(self, *exc: object) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
