"""`aigi fakes vae|sr --weights hf-hub:...`: the models that make fakes load by hub name, from a loopback hub."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import pytest
import torch

from aigi.common.hub import WeightsUnavailable
from aigi.fakes.small import WEIGHTS_DIR
from tests.hub_server import FakeHub, go_offline, hub  # noqa: F401
from tests.pipeline.test_fakes_sr import compact

pytest.importorskip("spandrel")
pytest.importorskip("diffusers")


def pth_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_sr_model_by_hub_name_and_a_pickle_with_code_refused(
    hub: FakeHub,  # noqa: F811
    tmp_path: Path,
) -> None:
    from aigi.fakes.sr import load_sr

    state = {k: v.contiguous() for k, v in compact(2).state_dict().items()}
    hub.add("org/sr", "tinycompact.pth", pth_bytes({"params": state}))
    sr = load_sr("hf-hub:org/sr:tinycompact.pth", device="cpu")
    assert (sr.name, sr.scale) == ("tinycompact", 2)

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self) -> tuple:
            return (Path.touch, (marker,))

    hub.add("org/sr", "evil.pth", pickle.dumps({"params": Evil()}, protocol=2))
    with pytest.raises(ValueError, match="weights-only"):
        load_sr("hf-hub:org/sr:evil.pth", device="cpu")
    assert not marker.exists()


def test_vae_folder_by_repository_and_sub_folder_name(
    hub: FakeHub,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from aigi.fakes.vae import load_vae

    folder = WEIGHTS_DIR / "small_vae"
    for f in ("config.json", "diffusion_pytorch_model.safetensors"):
        hub.add("org/small-vae", f, (folder / f).read_bytes())
        hub.add("org/pipeline", f"vae/{f}", (folder / f).read_bytes())
    vae = load_vae("hf-hub:org/small-vae", device="cpu")
    assert (vae.name, vae.kind) == ("small-vae", "tiny")
    assert load_vae("hf-hub:org/pipeline:vae", device="cpu").name == "pipeline"
    go_offline(monkeypatch)
    assert load_vae("hf-hub:org/small-vae", name="again", device="cpu").name == "again"  # from the cache
    with pytest.raises(WeightsUnavailable, match=r"hf-hub:org/absent: could not get config.json \(not in the cache\)"):
        load_vae("hf-hub:org/absent", device="cpu")
