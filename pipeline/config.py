"""Run configs: YAML presets -> frozen dataclasses with strict keys, `--set key=value` overrides, resolved copies.

A run config has four sections (see the presets in pipeline/presets/, also reachable as configs/: `aigi train uar`):

    head:  name + the head's own config keys (checked by `heads.build`), incl. `inputs`, the feature names it reads
    fit:   `heads.FitConfig` fields (optimizer, lr, weight_decay, epochs, batch_size, schedule, seed, ...)
    data:  caches (one path, a list, or ALIAS: PATH; several are joined on (image_id, view) by `cache.join`),
           where (meta filters, e.g. view: orig), split_column and the train / val / test values, and the
           validation policy: rows with split == val when there are any, else a seeded `val_fraction` of the
           training pairs (by pair_id, so a real and its aligned fakes never straddle train and val);
           optional `domains`, an `aigi domains` table whose domain replaces the rows' by image_id;
           `stream` (auto / true / false) and `memory_budget` (e.g. 1.5GB; default half the available RAM): rows
           stay in memory as float32, as float16 when only that fits, or are streamed from disk (pipeline.rows);
           `join: {max_dropped: 0.0}`: the share of rows a join of several caches may drop (more is an error)
    eval:  defaults of `aigi eval`: by, threshold (a number or `val`), reals, bootstrap
    calibration (optional): fitted on the validation rows at the end of `aigi train` and stored with the head, as
           `aigi calibrate` does: method (temperature | platt | none), threshold (a number, val_acc or fpr:A),
           band (none, coverage:C or error:A)

Paths (cache paths) are relative to the current working directory, like paths given on the command line; the
resolved config saved in a run directory holds them absolute so the run can be replayed from anywhere.
Unknown keys are errors that name close matches.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aigi.common.grammar import apply_overrides as apply_dotted
from aigi.common.grammar import parse_band, parse_stream, parse_threshold
from aigi.common.typed import FLOAT_RE, UnknownKeys, build, typed_fields

REVISION_MARK = "# code revision: "  # first line of a saved run config: the git revision (or version) that wrote it
BUILD_OPTIONS = {"standardize": bool}  # head keys that are `heads.build` options, not fields of the head's config


@dataclass(frozen=True)
class HeadSection:
    """Which head to build: `heads.build(name, **params)` (params hold `inputs`, the feature names)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def inputs(self) -> tuple[str, ...]:
        """The feature names the head reads."""
        return tuple(self.params.get("inputs", ()))


@dataclass(frozen=True)
class JoinSection:
    """How several caches are joined on (image_id, view): `max_dropped` is the largest share of the first cache's
    selected rows the join may drop (rows another cache lacks); more is an error naming the count."""

    max_dropped: float = 0.0


@dataclass(frozen=True)
class DataSection:
    """Where the rows come from and how they are split."""

    caches: dict[str, str] = field(default_factory=dict)
    where: dict[str, Any] = field(default_factory=dict)
    split_column: str = "split"
    train: str = "train"
    val: str = "val"
    test: str = "test"
    val_fraction: float = 0.1
    val_seed: int = 0
    domains: str = ""  # optional `aigi domains` table (image_id -> domain) replacing the rows' `domain` column
    stream: bool | str = "auto"  # true / false / auto: stream the rows from disk (auto: when over the budget)
    memory_budget: int | float | str | None = None  # bytes or "1.5GB"; default half the available RAM
    join: JoinSection = field(default_factory=JoinSection)  # rows a join of several caches may drop


@dataclass(frozen=True)
class EvalSection:
    """Defaults of `aigi eval` for this run (each has a command-line flag)."""

    by: str = "source"
    threshold: float | str = 0.5
    reals: str = "auto"
    bootstrap: int = 0


@dataclass(frozen=True)
class RunConfig:
    """A whole run: head, fit, data, eval."""

    head: HeadSection
    data: DataSection = field(default_factory=DataSection)
    fit: dict[str, Any] = field(default_factory=dict)
    eval: EvalSection = field(default_factory=EvalSection)
    description: str = ""
    calibration: dict[str, Any] = field(default_factory=dict)  # see CalibrationSpec below


