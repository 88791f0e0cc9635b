"""The registry of fake kinds: vae and sr register through it, an unknown kind names close matches, and a new kind
is one file that `aigi fakes` runs end to end."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from aigi.cache import read_manifest
from aigi.cli import build_parser, main
from aigi.pipeline.fakes import kinds
from aigi.pipeline.fakes.registry import FakeKind, FakeTransform, fake_kind, fake_kinds
from tests.pipeline.test_fakes import write_reals

BLUR_KIND = '''
"""A test kind: Gaussian blur of radius --radius."""
from PIL import ImageFilter

from aigi.pipeline.fakes.registry import FakeKind


class Blur:
    def __init__(self, radius):
        self.radius, self.source = radius, f"blur:r{radius}"

    def batch_key(self, width, height):
        return (height, width)

    def __call__(self, images, image_ids):
        return [img.filter(ImageFilter.GaussianBlur(self.radius)) for img in images]


KIND = FakeKind(
    name="blur", help="Gaussian blur", weights="",
    add_arguments=lambda p: p.add_argument("--radius", type=int, default=2),
    make=lambda args: Blur(args.radius),
)
'''


def test_vae_and_sr_are_registered_kinds() -> None:
    found = fake_kinds()
    assert {"vae", "sr"} <= set(found)
    assert all(isinstance(k, FakeKind) and k.name == name for name, k in found.items())
    sub = build_parser()._subparsers._group_actions[0].choices["fakes"]._subparsers._group_actions[0].choices
    assert set(sub) == set(found)


def test_an_unknown_kind_names_close_matches() -> None:
    with pytest.raises(ValueError, match=r"did you mean vae\?.*kinds: .*sr.*vae"):
        fake_kind("vea")
    with pytest.raises(ValueError, match="kinds: "):
        fake_kind("diffusion")


@pytest.fixture
def blur_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    folder = tmp_path / "kinds"
    folder.mkdir()
    (folder / "blur.py").write_text(textwrap.dedent(BLUR_KIND), encoding="utf-8")
    monkeypatch.setattr(kinds, "__path__", [*kinds.__path__, str(folder)])
    yield
    sys.modules.pop("aigi.pipeline.fakes.kinds.blur", None)


def test_a_new_kind_is_one_file(tmp_path: Path, blur_kind) -> None:
    assert "blur" in fake_kinds()
    assert isinstance(fake_kind("blur").make(build_parser().parse_args(
        ["fakes", "blur", "--manifest", "m", "-o", "d"])), FakeTransform)
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
