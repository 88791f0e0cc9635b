"""`--weights` by name: `hf-hub:ORG/REPO[:FILE][@REVISION]` and the backbones' aliases, served by a loopback hub.

Nothing here reaches the internet: `tests.hub_server` serves the files in the Hugging Face URL layout and points
huggingface_hub (endpoint, cache, offline flag) at it.
"""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as save_safetensors

from aigi import extractors
from aigi.common.hub import WeightsUnavailable, parse_hub_name
from aigi.extractors import weights as weights_mod
from aigi.extractors.weights import resolve_weights
from tests.hub_server import FakeHub, go_offline, hub  # noqa: F401

from . import tiny

TIMM = "timm:vit_tiny_patch16_224"
TIMM_REPO = "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"  # timm's registry: the default tag's hub repository


@pytest.fixture(scope="module")
def timm_bytes() -> bytes:
    """A tiny timm ViT's state dict as a .safetensors file's bytes."""
    return save_safetensors({k: v.contiguous() for k, v in tiny.timm_tiny().state_dict().items()})


def torch_bytes(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_hub_names_parse_and_refuse_malformed_ones() -> None:
    name = parse_hub_name("hf-hub:org/repo:sub/w.safetensors@v1.0")
    assert (name.repo_id, name.filename, name.revision) == ("org/repo", "sub/w.safetensors", "v1.0")
    assert str(name) == "hf-hub:org/repo:sub/w.safetensors@v1.0"
    assert parse_hub_name("hf-hub:org/repo").filename is None
    for bad in ("hf-hub:repo", "hf-hub:org/repo@", "hf-hub:/x"):
        with pytest.raises(ValueError, match=r"hf-hub:ORG/REPO\[:FILE\]\[@REVISION\]"):
            parse_hub_name(bad)


def test_a_local_path_never_touches_the_network(tmp_path: Path, timm_bytes: bytes, hub: FakeHub) -> None:  # noqa: F811
    local = tmp_path / "openai"  # a file spelt like an alias is still the file
    local.write_bytes(timm_bytes)
    assert resolve_weights(str(local), backbone="clip-l14") == str(local)
    assert resolve_weights(tmp_path / "absent.pth", backbone=TIMM) == str(tmp_path / "absent.pth")
    assert resolve_weights(None, backbone=TIMM) is None
    assert not hub.gets


def test_by_name_download_lands_in_the_cache_once_and_fingerprints_like_a_local_file(
    tmp_path: Path,
    timm_bytes: bytes,
    hub: FakeHub,  # noqa: F811
) -> None:
    hub.add("org/tiny-vit", "model.safetensors", timm_bytes)
    ex = extractors.build(TIMM, weights="hf-hub:org/tiny-vit", device="cpu", **tiny.TIMM_TINY)
    cached = Path(resolve_weights("hf-hub:org/tiny-vit", backbone=TIMM))
    assert cached.is_relative_to(tmp_path / "hf" / "hub") and cached.read_bytes() == timm_bytes
    assert hub.gets == {"/org/tiny-vit/resolve/main/model.safetensors": 1}  # the second resolution read the cache
    assert ex.spec.weights_sha256 == sha(timm_bytes)  # what the same bytes in a local file give (sha256_file)


def test_offline_reads_the_cache_and_names_the_manual_way_otherwise(
    tmp_path: Path,
    timm_bytes: bytes,
    hub: FakeHub,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hub.add("org/tiny-vit", "weights.safetensors", timm_bytes)
    first = resolve_weights("hf-hub:org/tiny-vit:weights.safetensors", backbone=TIMM)
    go_offline(monkeypatch)
    assert resolve_weights("hf-hub:org/tiny-vit:weights.safetensors", backbone=TIMM) == first
    assert sum(hub.gets.values()) == 1
    with pytest.raises(WeightsUnavailable) as err:
        resolve_weights("hf-hub:org/other:w.pth", backbone=TIMM)
    text = str(err.value)
    assert "\n" not in text and "HF_HUB_OFFLINE=1" in text and "not in the cache" in text
    assert f"{hub.url}/org/other/resolve/main/w.pth" in text and "--weights PATH" in text


def test_a_name_the_hub_does_not_hold_is_one_line_naming_what_was_tried(hub: FakeHub) -> None:  # noqa: F811
    with pytest.raises(WeightsUnavailable) as err:
        resolve_weights("hf-hub:org/empty", backbone=TIMM)
    text = str(err.value)
    assert "\n" not in text and "model.safetensors (absent) / open_clip_model.safetensors (absent)" in text
    with pytest.raises(WeightsUnavailable, match=r"did you mean openai\?.*its aliases: openai"):
        resolve_weights("opena", backbone="clip-l14")


def test_timm_alias_follows_timms_registry(timm_bytes: bytes, hub: FakeHub) -> None:  # noqa: F811
    hub.add(TIMM_REPO, "model.safetensors", timm_bytes)
    assert Path(resolve_weights("timm", backbone=TIMM)).read_bytes() == timm_bytes
    hub.add("timm/vit_tiny_patch16_224.augreg_in21k", "model.safetensors", b"other tag")
    assert Path(resolve_weights("timm:augreg_in21k", backbone=TIMM)).read_bytes() == b"other tag"
    with pytest.raises(WeightsUnavailable, match="timm's registry has no hub file for the pretrained tag 'nope'"):
        resolve_weights("timm:nope", backbone=TIMM)


def test_openai_alias_follows_open_clips_registry(hub: FakeHub) -> None:  # noqa: F811
    import open_clip

    repo = open_clip.get_pretrained_cfg("ViT-L-14-336", "openai")["hf_hub"].rstrip("/")
    hub.add(repo, "open_clip_pytorch_model.bin", b"openai's weights")  # open_clip tries .safetensors first: absent
    assert Path(resolve_weights("openai", backbone="clip-l14-336")).read_bytes() == b"openai's weights"
    assert repo == "timm/vit_large_patch14_clip_336.openai"


def test_apple_alias_fetches_backbone_and_head_and_checks_the_published_pins(
    tmp_path: Path,
    hub: FakeHub,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = tiny.AIM_TINY
    state = tiny.aim_official_state(embed_dim=cfg["embed_dim"], depth=cfg["depth"], num_heads=cfg["num_heads"])
    backbone = torch_bytes({k: v for k, v in state.items() if not k.startswith("head.")})
    head = torch_bytes({k: v for k, v in state.items() if k.startswith("head.")})
    hub.add("apple/AIM", "aim_3b_5bimgs_attnprobe_backbone.pth", backbone)
    hub.add("apple/AIM", "aim_3b_5bimgs_attnprobe_head_best_layers.pth", head)
    with pytest.raises(WeightsUnavailable, match=r"not the pinned 8475ce4e.*pass --weights hf-hub:apple/AIM:aim_3b"):
        resolve_weights("apple", backbone="aim-v1-3b")  # our tiny files are not Apple's: refused
    pins = ("aim_3b_5bimgs", sha(backbone)[:8], sha(head)[:8], "0" * 8)
    monkeypatch.setitem(weights_mod._AIM, "aim-v1-3b", pins)
    ex = extractors.build("aim-v1-3b", weights="apple", device="cpu", **cfg)
    assert ex.spec.weights_sha256 == f"{sha(backbone)}+{sha(head)}"
    by_names = ",".join(f"hf-hub:apple/AIM:aim_3b_5bimgs_attnprobe_{p}.pth" for p in ("backbone", "head_best_layers"))
    assert extractors.build("aim-v1-3b", weights=by_names, device="cpu", **cfg).spec == ex.spec
    (tmp_path / "b.pth").write_bytes(backbone)
    (tmp_path / "h.pth").write_bytes(head)  # the same bytes as local files: the same spec, so the same fingerprint
    local = extractors.build("aim-v1-3b", weights=f"{tmp_path / 'b.pth'},{tmp_path / 'h.pth'}", device="cpu", **cfg)
    assert local.spec == ex.spec


def test_an_unreachable_hub_stops_at_the_first_file_and_says_why(
    hub: FakeHub,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from huggingface_hub import constants

    closed = "http://127.0.0.1:9"  # nothing listens there: the connection is refused at once
    monkeypatch.setattr(time, "sleep", lambda seconds: None)  # huggingface_hub's back-off between its retries
    monkeypatch.setattr(constants, "ENDPOINT", closed)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", closed + "/{repo_id}/resolve/{revision}/{filename}")
    with pytest.raises(WeightsUnavailable) as err:
        resolve_weights("hf-hub:org/tiny-vit", backbone=TIMM)
    text = str(err.value)
    assert "could not get model.safetensors (LocalEntryNotFoundError" in text and "pytorch_model" not in text
    assert f"download {closed}/org/tiny-vit/resolve/main/model.safetensors by hand and pass --weights PATH" in text