@dataclass(frozen=True)
class CalibrationSpec:
    """What to fit: the `calibration:` section of a run config and the options of `aigi calibrate`."""

    method: str = "temperature"
    threshold: str | float = 0.5
    band: str = "none"

    @classmethod
    def from_mapping(cls, data: Any, *, source: str = "config") -> CalibrationSpec | None:
        """The `calibration:` section of a run config (None or `false` = no calibration at the end of training)."""
        if data in (None, False, {}):
            return None
        if not isinstance(data, dict):
            raise ValueError(f"{source}: calibration must be a mapping (method, threshold, band), got {data!r}")
        spec = build(cls, data, where="calibration.", source=source)
        spec.fit_kwargs()  # validate now, not after training
        if spec.method not in ("temperature", "platt", "none"):
            raise ValueError(f"{source}: calibration.method must be temperature, platt or none, got {spec.method!r}")
        return spec

    def fit_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `heads.fit_calibration`."""
        threshold, band = parse_threshold(self.threshold), parse_band(self.band)
        return {"method": self.method, **threshold.fit_kwargs(), **band.fit_kwargs()}


# ----------------------------------------------------------------------------------------------------------------
# parsing (strict keys and type conversion: `aigi.common.typed`)


def _head_section(data: Any, *, source: str) -> HeadSection:
    """The head's name and parameters, checked against its config class (fields the cache fills may be absent)."""
    from aigi import heads

    if not isinstance(data, Mapping) or not data.get("name"):
        raise ValueError(
            f"{source}: `head` must be a mapping with a `name` (e.g. head: {{name: linear, inputs: [probe]}})"
        )
    try:
        cfg_cls = heads.head_class(str(data["name"])).cfg_cls
    except ValueError as err:
        raise ValueError(f"{source}: head.name: {err}") from None
    given = {k: v for k, v in data.items() if k != "name"}
    params = _plain(typed_fields(cfg_cls, given, where="head.", source=source, extra=BUILD_OPTIONS))
    if not params.get("inputs"):
        raise ValueError(f"{source}: head.inputs must name the feature(s) the head reads, e.g. [probe]")
    return HeadSection(name=str(data["name"]), params=params)


def _fit_section(data: Any, *, source: str) -> dict[str, Any]:
    """Check fit keys and types against `heads.FitConfig`; return every field, defaults filled in."""
    from aigi import heads

    return _plain(dataclasses.asdict(build(heads.FitConfig, data, where="fit.", source=source)))


def cache_aliases(caches: Any, *, source: str = "config") -> dict[str, str]:
    """Normalise `data.caches` (a path, a list of paths or ALIAS: PATH) to {alias: path}; aliases default to stems."""
    if caches is None or caches == "":
        return {}
    if isinstance(caches, str | Path):
        caches = [caches]
    if isinstance(caches, Mapping):
        return {str(k): str(v) for k, v in caches.items()}
    if not isinstance(caches, Sequence):
        raise ValueError(f"{source}: data.caches must be a path, a list of paths or a mapping ALIAS: PATH")
    out: dict[str, str] = {}
    for item in caches:
        alias, sep, path = str(item).partition("=")
        if not sep:
            alias, path = Path(str(item)).stem or "cache", str(item)
        base, i = alias, 2
        while alias in out:
            alias, i = f"{base}{i}", i + 1
        out[alias] = path
    return out


