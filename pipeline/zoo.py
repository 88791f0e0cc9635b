"""The zoo of the field's released heads: entries read from `zoo.yaml`, and `pull` = fetch, check the pin, import.

Each entry (`zoo.yaml`, shipped in the package) says what the head needs (backbone, `--weights` name, feature,
preprocessing), its licence, where each file is published and the file's pinned sha256 with how that pin was
checked. `pull_head` fetches every file from its own source (a `hf-hub:` name through huggingface_hub's cache, an
https URL with huggingface_hub's downloader into a temporary file beside the output), refuses a file whose sha256
is not the pin before anything is imported, and imports it with the matching importer of `pipeline.released`
(weights-only loading). A file without a pin is fetched only when the user gives one (`sha256`) or waives the
check (`no_verify`). aigi never keeps or serves copies: whatever a licence allows, the file comes from its source.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aigi.common.files import sha256_file
from aigi.common.grammar import parse_aliased
from aigi.common.hub import check_sha256, fetch_url, hub_file, is_hub_name, parse_hub_name
from aigi.common.registry import Registry
from aigi.common.typed import build

from .released import ImportedHead, import_gapl_head, import_linear_head, import_uar_head

log = logging.getLogger(__name__)

ZOO_FILE = Path(__file__).resolve().parent / "zoo.yaml"
IMPORTERS = ("linear", "uar", "gapl", "none")  # the `aigi head import-*` that reads an entry, or none
ROLES = {"linear": ("head",), "uar": ("head",), "gapl": ("stage1", "prototypes")}  # the files each importer reads


@dataclass(frozen=True)
class ZooFile:
    """One published file of an entry: its role, source, reading page, pinned sha256 ("" = none) and how that pin
    was checked."""

    role: str
    source: str
    page: str = ""
    sha256: str = ""
    size: int | None = None
    verified: str = ""

    @property
    def filename(self) -> str:
        """The file's name at its source."""
        if is_hub_name(self.source):
            return Path(parse_hub_name(self.source).filename or "").name
        return self.source.split("?")[0].rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class ZooEntry:
    """A released head: what it is, what it needs, its licence and files (see zoo.yaml's header)."""

    name: str
    detector: str
    title: str
    code: str
    importer: str
    backbone: str
    weights: str
    feature: str
    preprocess: str
    licence: str
    redistribute: bool
    files: tuple[ZooFile, ...] = ()
    paper: str = ""
    note: str = ""

    def extract_command(self) -> str:
        """The `aigi extract` options of the cache this head scores."""
        if self.importer == "none":
            return ""
        return (
            f"aigi extract --backbone {self.backbone} --weights {self.weights} --features {self.feature} "
            f"--preprocess {self.preprocess}"
        )


def read_zoo(path: str | Path | None = None) -> Registry[ZooEntry]:
    """The zoo's entries by name, from `path` (default: the shipped `zoo.yaml`), checked strictly.

    Raises:
        ValueError: an unknown key, a value of the wrong type, or a missing field (naming the entry and key).
    """
    import yaml

    path = Path(path) if path is not None else ZOO_FILE
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a zoo file is a mapping of entry names to entries")
    zoo: Registry[ZooEntry] = Registry("zoo entry")
    for name, raw in data.items():
        raw = dict(raw or {})
        files = raw.pop("files", None) or []
        entry = build(ZooEntry, {"name": str(name), **raw}, where=f"{name}.", source=path.name)
        parsed = tuple(build(ZooFile, f, where=f"{name}.files[{i}].", source=path.name) for i, f in enumerate(files))
        roles = [f.role for f in parsed]
        if entry.importer not in IMPORTERS or sorted(ROLES.get(entry.importer, roles)) != sorted(roles):
            need = ", ".join(ROLES.get(entry.importer, ("any",)))
            raise ValueError(
                f"{path.name}: {name}.importer is {entry.importer!r} with files {roles}; importer is one of "
                f"{', '.join(IMPORTERS)}, and {entry.importer} reads files with roles: {need}"
            )
        zoo.register(str(name), dataclasses.replace(entry, files=parsed))
    return zoo


@dataclass(frozen=True)
class PullOptions:
    """How `pull_head` checks and imports (the defaults are `aigi head pull`'s).

    Attributes:
        cache: a cache holding the head's feature: a `linear` head records its fingerprint (as import-linear does).
        sha256: `[ROLE=]HEX` pins for files the zoo has none for (or replacing the zoo's, with a warning).
        no_verify: take files without a pin unchecked (said in the result).
        zoo: another zoo file (default: the shipped one).
    """

    cache: str | None = None
    sha256: tuple[str, ...] = ()
    no_verify: bool = False
    zoo: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha256", tuple(self.sha256))


@dataclass
class PullResult:
    """What `pull_head` did: the entry, each file's local path, sha256 and whether it was checked against a pin, and
    the imported head (None for an entry without an importer)."""

    entry: ZooEntry
    files: dict[str, Path] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)
    checked: dict[str, bool] = field(default_factory=dict)
    head: ImportedHead | None = None


