"""The small grammars users type, each parsed in one place: thresholds, abstain bands, views, byte sizes and memory
budgets, stream modes, split ratios, `NAME=VALUE` lists, `[ALIAS=]VALUE` lists, `--set` paths, image formats and
pixel sizes.

Every parser takes the text as typed (on the command line or in a YAML config) and returns a plain value or a small
frozen dataclass; anything else raises one `ValueError` that names the option, what was given and the accepted forms.
The command line, the run configs and the Python API all call these, so one word means one thing everywhere.
"""

from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# ------------------------------------------------------------------------------------------------ thresholds, bands


@dataclass(frozen=True)
class ThresholdRule:
    """How a decision threshold on P(fake) is chosen (a row is called fake when P(fake) >= the threshold).

    Attributes:
        policy: "fixed" (the number `value`), "val_acc" (the best balanced accuracy on validation rows) or
            "target_fpr" (split-conformal on the validation reals: at most `value` of new reals called fake).
        value: the fixed threshold, or the target FPR; None for val_acc.
    """

    policy: str
    value: float | None = None

    def fit_kwargs(self) -> dict[str, Any]:
        """The threshold keywords of `heads.fit_calibration`."""
        if self.policy == "fixed":
            return {"threshold_policy": "fixed", "threshold": self.value}
        if self.policy == "target_fpr":
            return {"threshold_policy": "target_fpr", "target_fpr": self.value}
        return {"threshold_policy": "val_acc"}

    def __str__(self) -> str:
        if self.policy == "val_acc":
            return "val_acc"
        return f"{self.value:g}" if self.policy == "fixed" else f"fpr:{self.value:g}"


THRESHOLD_FORMS = "a number in [0, 1], val, val_acc or fpr:A (e.g. fpr:0.01)"


def parse_threshold(text: str | float, *, option: str = "--threshold") -> ThresholdRule:
    """`0.5` -> fixed, `val_acc` or `val` -> best validation cut, `fpr:0.01` -> target FPR on validation reals."""
    word = str(text).strip().lower()
    if word in ("val", "val_acc"):
        return ThresholdRule("val_acc")
    if word.startswith("fpr:"):
        return ThresholdRule("target_fpr", _fraction(word[4:], option=option, text=text))
    value = _number(word)
    if value is None:
        raise ValueError(f"{option} {text!r}: expected {THRESHOLD_FORMS}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{option} {text!r}: a fixed threshold must be in [0, 1] (it is a P(fake))")
    return ThresholdRule("fixed", value)


@dataclass(frozen=True)
class BandRule:
    """An abstain band around the threshold: "none", "coverage" (abstain on 1 - C of the validation rows nearest the
    threshold) or "error" (class-conditional split-conformal: each kind of error <= A)."""

    policy: str = "none"
    target: float | None = None

    def fit_kwargs(self) -> dict[str, Any]:
        """The band keywords of `heads.fit_calibration`."""
        return {"band_policy": self.policy, "band_target": self.target}

    def __str__(self) -> str:
        return "none" if self.policy == "none" else f"{self.policy}:{self.target:g}"


def parse_band(text: str | None, *, option: str = "--band") -> BandRule:
    """`none` (or nothing), `coverage:C` or `error:A`, with C and A in (0, 1)."""
    if text is None:
        return BandRule()
    kind, sep, arg = str(text).strip().lower().partition(":")
    if kind == "none" and not sep:
        return BandRule()
    if kind not in ("coverage", "error") or not sep:
        raise ValueError(f"{option} {text!r}: expected none or coverage:X or error:X (X in (0, 1))")
    return BandRule(kind, _fraction(arg, option=option, text=text))


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _fraction(arg: str, *, option: str, text: Any) -> float:
    value = _number(arg)
    if value is None:
        raise ValueError(f"{option} {text!r}: {arg!r} is not a number")
    if not 0.0 < value < 1.0:
        raise ValueError(f"{option} {text!r}: the target must be in (0, 1)")
    return value


# ------------------------------------------------------------------------------------------------------------ views

VIEW_KINDS = ("orig", "jpeg", "webp", "blur", "resize", "crop")
VIEW_FORMS = "orig, jpeg:Q, webp:Q, blur:SIGMA, resize:SCALE, crop:FRACTION"
_QUALITY = ("jpeg", "webp")
DEFAULT_CROP = 0.5