def parse_config(data: Mapping[str, Any], *, source: str = "config") -> RunConfig:
    """Build a RunConfig from a plain mapping (a YAML document); cache paths become absolute (cwd-relative)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: a run config is a mapping with `head`, `fit`, `data`, `eval`")
    top = [f.name for f in dataclasses.fields(RunConfig)]
    unknown = [str(key) for key in data if key not in top]
    if unknown:
        raise UnknownKeys(unknown, top, source=source)
    raw_data = dict(data.get("data") or {})
    raw_data["caches"] = {
        a: str(Path(p).expanduser().resolve()) for a, p in cache_aliases(raw_data.get("caches"), source=source).items()
    }
    if raw_data.get("domains"):
        raw_data["domains"] = str(Path(str(raw_data["domains"])).expanduser().resolve())
    cfg = RunConfig(
        head=_head_section(data.get("head"), source=source),
        data=build(DataSection, raw_data, where="data.", source=source),
        fit=_fit_section(data.get("fit"), source=source),
        eval=build(EvalSection, data.get("eval"), where="eval.", source=source),
        description=str(data.get("description", "")),
        calibration=_calibration_section(data.get("calibration"), source=source),
    )
    _check_values(cfg, source=source)
    return cfg


def _calibration_section(data: Any, *, source: str) -> dict[str, Any]:
    """The `calibration:` mapping, checked now (not after training) by `CalibrationSpec.from_mapping`."""
    spec = CalibrationSpec.from_mapping(data, source=source)
    return {} if spec is None else dataclasses.asdict(spec)


def _check_values(cfg: RunConfig, *, source: str) -> None:
    """Value checks the types cannot express."""
    from aigi.common.grammar import parse_size
    from aigi.pipeline.metrics import REAL_POLICIES

    _check_numbers(cfg, source=source)
    if not 0.0 <= cfg.data.val_fraction < 1.0:
        raise ValueError(f"{source}: data.val_fraction must be in [0, 1), got {cfg.data.val_fraction}")
    if not 0.0 <= cfg.data.join.max_dropped <= 1.0:
        raise ValueError(f"{source}: data.join.max_dropped must be a share in [0, 1], got {cfg.data.join.max_dropped}")
    try:
        parse_stream(cfg.data.stream)
        if cfg.data.memory_budget is not None and str(cfg.data.memory_budget).strip().lower() != "auto":
            parse_size(cfg.data.memory_budget, option="data.memory_budget")
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
    if cfg.eval.reals not in REAL_POLICIES:
        raise ValueError(f"{source}: eval.reals must be one of {REAL_POLICIES}, got {cfg.eval.reals!r}")
    if cfg.eval.bootstrap < 0:
        raise ValueError(f"{source}: eval.bootstrap must be >= 0, got {cfg.eval.bootstrap}")
    try:
        parse_threshold(cfg.eval.threshold, option="eval.threshold")
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None


MAX_LR = 1e3  # a learning rate beyond this overflows the optimizer's float32 state or diverges at once
MAX_SEED = 2**32 - 1  # numpy's and torch's generators take seeds up to this everywhere
MAX_COUNT = 2**31 - 1  # epochs, batch sizes, ... (larger ones overflow the tensors' int32 indices or never end)


def _check_numbers(cfg: RunConfig, *, source: str) -> None:
    """Numbers the fit loop and the generators cannot take: NaN/inf, a learning rate out of (0, MAX_LR], a seed
    out of [0, MAX_SEED], a count beyond MAX_COUNT."""
    for key, value in cfg.fit.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if not math.isfinite(value):
            raise ValueError(f"{source}: fit.{key} must be a finite number, got {value}")
        if isinstance(value, int) and key != "seed" and abs(value) > MAX_COUNT:
            raise ValueError(f"{source}: fit.{key} = {value} is out of range (at most {MAX_COUNT:,})")
    lr = cfg.fit.get("lr")
    if isinstance(lr, int | float) and not 0 < lr <= MAX_LR:
        raise ValueError(f"{source}: fit.lr must be a number in (0, {MAX_LR:g}], got {lr:g}")
    for key, seed in (("fit.seed", cfg.fit.get("seed")), ("data.val_seed", cfg.data.val_seed)):
        if isinstance(seed, int) and not 0 <= seed <= MAX_SEED:
            raise ValueError(f"{source}: {key} must be an integer in [0, {MAX_SEED}], got {seed}")


# ----------------------------------------------------------------------------------------------------------------
# files and overrides


# Limits on what a YAML file may hold: configs are a few levels deep and a few hundred values; a file nested deeper
# or whose aliases (`*name` repeats the value anchored `&name`) expand to more values is refused before it is used.
MAX_YAML_DEPTH = 64
MAX_YAML_VALUES = 100_000


def _expanded_size(root: Any) -> int:
    """The number of nodes of a composed YAML document with every alias expanded (each distinct node visited once).

    Raises:
        yaml.composer.ComposerError: an alias that contains itself, or more than MAX_YAML_VALUES nodes.
    """
    import yaml

    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: Any) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise yaml.composer.ComposerError(
                None, None, "an alias refers to a value that contains it", node.start_mark
            )
        open_nodes.add(key)
        children = node.value if isinstance(node, yaml.SequenceNode) else []
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        total = 1 + sum(size(child) for child in children)
        open_nodes.discard(key)
        if total > MAX_YAML_VALUES:
            raise yaml.composer.ComposerError(
                None, None, f"it expands to more than {MAX_YAML_VALUES:,} values (through &anchors and *aliases)",
                node.start_mark,
            )  # fmt: skip
        sizes[key] = total
        return total

    return size(root)


def _yaml_classes() -> tuple[type, type]:
    """yaml's SafeLoader / SafeDumper that also treat `1e-3` (no dot: YAML 1.1 keeps it a string) as a float.

    The loader reads a bare 1e-3 as a number and a quoted '1e-3' as text, refuses a key given twice in one mapping,
    nesting deeper than MAX_YAML_DEPTH and aliases expanding to more than MAX_YAML_VALUES values; the dumper quotes
    such strings, so a written config reads back equal.
    """
    import yaml

    class Loader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.depth >= MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", mark)
            self.depth += 1
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

        def get_single_node(self) -> Any:
            node = super().get_single_node()
            if node is not None:
                _expanded_size(node)
            return node

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[Any] = set()
            for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else []:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key {key!r} is given twice in one mapping; keep one", key_node.start_mark
                    )
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    class Dumper(yaml.SafeDumper):
        pass

    for cls in (Loader, Dumper):
        cls.add_implicit_resolver("tag:yaml.org,2002:float", FLOAT_RE, list("-+0123456789."))
    return Loader, Dumper


def parse_yaml(text: str) -> Any:
    """YAML text as plain data (`yaml.safe_load` rules, plus `1e-3` read as a number; see `_yaml_classes` for the
    limits on depth, aliases and repeated keys)."""
    import yaml

    return yaml.load(text, Loader=_yaml_classes()[0])  # noqa: S506 - a SafeLoader subclass: builds plain data only


def dump_yaml(data: Any) -> str:
    """Plain data as YAML text that `parse_yaml` reads back equal (keys in their order)."""
    import yaml

    return yaml.dump(data, Dumper=_yaml_classes()[1], sort_keys=False)


def presets_dir() -> Path:
    """The folder of the presets shipped with the package, `pipeline/presets` (the repository's configs/ links here)."""
    from importlib import resources

    return Path(str(resources.files("aigi.pipeline") / "presets"))


def preset_names() -> list[str]:
    """The names `aigi train NAME` / `aigi ablate NAME` accept: the shipped presets' file names without .yaml."""
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def resolve_config(path: str | Path, *, missing: str = "") -> Path:
    """A config file: an existing path, a preset name (`uar`), or `configs/NAME.yaml` of a preset (run anywhere).

    Raises:
        FileNotFoundError: one line naming the presets (and close matches of a bare name).
    """
    path = Path(path)
    if path.is_file():
        return path
    names = preset_names()
    listed = ", ".join(names)
    bare = path.parent == Path(".") and path.suffix == ""
    if (bare or path.parent == Path("configs")) and (presets_dir() / f"{path.stem}.yaml").is_file():
        return presets_dir() / f"{path.stem}.yaml"
    if bare:
        close = difflib.get_close_matches(str(path), names, n=3)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise FileNotFoundError(f"no preset named {str(path)!r}{hint}: presets are {listed}; or pass a YAML file")
    raise FileNotFoundError(missing or f"config {path} does not exist; give a YAML file or a preset: {listed}")


def read_yaml(path: str | Path, *, what: str = "a run config", missing: str = "") -> dict[str, Any]:
    """Read a YAML mapping file; a missing file, invalid YAML or a non-mapping is an error naming the path.

    Args:
        path: the file.
        what: what the mapping is, for the error ("a run config", "an ablation config").
        missing: the whole message when the file does not exist (default: names the presets).
    """
    import yaml

    path = resolve_config(path, missing=missing)
    try:
        raw = parse_yaml(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file; {what} is a UTF-8 YAML file (see configs/)") from None
    except yaml.YAMLError as err:
        problem = _yaml_problem(err)
        raise ValueError(f"{path}: not valid YAML ({problem}); fix that line (see configs/ for examples)") from None
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: {what} is a YAML mapping (KEY: VALUE lines), not a {type(raw).__name__}")
    return dict(raw)


def _yaml_problem(err: Exception) -> str:
    """`problem at line L, column C` of a YAML error (tags of Python objects are refused by the safe loader)."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = " ".join(str(getattr(err, "problem", None) or err).split())
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return problem + where


def parse_value(text: str) -> Any:
    """A `--set` value, YAML-parsed: `[a, b]`, `true`, `null`, `0.1`, `1e-4` (a number), `'1e-4'` (a string)."""
    return parse_yaml(text) if text.strip() else ""


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply `key.sub=value` overrides (YAML-parsed values) to a copy of a raw config mapping (keys are checked
    later by parsing)."""
    return apply_dotted(data, overrides, parse=parse_value)


def override_caches(data: Mapping[str, Any], caches: Sequence[str]) -> dict[str, Any]:
    """Apply `--cache [ALIAS=]PATH` options: ALIAS= replaces that alias; bare paths replace the config's in order."""
    out = copy.deepcopy(dict(data))
    section = dict(out.get("data") or {})
    current = cache_aliases(section.get("caches"))
    named = [c for c in caches if "=" in c]
    bare = [c for c in caches if "=" not in c]
    aliases = list(current)
    if bare and len(bare) != len(aliases) and aliases:
        raise ValueError(
            f"got {len(bare)} --cache path(s) for a config with {len(aliases)} caches ({', '.join(aliases)}); "
            "name them as --cache ALIAS=PATH"
        )
    updated = dict(current) if aliases else {}
    for alias, path in zip(aliases, bare, strict=False):
        updated[alias] = path
    if not aliases:
        updated.update(cache_aliases(bare))
    for item in named:
        alias, _, path = item.partition("=")
        updated[alias] = path
    section["caches"] = updated
    out["data"] = section
    return out


def load_config(
    path: str | Path | None = None, *, overrides: Sequence[str] = (), caches: Sequence[str] = ()
) -> RunConfig:
    """Read a YAML run config, apply `--cache` then `--set` overrides, and parse it strictly.

    Args:
        path: the YAML file (None: start from an empty mapping, everything from overrides).
        overrides: `key.sub=value` strings.
        caches: `[ALIAS=]PATH` strings replacing the config's caches.
    """
    raw: dict[str, Any] = {}
    source = "--set"
    if path is not None:
        raw = read_yaml(path)
        source = f"{path}" + (" (with --set)" if overrides else "")
    raw = override_caches(raw, caches) if caches else raw
    return parse_config(apply_overrides(raw, overrides), source=source)


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The config as plain YAML-ready data, in the layout of the preset files (head params flattened)."""
    data = dataclasses.asdict(cfg)
    head = data.pop("head")
    data["head"] = {"name": head["name"], **head["params"]}
    keys = ("description", "head", "fit", "data", "eval", *(["calibration"] if cfg.calibration else []))
    return _plain({k: data[k] for k in keys})


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def save_config(cfg: RunConfig | Mapping[str, Any], directory: str | Path) -> Path:
    """Write the resolved config (a RunConfig or its `to_dict` form) to DIRECTORY/config.yaml; `load_config` reads
    it back to an equal RunConfig. Its first line, a YAML comment, names the code that wrote it (`saved_revision`)."""
    from aigi.common.provenance import code_revision

    path = Path(directory) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = to_dict(cfg) if isinstance(cfg, RunConfig) else dict(cfg)
    path.write_text(f"{REVISION_MARK}{code_revision()}\n" + dump_yaml(data), encoding="utf-8")
    return path


def saved_revision(path: str | Path) -> str | None:
    """The code revision a config saved by `save_config` names in its first line, or None."""
    first = Path(path).read_text(encoding="utf-8").partition("\n")[0]
    return first[len(REVISION_MARK) :].strip() if first.startswith(REVISION_MARK) else None