def import_command(entry: ZooEntry, files: dict[str, str], out: str | Path) -> str:
    """The `aigi head import-*` command that imports `files` (role -> path) of `entry` by hand."""
    if entry.importer == "uar":
        return f"aigi head import-uar {files['head']} -o {out}"
    if entry.importer == "linear":
        return f"aigi head import-linear {files['head']} --feature {entry.feature} -o {out} [--cache CACHE]"
    if entry.importer == "gapl":
        return f"aigi head import-gapl --stage1 {files['stage1']} --prototypes {files['prototypes']} -o {out}"
    return "use it with the authors' code (aigi has no importer for it yet)"


def _pins(entry: ZooEntry, options: PullOptions) -> dict[str, str]:
    """role -> the pin each file is checked against ("" when waived); refuses before any download."""
    roles = [f.role for f in entry.files]
    given = parse_aliased(list(options.sha256), roles, option="--sha256") if options.sha256 else {}
    pins = {}
    for f in entry.files:
        pin = (given.get(f.role) or f.sha256).strip().lower()
        if given.get(f.role) and f.sha256 and pin != f.sha256.lower():
            log.warning(f"--sha256 for {entry.name}'s {f.role} file replaces the zoo's pin {f.sha256[:12]}…")
        if not pin and not options.no_verify:
            which = f"{f.role}=HEX" if len(roles) > 1 else "HEX"
            raise ValueError(
                f"{entry.name}: the zoo has no pinned sha256 for {f.filename} ({f.verified or 'not pinned yet'}); pass "
                f"--sha256 {which} from a source you trust, or --no-verify to take the file unchecked"
            )
        pins[f.role] = pin
    return pins


def _fetch(entry: ZooEntry, file: ZooFile, pin: str, folder: Path, out: Path) -> Path:
    """One file of `entry`, checked against `pin` (when not empty); downloaded URLs land in `folder`."""
    url = parse_hub_name(file.source).url() if is_hub_name(file.source) else file.source
    manual = f"fetch {url} by hand, check its sha256, then: " + import_command(
        entry, {f.role: f.filename for f in entry.files}, out
    )
    what = f"zoo entry {entry.name} ({file.role})"
    if is_hub_name(file.source):
        path = hub_file(parse_hub_name(file.source), what=what, manual=manual)
        if pin:
            check_sha256(path, pin, what=what, fix=f"nothing was imported; {manual}")
        return path
    if not file.source.startswith(("https://", "http://")):
        raise ValueError(f"{what}: source {file.source!r} is neither hf-hub:ORG/REPO:FILE nor an http(s) URL")
    return fetch_url(file.source, folder / file.filename, sha256=pin or None, what=what, manual=manual)


def pull_head(name: str, out: str | Path, options: PullOptions = PullOptions()) -> PullResult:
    """Fetch a zoo entry's files from their sources, check their pins, and import the head into `out`.

    An entry without an importer (`importer: none`) has its files fetched and checked into `out` (hub files stay in
    huggingface_hub's cache) and nothing imported. Nothing is written outside `out` and huggingface_hub's cache;
    the temporary download folder inside `out` is removed, also when a check fails.

    Args:
        name: the entry's name (`aigi zoo` lists them).
        out: the head folder to write.
        options: the cache to bind, pins for unpinned files, `no_verify`, another zoo file.

    Raises:
        ValueError: an unknown name, a file without a pin (neither `sha256` nor `no_verify`), or a file the
            importer refuses (pickled code, not the expected tensors).
        WeightsUnavailable: a file that cannot be fetched, or whose sha256 is not the pin.
    """
    entry = read_zoo(options.zoo).get(name)
    if not entry.files:
        raise ValueError(f"{entry.name}: the zoo lists no released file for it ({entry.note or 'nothing published'})")
    pins = _pins(entry, options)
    out = Path(out)
    existed = out.exists()
    folder = out if entry.importer == "none" else out / ".pull"
    result = PullResult(entry)
    try:
        for f in entry.files:
            result.files[f.role] = _fetch(entry, f, pins[f.role], folder, out)
            result.sha256[f.role] = sha256_file(result.files[f.role])
            result.checked[f.role] = bool(pins[f.role])
        if entry.importer != "none":
            result.head = _import(entry, result, out, options.cache)
    except BaseException:
        if not existed and out.is_dir() and not any(p for p in out.iterdir() if p.name != ".pull"):
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        if folder != out:
            shutil.rmtree(folder, ignore_errors=True)
    return result


def _import(entry: ZooEntry, result: PullResult, out: Path, cache: str | None) -> ImportedHead:
    files = result.files
    sources = {f.role: f.source for f in entry.files}
    origin = {
        "zoo": {
            "name": entry.name,
            "detector": entry.detector,
            "licence": entry.licence,
            "code": entry.code,
            "files": {
                role: {"source": sources[role], "sha256": result.sha256[role], "pinned": result.checked[role]}
                for role in files
            },
            "cache": entry.extract_command(),
        }
    }
    if entry.importer == "uar":
        return import_uar_head(files["head"], out, feature=entry.feature, extra=origin)
    if entry.importer == "linear":
        return import_linear_head(files["head"], out, feature=entry.feature, cache=cache, extra=origin)
    return import_gapl_head(files["stage1"], files["prototypes"], out, feature=entry.feature, extra=origin)


def zoo_rows(zoo: Registry[ZooEntry], names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One JSON-ready mapping per entry (every field, files included), for listings."""
    return [dataclasses.asdict(zoo.get(n)) for n in (names or zoo.names())]
