"""The registry of fake kinds: vae and sr register through it, an unknown kind names close matches, and a new kind
is one file (a dataclass of options and a `make`) whose fields are its flags and that `aigi fakes` runs end to end."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from aigi.cache import read_manifest
from aigi.cli import build_parser, main
from aigi.cli.fakes import options_from_args
from aigi.common.registry import Registry
from aigi.fakes import kinds, registry
from aigi.fakes.registry import FakeKind, FakeTransform, fake_kind, fake_kinds
from tests.pipeline.test_fakes import write_reals

BLUR_KIND = '''
"""A test kind: Gaussian blur of radius --radius."""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from PIL import ImageFilter

from aigi.common.grammar import parse_side
from aigi.fakes.registry import FakeKind, register_kind


@dataclass(frozen=True)
class BlurOptions:
    radius: int = field(default=2, metadata={"help": "blur radius in pixels"})
    mode: Literal["gauss", "box"] = field(default="gauss", metadata={"help": "which blur"})
    sharpen_after: bool = field(default=False, metadata={"help": "sharpen the blurred image"})
    notes: Optional[Path] = field(default=None, metadata={"help": "a file of notes", "metavar": "FILE"})
    side: Optional[int] = field(default=None, metadata={"help": "none | N", "parse": parse_side})


class Blur:
    def __init__(self, radius):
        self.radius, self.source = radius, f"blur:r{radius}"

    def batch_key(self, width, height):
        return (height, width)

    def __call__(self, images, image_ids):
        return [img.filter(ImageFilter.GaussianBlur(self.radius)) for img in images]


KIND = register_kind(FakeKind(
    name="blur", help="Gaussian blur", weights="", options=BlurOptions, make=lambda options: Blur(options.radius),
))
'''


def test_vae_and_sr_are_registered_kinds() -> None:
    found = fake_kinds()
    assert {"vae", "sr"} <= set(found)
    assert all(isinstance(k, FakeKind) and k.name == name for name, k in found.items())
    sub = build_parser()._subparsers._group_actions[0].choices["fakes"]._subparsers._group_actions[0].choices
    assert set(sub) == set(found)


def test_an_unknown_kind_names_close_matches() -> None:
    with pytest.raises(ValueError, match=r"Did you mean vae\?.*Available: .*sr.*vae"):
        fake_kind("vea")
    with pytest.raises(ValueError, match="Available: "):
        fake_kind("diffusion")


@pytest.fixture
def blur_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`fakes/kinds/blur.py` as one more file of the kinds package, seen by a registry that has not looked yet."""
    folder = tmp_path / "kinds"
    folder.mkdir()
    (folder / "blur.py").write_text(textwrap.dedent(BLUR_KIND), encoding="utf-8")
    monkeypatch.setattr(kinds, "__path__", [*kinds.__path__, str(folder)])
    monkeypatch.setattr(registry, "FAKE_KINDS", Registry("fake kind", package=kinds.__name__))
    for name in [m for m in sys.modules if m.startswith(f"{kinds.__name__}.")]:
        monkeypatch.delitem(sys.modules, name)  # imported again by the new registry, restored afterwards
    yield
    sys.modules.pop(f"{kinds.__name__}.blur", None)


def test_a_new_kind_is_one_file(tmp_path: Path, blur_kind) -> None:
    assert "blur" in fake_kinds()
    args = build_parser().parse_args(["fakes", "blur", "--manifest", "m", "-o", "d"])
    assert isinstance(fake_kind("blur").make(options_from_args(fake_kind("blur").options, args)), FakeTransform)
    manifest = write_reals(tmp_path / "data", [("a.png", 40, 30), ("sub/b.png", 24, 36)])
    out = tmp_path / "fakes"
    assert main(["fakes", "blur", "--manifest", str(manifest), "-o", str(out), "--radius", "3"]) == 0
    rows = read_manifest(manifest)
    fakes, reals = rows[rows["label"] == 1], rows[rows["label"] == 0]
    assert len(fakes) == 2 and set(fakes["source"]) == {"blur:r3"}
    assert set(fakes["pair_id"]) == set(reals["image_id"])
    for rel in ("a.png", "sub/b.png"):
        real = Image.open(tmp_path / "data" / rel).convert("RGB")
        fake = np.asarray(Image.open(out / "blur_r3" / "1_fake" / rel))
        assert np.array_equal(fake, np.asarray(real.filter(ImageFilter.GaussianBlur(3))))


