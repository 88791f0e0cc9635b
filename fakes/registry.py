"""The registry of fake kinds: one `FakeKind` per module of `aigi.fakes.kinds`, each with typed options.

A new fake type is one file `fakes/kinds/NAME.py` that registers `FakeKind(name=..., options=..., make=...)` with
`register_kind`: its options are a frozen dataclass (typed fields with defaults, each with
`field(metadata={"help": ...})`), and `make(options)` returns a `FakeTransform` (heavy imports such as torch go inside
`make`, so `aigi --help` stays fast). The command line turns the dataclass's fields into its flags (`aigi fakes NAME
--help`); the stage (`aigi.pipeline.fakes`) does the rest: batching by size, atomic writes, resume, manifest rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from PIL import Image

from aigi.common.registry import Registry

# Every public module of the package registers its kind when imported; the package is imported on the first lookup.
FAKE_KINDS: Registry[FakeKind] = Registry("fake kind", package="aigi.fakes.kinds")


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


@dataclass(frozen=True)
class ModelOptions:
    """The options of a kind that loads a model from weights; a kind's own options add fields to these.

    A field without a default is a required option (`--weights`); `metadata["parse"]` (a function of the text the
    user typed) converts a field that is typed as one thing but written as another (`--resize none`).
    """

    weights: Path = field(metadata={"help": "model weights (file or folder, see above)"})
    name: str | None = field(
        default=None, metadata={"help": "model name in the source column (default: from --weights)"}
    )
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = field(default="auto", metadata={"help": "auto: fp16 on GPU"})


def no_resize(options: Any) -> int | None:
    """The `resize` of a kind whose fakes keep the reals' native size."""
    return None


@dataclass(frozen=True)
class FakeKind:
    """One kind of aligned fakes (`aigi fakes NAME`).

    Attributes:
        name: the kind's name (the sub-command).
        help: one line for `aigi fakes --help`.
        weights: what the `weights` option accepts (for the help), or "" when the kind loads no weights.
        options: a frozen dataclass of the kind's options; every field has a default (except the required
            `weights` of `ModelOptions`) and `metadata["help"]`.
        make: builds the transform from an `options` instance (loads the model).
        resize: the side both real and fake are resized to (None: native size), from an `options` instance.
    """

    name: str
    help: str
    weights: str
    options: type
    make: Callable[[Any], FakeTransform]
    resize: Callable[[Any], int | None] = no_resize

    def __post_init__(self) -> None:
        if not dataclasses.is_dataclass(self.options) or not self.options.__dataclass_params__.frozen:
            raise TypeError(f"fake kind {self.name!r}: `options` must be a frozen dataclass, got {self.options!r}")
        undocumented = [f.name for f in dataclasses.fields(self.options) if not f.metadata.get("help")]
        if undocumented:
            raise TypeError(f"fake kind {self.name!r}: give {', '.join(undocumented)} a metadata help text")


def register_kind(kind: FakeKind) -> FakeKind:
    """Add `kind` to the registry under its name (a name registered twice is an error); returns it."""
    return FAKE_KINDS.register(kind.name, kind)


def fake_kinds() -> dict[str, FakeKind]:
    """Every registered kind by name, in name order (the modules of `aigi.fakes.kinds` imported on first use)."""
    return dict(FAKE_KINDS.items())


def fake_kind(name: str) -> FakeKind:
    """The kind called `name`; an unknown name is a ValueError naming close matches and listing the kinds."""
    return FAKE_KINDS.get(name)
