"""The decoding side of extraction: bytes read once and hashed, JPEG routing, batches, loaders, worker counts, and the
tensor geometry a device decoder uses against Pillow's."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
import torch
from PIL import Image

from aigi.extractors import loader
from aigi.extractors.loader import (
    ImageItems,
    ThreadLoader,
    auto_workers,
    changed_since_indexed,
    collate_items,
    device_jpeg_size,
    make_loader,
)
from aigi.extractors.preprocess import NORMS, CenterCrop, Resize, RichPatch
from aigi.extractors.runner import decode_jpegs

MEAN, STD = NORMS["imagenet"]


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth random picture (JPEG-like content, unlike white noise)."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    return Image.fromarray(low).resize((width, height), Image.Resampling.BICUBIC)


def jpeg(img: Image.Image, **save: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **save)
    return buf.getvalue()


def test_an_image_is_refused_when_its_bytes_no_longer_hash_to_its_id() -> None:
    data = jpeg(photo(40, 30))
    same = hashlib.sha256(data).hexdigest()
    assert changed_since_indexed(data, same) == ""
    reason = changed_since_indexed(data, hashlib.sha256(b"the file indexed before").hexdigest())
    assert "changed on disk since it was indexed" in reason and "aigi index" in reason and "\n" not in reason
    assert changed_since_indexed(data, "img-0001") == ""  # a hand-made id is not a sha256: nothing to check


def test_only_jpegs_a_device_decodes_like_pillow_go_to_it() -> None:
    base = photo(64, 48)
    assert device_jpeg_size(jpeg(base)) == (64, 48)
    assert device_jpeg_size(jpeg(base.convert("L"))) == (64, 48)
    exif = Image.Exif()
    exif[0x0112] = 6
    refused = {
        "cmyk": jpeg(base.convert("CMYK")),
        "progressive": jpeg(base, progressive=True),
        "rotated": jpeg(base, exif=exif.tobytes()),
        "truncated": jpeg(base)[:-200],
        "png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,
        "garbage": b"\xff\xd8\xff" + b"\x00" * 32 + b"\xff\xd9",
    }
    assert {name: device_jpeg_size(data) for name, data in refused.items()} == dict.fromkeys(refused)


def test_policies_say_where_their_tensor_geometry_matches_pillow() -> None:
    assert CenterCrop(size=32, mean=MEAN, std=STD).tensor_ok(10, 10)  # padded with black either way
    assert not CenterCrop(size=32, mean=MEAN, std=STD, small="resize").tensor_ok(10, 40)
    assert CenterCrop(size=32, mean=MEAN, std=STD, small="resize").tensor_ok(40, 40)
    assert Resize(size=32, mean=MEAN, std=STD).tensor_ok(100, 100)
    assert not Resize(size=32, mean=MEAN, std=STD, interpolation="bicubic").tensor_ok(100, 100)
    assert not RichPatch(size=32, mean=MEAN, std=STD).tensor_ok(100, 100)


@pytest.mark.parametrize(
    ("policy", "max_levels"),
    [(CenterCrop(size=56, mean=MEAN, std=STD), 0), (Resize(size=56, mean=MEAN, std=STD), 1)],
    ids=["center_crop", "resize"],
)
def test_tensor_geometry_after_decoding_matches_pillow(policy: object, max_levels: int) -> None:
    """The CPU equivalent of the GPU path: torchvision's JPEG decoder and the policy's tensor geometry against
    Pillow's decoder and geometry. Same decoded pixels (both libjpeg-turbo); the crop is exact, the bilinear resize
    within one level (the tolerance docs/GPU.md states)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    from aigi.extractors.images import decode_image

    sizes = [(160, 120), (40, 30), (56, 56), (75, 200), (300, 57)]
    for k, (w, h) in enumerate(sizes):
        data = jpeg(photo(w, h, seed=k))
        decoded = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        want = policy.pixels(decode_image(data))
        got = policy.pixels_from_tensor(decoded)
        assert got.dtype == torch.uint8 and got.shape == want.shape == (3, 56, 56)
        assert (got.int() - want.int()).abs().max().item() <= max_levels
        # normalisation is the same elementwise arithmetic for one image and a batch
        assert torch.equal(policy.normalize(want[None])[0], policy(decode_image(data)))