def parse_view(view: str) -> tuple[str, float | int | None]:
    """One view as (kind, parameter): `jpeg:75` -> ("jpeg", 75), `crop` -> ("crop", 0.5), `orig` -> ("orig", None)."""
    kind, sep, arg = str(view).strip().partition(":")
    if kind not in VIEW_KINDS:
        raise ValueError(f"unknown view {view!r}; views are {VIEW_FORMS}")
    if kind == "crop" and not sep:
        return kind, DEFAULT_CROP
    if kind == "orig":
        if sep:
            raise ValueError(f"view 'orig' takes no parameter, got {view!r}")
        return kind, None
    try:
        value: float | int = int(arg) if kind in _QUALITY else float(arg)
    except ValueError:
        what = "whole number" if kind in _QUALITY else "number"
        raise ValueError(f"view {view!r}: {arg!r} is not a {what}") from None
    if kind in _QUALITY and not 1 <= value <= 100:
        raise ValueError(f"view {view!r}: {kind.upper()} quality must be in 1..100")
    if kind not in _QUALITY and not (math.isfinite(value) and value > 0):
        raise ValueError(f"view {view!r}: {kind} needs a positive number")
    if kind == "crop" and value > 1:
        raise ValueError(f"view {view!r}: crop keeps a fraction of each side, in (0, 1]")
    return kind, value


def canonical_view(view: str) -> str:
    """The canonical spelling of a view ("jpeg:075" -> "jpeg:75", "blur:1" -> "blur:1.0"); validates."""
    kind, value = parse_view(view)
    return kind if value is None else f"{kind}:{value!r}"


def parse_views(text: str | Sequence[str]) -> list[str]:
    """Comma-separated views (or a list) -> canonical names, in order; errors on unknown, malformed or repeated
    views."""
    items = text.split(",") if isinstance(text, str) else list(text)
    views = [canonical_view(v) for v in items if str(v).strip()]
    if not views:
        raise ValueError("no view given; e.g. --views orig,jpeg:75,blur:1.0,resize:0.5")
    repeated = sorted({v for v in views if views.count(v) > 1})
    if repeated:
        raise ValueError(f"views repeated: {', '.join(repeated)}")
    return views


# ------------------------------------------------------------------------------------------ sizes, budgets, streams

UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}  # fmt: skip


def parse_size(value: Any, *, option: str) -> int:
    """Bytes from a positive number or a size with a unit: `1.5GB`, `800 MiB`, `300MB` (SI and binary units)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return int(value)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(value))
    if match and match.group(2).upper() in UNITS and 0 < float(match.group(1)) < math.inf:
        return int(float(match.group(1)) * UNITS[match.group(2).upper()])
    raise ValueError(f"{option} {value!r}: give bytes or a size such as 1.5GB, 800MB, 2GiB")


def parse_budget(value: Any, *, default: int, option: str = "data.memory_budget") -> int:
    """A memory budget in bytes: None or `auto` = `default`, else `parse_size`."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return int(default)
    try:
        return parse_size(value, option=option)
    except ValueError:
        raise ValueError(f"{option} {value!r}: give bytes or a size such as 1.5GB, 800MB, 2GiB (or omit it)") from None


STREAM_MODES = ("auto", True, False)


def parse_stream(value: Any, *, option: str = "data.stream") -> str | bool:
    """`auto`, `true` or `false` (or the booleans) -> "auto", True or False."""
    if isinstance(value, str) and value.strip().lower() in ("auto", "true", "false"):
        return {"auto": "auto", "true": True, "false": False}[value.strip().lower()]
    if isinstance(value, bool) or value == "auto":
        return value
    raise ValueError(f"{option} {value!r}: use true, false or auto")


def parse_side(text: Any, *, option: str = "--resize", minimum: int = 8) -> int | None:
    """A side length in pixels (`none` or nothing: None)."""
    if text is None or str(text).strip().lower() == "none":
        return None
    word = str(text).strip()
    if not word.isdigit() or int(word) < minimum:
        raise ValueError(f"bad {option} {text!r}: none or a side length in pixels >= {minimum}")
    return int(word)


