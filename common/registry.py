"""One registry helper for every "name -> thing" table: heads, extractors, fake kinds and commands.

A `Registry` maps names to objects added by a decorator (`@HEADS.register("linear")`), by a call, or lazily by an
import path (`"aigi.cli.train:register"`, imported on first use so that a command line with fifteen commands
imports only the one it runs). A name may also stand for a family (`timm:` + any model name). Looking up an
unknown name raises one `ValueError` that names the kind, suggests close matches and lists what exists:

    >>> HEADS = Registry("head")
    >>> HEADS.get("lineer")
    ValueError: unknown head 'lineer'. Did you mean linear? Available: concat, expert, gating, linear, ...

A registry written at import time and read afterwards is a table of code, not configuration: it holds no run's
settings and nothing of one call survives into another.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> objects of one kind.

    Args:
        kind: what an entry is, for messages ("head", "extractor", "fake kind", "command").
        package: a package whose modules add entries when imported; all of them are imported on the first lookup
            (so a new entry is one new file in that package).
        family_label: how `names()` shows what follows a family's prefix (`timm:<model name>`).
    """

    def __init__(self, kind: str, *, package: str | None = None, family_label: str = "<name>") -> None:
        self.kind = kind
        self._family_label = family_label
        self._package = package
        self._entries: dict[str, T] = {}
        self._families: dict[str, T] = {}  # prefix -> entry serving every name that starts with it
        self._lazy: dict[str, str] = {}  # name -> "module:attribute", imported on first use

    def register(self, name: str, obj: T | None = None, *, family: bool = False) -> Any:
        """Add `obj` under `name`, or return a decorator that does; `family=True` makes `name` a prefix serving
        every longer name (`timm:` serves `timm:resnet50`). A name registered twice is an error."""

        def add(value: T) -> T:
            table = self._families if family else self._entries
            if name in table or name in self._lazy:
                first = getattr(table.get(name), "__qualname__", None) or self._lazy.get(name) or table.get(name)
                raise ValueError(f"{self.kind} {name!r} is registered twice: it is already registered by {first}")
            table[name] = value
            return value

        return add if obj is None else add(obj)

    def register_lazy(self, name: str, target: str) -> None:
        """Add `name` as `"package.module:attribute"`, imported when the entry is first asked for."""
        if name in self._entries or name in self._lazy:
            raise ValueError(f"{self.kind} {name!r} is registered twice: it is already registered")
        self._lazy[name] = target

    def _load_package(self) -> None:
        if self._package is None:
            return
        package, self._package = importlib.import_module(self._package), None
        for info in pkgutil.iter_modules(package.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{package.__name__}.{info.name}")

    def names(self) -> list[str]:
        """Every name, sorted; families shown as `prefix<name>`."""
        self._load_package()
        return sorted([*self._entries, *self._lazy]) + [f"{p}{self._family_label}" for p in sorted(self._families)]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.find(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def find(self, name: str) -> tuple[T, str | None] | None:
        """(entry, rest) for `name`: rest is None for an exact name, the part after the prefix for a family
        member; None when nothing matches."""
        self._load_package()
        if name in self._lazy:
            module, _, attribute = self._lazy.pop(name).partition(":")
            self._entries[name] = getattr(importlib.import_module(module), attribute)
        if name in self._entries:
            return self._entries[name], None
        for prefix, entry in self._families.items():
            if name.startswith(prefix) and len(name) > len(prefix):
                return entry, name[len(prefix) :]
        return None

    def get(self, name: str) -> T:
        """The entry for `name` (exact or family member); an unknown name raises `unknown(name)`."""
        found = self.find(name)
        if found is None:
            raise self.unknown(name)
        return found[0]

    def unknown(self, name: str) -> ValueError:
        """The error for a name that is not registered: close matches and the full list."""
        known = self.names()
        bare = [n.removesuffix(self._family_label) for n in known]
        close = difflib.get_close_matches(name, bare, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        return ValueError(f"unknown {self.kind} {name!r}.{hint} Available: {', '.join(known)}")

    def items(self) -> list[tuple[str, T]]:
        """(name, entry) for every exact name, lazy ones imported."""
        self._load_package()
        return [(name, self.get(name)) for name in sorted([*self._entries, *self._lazy])]

