"""The registry of fake kinds: `aigi fakes KIND` for every module of `pipeline.fakes.kinds` that defines `KIND`.

A new fake type is one file `pipeline/fakes/kinds/NAME.py` holding `KIND = FakeKind(...)`: its options and a `make`
function returning a `FakeTransform` (heavy imports such as torch go inside `make`, so `aigi --help` stays fast).
The runner (`pipeline.fakes.runner`) does the rest: batching by size, atomic writes, resume, manifest rows.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from PIL import Image


@runtime_checkable
class FakeTransform(Protocol):
    """Maps a batch of real images (all with one batch key) to fakes of the same sizes, in order."""

    source: str  # the manifest's source value of the fakes, e.g. "vae:sd-vae-ft-mse"

    def batch_key(self, width: int, height: int) -> tuple[int, int]:
        """Images with equal keys can share one batch (e.g. their padded size)."""
        ...

    def __call__(self, images: list[Image.Image], image_ids: list[str]) -> list[Image.Image]:
        """The fakes of `images`; `image_ids` seed anything random per image."""
        ...


def _no_resize(args: argparse.Namespace) -> int | None:
    return None


@dataclass(frozen=True)
class FakeKind:
    """One `aigi fakes NAME` sub-command.

    Attributes:
        name: the sub-command.
        help: one line for `aigi fakes --help`.
        weights: what --weights accepts (for the help), or "" when the kind needs no weights (no --weights option).
        add_arguments: adds the kind's own options to its parser.
        make: builds the transform from the parsed arguments (loads the model).
        resize: the side both real and fake are resized to (None: native size), from the arguments.
    """

    name: str
    help: str
    weights: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    make: Callable[[argparse.Namespace], FakeTransform]
    resize: Callable[[argparse.Namespace], int | None] = _no_resize


def fake_kinds() -> dict[str, FakeKind]:
    """Every registered kind by name, in name order (the modules of `pipeline.fakes.kinds` with a `KIND`)."""
    import aigi.pipeline.fakes.kinds as kinds

    found = {}
    for info in pkgutil.iter_modules(kinds.__path__):
        kind = getattr(importlib.import_module(f"{kinds.__name__}.{info.name}"), "KIND", None)
        if isinstance(kind, FakeKind):
            found[kind.name] = kind
    return dict(sorted(found.items()))


def fake_kind(name: str) -> FakeKind:
    """The kind called `name`; an unknown name is a ValueError listing the kinds and close matches."""
    known = fake_kinds()
    if name not in known:
        close = difflib.get_close_matches(name, list(known), n=3)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise ValueError(f"unknown fake kind {name!r}{hint}; kinds: {', '.join(known)}")
    return known[name]
