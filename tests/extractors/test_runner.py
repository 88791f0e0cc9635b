"""The device side of extraction, run on the CPU: JPEGs decoded "on the device" give the CPU path's features, a
refused file falls back to Pillow, an out-of-memory forward is halved (said once), batches stay in flight in order,
and the CPU's threads go where the bottleneck is."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from aigi import extractors
from aigi.extractors import runner as runner_mod
from aigi.extractors.loader import ImageItems, collate_items
from aigi.extractors.runner import FeatureRunner, ThreadTuner, run_batches
from tests.extractors.test_loader import jpeg, photo


@pytest.fixture(scope="module")
def tiny() -> extractors.Extractor:
    return extractors.build("timm:test_vit", features=["l1.mean", "pooler"], device="cpu")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """JPEG photos of several sizes, a PNG, and a JPEG whose body is zeros (its header reads well)."""
    folder = tmp_path_factory.mktemp("runner")
    paths = []
    for k, (w, h) in enumerate([(200, 150), (160, 160), (90, 120), (300, 180), (120, 100)]):
        paths.append(folder / f"p{k}.jpg")
        paths[-1].write_bytes(jpeg(photo(w, h, seed=k)))
    photo(100, 80, seed=9).save(folder / "q.png")
    good = jpeg(photo(64, 48, seed=7))
    (folder / "broken.jpg").write_bytes(good[:200] + bytes(len(good) - 202) + b"\xff\xd9")
    return [str(p) for p in paths] + [str(folder / "q.png"), str(folder / "broken.jpg")]


def run_all(ex: extractors.Extractor, paths: list[str], *, device_jpeg: bool, batch: int = 3, depth: int = 0) -> dict:
    items = ImageItems(
        paths, ["x"] * len(paths), ["orig"] * len(paths), transform=ex.transform, device_jpeg=device_jpeg
    )
    batches = [
        collate_items([items[i] for i in range(s, min(s + batch, len(paths)))]) for s in range(0, len(paths), batch)
    ]
    run = FeatureRunner(ex, ids=["x"] * len(paths), paths=paths, depth=depth)
    feats, failed = {}, {}
    for got in run_batches(batches, run):
        failed.update(dict(got.failed))
        for j, row in enumerate(got.rows):
            feats[row] = {name: v[j] for name, v in got.values.items()}
    return {"features": feats, "failed": failed, "decoded": run.decoded}


def test_device_decoding_gives_the_cpu_features(tiny, files) -> None:
    on_cpu = run_all(tiny, files, device_jpeg=False)
    on_device = run_all(tiny, files, device_jpeg=True, depth=2)
    assert on_device["decoded"]["device"] == 5  # the five photos; the PNG went through Pillow in the worker
    assert set(on_cpu["features"]) == set(on_device["features"]) == set(range(6))
    for row, feats in on_cpu["features"].items():  # center_crop: the same pixels, the same features
        for name, value in feats.items():
            np.testing.assert_array_equal(on_device["features"][row][name], value)
    # the zeroed JPEG: the device decoder refused it, Pillow then decoded it or said why not, as on the CPU path
    assert on_device["decoded"]["cpu_fallback"] == 1
    assert (6 in on_cpu["failed"]) == (6 in on_device["failed"])


def test_a_file_the_device_refuses_is_decoded_by_pillow(tiny, files, monkeypatch) -> None:
    real = runner_mod.decode_jpegs
    monkeypatch.setattr(runner_mod, "decode_jpegs", lambda datas, device: [None] + real(datas[1:], device))
    fell_back = run_all(tiny, files[:5], device_jpeg=True, batch=5)
    assert fell_back["decoded"] == {"device": 4, "cpu_fallback": 1} and not fell_back["failed"]
    monkeypatch.setattr(runner_mod, "decode_jpegs", real)
    reference = run_all(tiny, files[:5], device_jpeg=False, batch=5)
    for name, value in reference["features"][0].items():
        np.testing.assert_array_equal(fell_back["features"][0][name], value)


class OutOfMemoryAbove:
    """An extractor whose forward runs out of memory above `limit` images (records the sizes it was given)."""

    def __init__(self, inner: extractors.Extractor, limit: int) -> None:
        self.inner, self.limit, self.sizes = inner, limit, []
        self.transform, self.device, self.spec = inner.transform, inner.device, inner.spec

    def run(self, x: torch.Tensor) -> dict:
        self.sizes.append(len(x))
        if len(x) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.inner.run(x)


def test_out_of_memory_halves_the_batch_and_says_so_once(tiny, files, caplog) -> None:
    small = OutOfMemoryAbove(tiny, limit=2)
    with caplog.at_level(logging.WARNING, logger="aigi.extractors.runner"):
        got = run_all(small, files[:5], device_jpeg=False, batch=5)
        again = run_all(small, files[:5], device_jpeg=False, batch=5)
    assert small.sizes[:4] == [5, 2, 2, 1]  # 5 fails; pieces of 2 (5 // 2), the rest
    notes = [r.getMessage() for r in caplog.records if "out of memory" in r.getMessage()]
    assert len(notes) == 2 and "forwarding 2 at a time" in notes[0]  # once per runner (one per run)
    reference = run_all(tiny, files[:5], device_jpeg=False, batch=5)
    for row in range(5):
        for name, value in reference["features"][row].items():
            np.testing.assert_allclose(got["features"][row][name], value, rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(again["features"][row][name], got["features"][row][name])


def test_batches_in_flight_come_back_in_order(tiny, files) -> None:
    items = ImageItems(files[:5], ["x"] * 5, ["orig"] * 5, transform=tiny.transform, device_jpeg=False)
    run = FeatureRunner(tiny, ids=["x"] * 5, paths=files[:5], depth=2)
    batches = [collate_items([items[i]]) for i in range(5)]
    back = [[f.rows for f in run.submit(b)] for b in batches]
    assert back == [[], [], [[0]], [[1]], [[2]]]
    assert [f.rows for f in run.flush()] == [[3], [4]] and not run.pending


def test_thread_tuner_gives_the_forward_threads_only_when_they_pay() -> None:
    before = torch.get_num_threads()
    tuner = ThreadTuner(4, window=2, cooldown=2)
    try:
        assert tuner.current == 1  # decoding is the usual bottleneck on a CPU: start lean
        tuner.observe(5.0, 1.0, 10)  # the first batch (workers starting) is not counted
        for _ in range(2):
            tuner.observe(0.0, 1.0, 10, 0.6)  # images waiting, but the forward shares its core: no trial
        assert tuner.current == 1
        for _ in range(2):
            tuner.observe(0.0, 1.0, 10)  # never waiting for images: the forward is the bottleneck, 10 img/s
        assert tuner.current == 4  # on trial
        for _ in range(2):
            tuner.observe(0.0, 1.0, 10)  # no faster with 4 threads (a loaded machine): back to one
        assert tuner.current == 1
        for _ in range(4):
            tuner.observe(0.0, 1.0, 10)  # resting: no new trial for `cooldown` windows
        assert tuner.current == 1
        for _ in range(2):
            tuner.observe(0.0, 1.0, 10)
        assert tuner.current == 4  # tried again
        for _ in range(2):
            tuner.observe(0.0, 0.5, 10)  # twice as fast: kept
        assert tuner.current == 4
        for _ in range(2):
            tuner.observe(0.5, 0.5, 10)  # waiting half of the time: decoding is the bottleneck again
        assert tuner.current == 1
    finally:
        tuner.close()
    assert torch.get_num_threads() == before