def test_a_kinds_dataclass_fields_are_its_flags(blur_kind) -> None:
    """Each field is a flag: typed from its annotation, its default and help from the field, its choices from a
    Literal; a bool is a switch, a `parse` field keeps the typed text until the options are built."""
    fakes = build_parser()._subparsers._group_actions[0].choices["fakes"]
    parser = fakes._subparsers._group_actions[0].choices["blur"]
    flags = {a.option_strings[-1]: a for a in parser._actions if a.option_strings}
    assert {"--radius", "--mode", "--sharpen-after", "--notes", "--side"} <= set(flags)
    assert not {"--weights", "--name", "--device", "--dtype"} & set(flags)  # a kind without a model has none
    radius = flags["--radius"]
    assert (radius.type, radius.default, radius.help) == (int, 2, "blur radius in pixels")
    assert flags["--mode"].choices == ["gauss", "box"] and flags["--notes"].metavar == "FILE"
    assert flags["--sharpen-after"].nargs == 0 and flags["--notes"].type is Path
    argv = ["fakes", "blur", "--manifest", "m", "-o", "d", "--radius", "5", "--mode", "box", "--sharpen-after",
            "--notes", "n.txt", "--side", "64"]  # fmt: skip
    options = options_from_args(fake_kind("blur").options, build_parser().parse_args(argv))
    assert (options.radius, options.mode, options.sharpen_after) == (5, "box", True)
    assert (options.notes, options.side) == (Path("n.txt"), 64)
    defaults = options_from_args(fake_kind("blur").options, build_parser().parse_args(argv[:6]))
    assert defaults == fake_kind("blur").options()
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv[:6], "--mode", "motion"])
    with pytest.raises(ValueError, match="'tiny'"):
        options_from_args(fake_kind("blur").options, build_parser().parse_args([*argv[:6], "--side", "tiny"]))


def test_kind_options_must_be_a_frozen_documented_dataclass() -> None:
    from dataclasses import dataclass, field

    @dataclass
    class Loose:
        radius: int = field(default=1, metadata={"help": "r"})

    @dataclass(frozen=True)
    class Undocumented:
        radius: int = 1

    make = lambda options: None
    with pytest.raises(TypeError, match="frozen dataclass"):
        FakeKind(name="x", help="", weights="", options=Loose, make=make)
    with pytest.raises(TypeError, match="radius a metadata help"):
        FakeKind(name="x", help="", weights="", options=Undocumented, make=make)


def test_the_shipped_kinds_take_typed_options_not_a_namespace() -> None:
    """`aigi fakes vae --resize none --tile-size 0` gives the typed options the library's `make` takes."""
    from aigi.fakes.kinds.vae import VaeOptions

    argv = ["fakes", "vae", "--manifest", "m", "--weights", "w", "-o", "d", "--resize", "none", "--tile-size", "0"]
    options = options_from_args(fake_kind("vae").options, build_parser().parse_args(argv))
    assert options == VaeOptions(weights=Path("w"), tile_size=0)
    assert fake_kind("vae").resize(options) is None
    resized = options_from_args(fake_kind("vae").options, build_parser().parse_args([*argv, "--resize", "64"]))
    assert fake_kind("vae").resize(resized) == 64 and fake_kind("sr").resize(resized) is None


def test_a_field_the_command_line_cannot_type_is_refused_when_the_parser_is_built() -> None:
    import argparse
    from dataclasses import dataclass, field

    from aigi.cli.fakes import add_dataclass_options

    @dataclass(frozen=True)
    class Options:
        keep: bool = field(default=True, metadata={"help": "keep it"})
        sides: tuple[int, ...] = field(default=(1,), metadata={"help": "sides"})

    parser = argparse.ArgumentParser()
    add_dataclass_options(parser, Options, names=("keep",))
    assert parser.parse_args([]).keep is True and parser.parse_args(["--no-keep"]).keep is False
    with pytest.raises(TypeError, match="sides"):
        add_dataclass_options(argparse.ArgumentParser(), Options)