def parse_format(text: str, *, option: str = "--format") -> str:
    """An image encoding: `same`, `png` or `jpeg:Q` with Q in 1..100 (`jpg:Q` accepted)."""
    word = str(text).strip().lower()
    if word in ("same", "png"):
        return word
    kind, _, value = word.partition(":")
    if kind in ("jpeg", "jpg") and value.isdigit() and 1 <= int(value) <= 100:
        return f"jpeg:{int(value)}"
    raise ValueError(f"bad {option} {text!r}: expected same, png or jpeg:Q with Q in 1..100 (e.g. jpeg:95)")


# --------------------------------------------------------------------------------------------------------- lists

SPLIT_NAMES = ("train", "val", "test")


def parse_split_ratio(text: str, *, option: str = "--split-ratio") -> dict[str, float]:
    """`train=0.8,test=0.2` -> {"train": 0.8, "test": 0.2}; names from train/val/test, fractions summing to 1."""
    ratios: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in SPLIT_NAMES:
            raise ValueError(f"bad split ratio {part!r}: expected NAME=FRACTION with NAME in {SPLIT_NAMES}")
        number = _number(value)
        if number is None:
            raise ValueError(f"bad split ratio {part!r}: {value!r} is not a number")
        ratios[key] = number
    total = sum(ratios.values())
    if not ratios or any(v < 0 for v in ratios.values()) or abs(total - 1.0) > 1e-6:
        raise ValueError(
            f"{option} {text!r}: the split ratios must be non-negative and sum to 1 (they sum to {total:g})"
        )
    return ratios


def parse_assignments(text: str | None, *, what: str) -> dict[str, str]:
    """`a=1,b=2` -> {"a": "1", "b": "2"} (`what` names the option in errors)."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"bad {what} {part!r}: expected NAME=VALUE")
        out[key.strip()] = value.strip()
    return out


def parse_aliased(items: Sequence[str], aliases: Sequence[str], *, option: str = "--weights") -> dict[str, str | None]:
    """`[ALIAS=]VALUE` items -> {alias: value} over `aliases`: a bare VALUE serves the only alias; with several, each
    item names its alias (`--weights clip=a.pth --weights aim=b`)."""
    out: dict[str, str | None] = {a: None for a in aliases}
    known = ", ".join(aliases) or "none"
    for item in items:
        alias, sep, value = str(item).partition("=")
        if sep and alias in out:
            out[alias] = value
        elif sep and alias and "/" not in alias and os.sep not in alias and not os.path.exists(item):
            raise ValueError(
                f"{option} {item!r}: {alias!r} is none of the aliases here ({known}); give {option} "
                f"{aliases[0] if aliases else 'ALIAS'}=VALUE, or the bare VALUE when there is one alias"
            )
        elif len(aliases) == 1:
            out[aliases[0]] = str(item)
        else:
            raise ValueError(f"{option} {item!r}: give {option} ALIAS=VALUE for each of {len(aliases)} ({known})")
    return out


# --------------------------------------------------------------------------------------------------- --set paths


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Replace the value at dotted `key` (`fit.lr`) of a nested mapping, creating sections on the way."""
    parts = [p for p in str(key).strip().split(".")]
    if not parts or any(not p for p in parts):
        raise ValueError(f"--set key {key!r}: expected a dotted key such as fit.lr")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ValueError(f"--set {key}: {part!r} holds a value, not a section")
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def split_assignment(item: str, *, option: str = "--set") -> tuple[str, str]:
    """`fit.lr=1e-4` -> ("fit.lr", "1e-4")."""
    key, sep, text = str(item).partition("=")
    if not sep or not key.strip():
        raise ValueError(f"{option} {item!r}: expected KEY=VALUE with a dotted key, e.g. fit.lr=1e-4")
    return key.strip(), text


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str], *, parse: Any) -> dict[str, Any]:
    """A deep copy of `data` with every `KEY=VALUE` of `overrides` set (`parse` turns the VALUE text into data)."""
    out = copy.deepcopy(dict(data))
    for item in overrides:
        key, text = split_assignment(item)
        set_dotted(out, key, parse(text))
    return out