def test_items_route_by_view_format_and_policy(tmp_path) -> None:
    files = {"a.jpg": jpeg(photo(64, 48)), "b.png": None, "c.jpg": jpeg(photo(64, 48, seed=2), progressive=True)}
    paths = []
    for name, data in files.items():
        path = tmp_path / name
        photo(64, 48, seed=3).save(path) if data is None else path.write_bytes(data)
        paths.append(str(path))
    paths.append(str(tmp_path / "missing.jpg"))
    ids = ["x"] * 4
    crop = CenterCrop(size=32, mean=MEAN, std=STD)
    items = ImageItems(paths * 2, ids * 2, ["orig"] * 4 + ["jpeg:75"] * 4, transform=crop, device_jpeg=True)
    kinds = [items[i][1] for i in range(8)]
    assert kinds == ["jpeg", "pixels", "pixels", "failed", "pixels", "pixels", "pixels", "failed"]
    assert items[0][2] == files["a.jpg"] and items[3][2] == "no such file"
    assert items[1][2].dtype == torch.uint8 and items[1][2].shape == (3, 32, 32)
    cpu_only = ImageItems(paths, ids, ["orig"] * 4, transform=crop, device_jpeg=False)
    assert [cpu_only[i][1] for i in range(4)] == ["pixels", "pixels", "pixels", "failed"]
    bicubic = Resize(size=32, mean=MEAN, std=STD, interpolation="bicubic")
    bicubic = ImageItems(paths, ids, ["orig"] * 4, transform=bicubic, device_jpeg=True)
    assert bicubic[0][1] == "pixels"


def test_collate_keeps_pixels_bytes_and_failures_apart() -> None:
    a, b = jpeg(photo(20, 10)), jpeg(photo(30, 20, seed=1))
    px = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).view(2, 3, 4, 4)
    batch = collate_items([(0, "pixels", px[0]), (1, "jpeg", a), (2, "failed", "truncated file"), (3, "jpeg", b),
                           (4, "pixels", px[1])])  # fmt: skip
    assert batch["rows"] == [0, 4] and torch.equal(batch["pixels"], px)
    assert batch["jpeg_rows"] == [1, 3] and batch["failed"] == [(2, "truncated file")]
    ends = batch["jpeg_ends"]
    assert bytes(batch["jpeg"][: ends[0]].numpy()) == a and bytes(batch["jpeg"][ends[0] : ends[1]].numpy()) == b
    empty = collate_items([(0, "failed", "no such file")])
    assert empty["pixels"] is None and empty["jpeg"] is None


class Squares:
    """A dataset whose item i is i x i in a uint8 image."""

    def __getitem__(self, i: int) -> tuple:
        return i, "pixels", torch.full((3, 2, 2), i * i % 256, dtype=torch.uint8)


def test_threads_processes_and_inline_give_the_same_batches(monkeypatch) -> None:
    batches = [[0, 1, 2], [3, 4], [5, 6, 7, 8], [9]]
    inline = make_loader(Squares(), batches, workers=0, threads=False, pin=False)
    inline = [b["pixels"][:, 0, 0, 0].tolist() for b in inline]
    assert inline == [[i * i % 256 for i in b] for b in batches]
    threads = ThreadLoader(Squares(), batches, threads=3, collate=collate_items)
    assert [b["pixels"][:, 0, 0, 0].tolist() for b in threads] == inline
    procs = make_loader(Squares(), batches, workers=2, threads=False, pin=False)
    assert [b["pixels"][:, 0, 0, 0].tolist() for b in procs] == inline
    monkeypatch.setattr(loader, "in_daemon", lambda: True)  # a dask worker may not start processes
    assert isinstance(make_loader(Squares(), batches, workers=2, threads=False, pin=False), ThreadLoader)


def test_auto_workers_take_the_device_share_of_the_cores(monkeypatch) -> None:
    monkeypatch.setattr(loader, "available_cores", lambda: 16)
    assert auto_workers("cpu") == 16 and auto_workers("cuda") == 15
    assert auto_workers("cuda", devices=4) == 3 and auto_workers("cpu", devices=32) == 1
    monkeypatch.setattr(loader, "available_cores", lambda: 128)
    assert auto_workers("cuda") == loader.MAX_WORKERS
    monkeypatch.setattr(loader, "available_cores", lambda: 1)
    assert auto_workers("cuda") == 1


def test_a_jpeg_the_decoder_refuses_comes_back_as_none() -> None:
    good = jpeg(photo(24, 16))
    bad = good[:200] + bytes(len(good) - 202) + b"\xff\xd9"  # the header of a JPEG, then zeros
    out = decode_jpegs([torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in (good, bad)], torch.device("cpu"))
    assert out[0].shape == (3, 16, 24) and out[1] is None
