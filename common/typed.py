"""Mappings to frozen dataclasses: strict keys, types converted at the boundary.

A run config read from YAML, a head's config read from head.json and the keyword arguments of `heads.build` all go
through `build` (or `typed_fields`): a key the dataclass does not have is an error naming close matches; each value
is checked against its field's type hint and converted where that is safe (1e-3 written as a string by YAML 1.1
becomes a float, 8.0 an int, a list a tuple, a numpy integer an int); anything else is a `ValueError` naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import numbers
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


class UnknownKeys(ValueError):
    """Keys a dataclass does not have; the message names the first one, its close matches and the known keys.

    Attributes:
        keys: every unknown key, in the order given.
        known: the keys the dataclass accepts.
        where: the dotted prefix of the keys (`data.`), empty at the top level.
        source: what was read (a file name), the message's first word.
    """

    def __init__(self, keys: Sequence[str], known: Sequence[str], *, where: str = "", source: str = "config") -> None:
        self.keys, self.known, self.where, self.source = list(keys), list(known), where, source
        key = self.keys[0]
        close = close_matches(key, self.known)
        hint = f"; did you mean {', '.join(repr(where + c) for c in close)}?" if close else ""
        super().__init__(
            f"{source}: unknown key {where + key!r}{hint} "
            f"(known keys under {where or 'top level'!r}: {', '.join(self.known)})"
        )


def close_matches(key: str, known: Sequence[str], *, n: int = 3) -> list[str]:
    """The known keys that look like `key` (a typo), best first."""
    return difflib.get_close_matches(str(key), list(known), n=n, cutoff=0.6)


def as_number(value: Any) -> Any:
    """YAML 1.1 reads `1e-3` as a string: turn number-looking strings into floats; anything else is returned as is."""
    return float(value) if isinstance(value, str) and FLOAT_RE.match(value.strip()) else value


def coerce(value: Any, hint: Any, *, key: str, source: str = "config") -> Any:
    """Check `value` against a type hint (int, float, str, bool, None, unions, dict, tuple, list); convert where safe.

    Raises:
        ValueError: `SOURCE: KEY must be TYPE, got VALUE (ITS TYPE)`.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return coerce(value, option, key=key, source=source)
            except ValueError:
                continue
        raise ValueError(f"{source}: {key} = {value!r} matches none of {hint}")
    if hint is Any or value is None and hint is type(None):
        return value
    if origin in (dict, Mapping) or hint is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"{source}: {key} must be a mapping, got {value!r}")
        sub = args[1] if len(args) == 2 else Any
        return {k: coerce(v, sub, key=f"{key}.{k}", source=source) for k, v in value.items()}
    if origin in (tuple, list) or hint in (tuple, list):
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, Sequence):
            raise ValueError(f"{source}: {key} must be a list, got {value!r}")
        sub = args[0] if args and (len(args) == 1 or args[1:] == (Ellipsis,)) else Any
        return tuple(coerce(v, sub, key=f"{key}[{i}]", source=source) for i, v in enumerate(items))
    converted = _scalar(value, hint)
    if converted is not _NO:
        return converted
    name = getattr(hint, "__name__", str(hint))
    raise ValueError(f"{source}: {key} must be {name}, got {value!r} ({type(value).__name__})")


_NO = object()


def _scalar(value: Any, hint: Any) -> Any:
    """`value` as a bool / int / float / str / other class `hint`, or `_NO` when it is not one."""
    if hint is bool:
        return value if isinstance(value, bool) else _NO
    if hint is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        number = as_number(value)
        if isinstance(number, float) and number.is_integer():
            return int(number)
        return _NO
    if hint is float:
        number = as_number(value)
        ok = isinstance(number, numbers.Real) and not isinstance(number, bool)
        return float(number) if ok else _NO
    if hint is str:
        return value if isinstance(value, str) else _NO
    return value if value is None or isinstance(value, hint) else _NO


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """The resolved type hints of dataclass `cls` (memoised: classes do not change)."""
    return typing.get_type_hints(cls)


def field_names(cls: type) -> list[str]:
    """The field names of dataclass `cls`, in order."""
    return [f.name for f in dataclasses.fields(cls)]


def required_fields(cls: type) -> list[str]:
    """The fields of dataclass `cls` that have no default."""
    missing = dataclasses.MISSING
    return [f.name for f in dataclasses.fields(cls) if f.default is missing and f.default_factory is missing]


def typed_fields(
    cls: type, data: Any, *, where: str = "", source: str = "config", extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The values of a mapping checked against dataclass `cls`, converted by each field's type hint.

    Nested dataclasses are built by `build`, lists and mappings converted element by element, so a quoted "0" stays a
    string where a string is expected and 1e-3 becomes a float where a float is.

    Args:
        cls: the dataclass.
        data: the mapping (None: empty).
        where: the dotted prefix of its keys in the whole document (`data.`), for messages.
        source: what was read (a file name), for messages.
        extra: further allowed keys and their type hints (not fields of `cls`).

    Raises:
        UnknownKeys: keys `cls` does not have.
        ValueError: a value of the wrong type, or `data` not a mapping.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: {where.rstrip('.') or 'the config'} must be a mapping, got {data!r}")
    hints = {**_hints(cls), **(extra or {})}
    names = [*field_names(cls), *(extra or {})]
    unknown = [str(k) for k in data if k not in names]
    if unknown:
        raise UnknownKeys(unknown, names, where=where, source=source)
    kwargs = {}
    for key, value in data.items():
        sub = hints[key]
        if dataclasses.is_dataclass(sub):
            kwargs[key] = build(sub, value, where=f"{where}{key}.", source=source)
        else:
            kwargs[key] = coerce(value, sub, key=where + key, source=source)
    return kwargs


def build(cls: type, data: Any, *, where: str = "", source: str = "config") -> Any:
    """Strictly build dataclass `cls` from a mapping (see `typed_fields`).

    Raises:
        ValueError: unknown keys, wrong types, or required fields missing (`... is incomplete: ...`).
    """
    kwargs = typed_fields(cls, data, where=where, source=source)
    missing = [name for name in required_fields(cls) if name not in kwargs]
    if missing:
        raise ValueError(f"{source}: {where.rstrip('.') or 'the config'} is incomplete: missing {', '.join(missing)}")
    return cls(**kwargs)
