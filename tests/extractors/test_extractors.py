"""Every registered extractor, built tiny from an official-format checkpoint, equals a direct forward."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
from pathlib import Path

import pytest
import torch

from aigi import extractors
from aigi.extractors.weights import read_state_dict

from . import tiny

NAMES = extractors.available()


def _case(name: str, tmp: Path) -> tuple[str, str, dict, list[str], object]:
    """(build name, weights, overrides, features, reference(x) -> dict) for a registered name."""
    if name.startswith("clip-"):
        model = tiny.open_clip_tiny()
        torch.save(model.state_dict(), tmp / "clip.pth")
        feats = ["l0.cls", "l1.mean", "pooler", "proj"]
        return name, str(tmp / "clip.pth"), tiny.CLIP_TINY, feats, lambda x: tiny.open_clip_reference(model, x, feats)
    if name.startswith("aim-v1-"):
        cfg = tiny.AIM_TINY
        sd = tiny.aim_official_state(embed_dim=cfg["embed_dim"], depth=cfg["depth"], num_heads=cfg["num_heads"])
        backbone, head = tiny.save_aim_checkpoints(sd, tmp)
        feats = ["probe", "l0.mean", "l3.mean"]

        def ref(x: torch.Tensor) -> dict:
            out = tiny.plain_aim(sd, x, heads=cfg["num_heads"], probe_layers=cfg["probe_layers"])
            return {f: out[f] for f in feats}

        return name, f"{backbone},{head}", cfg, feats, ref
    assert name == "timm:<model name>"
    model = tiny.timm_tiny()
    torch.save(model.state_dict(), tmp / "vit.pth")  # with its classifier: the loader drops it
    feats = ["l2.cls", "l0.mean", "pooler"]
    return (
        "timm:vit_tiny_patch16_224",
        str(tmp / "vit.pth"),
        tiny.TIMM_TINY,
        feats,
        lambda x: tiny.timm_reference(model, x, feats),
    )


@pytest.mark.parametrize("registered", NAMES)
def test_features_equal_direct_forward(registered: str, tmp_path: Path) -> None:
    name, weights, overrides, feats, reference = _case(registered, tmp_path)
    ex = extractors.build(name, weights=weights, features=feats, device="cpu", **overrides)
    transform = pickle.loads(pickle.dumps(ex.transform))  # as DataLoader workers receive it
    batch = torch.stack([transform(img, f"id{i}") for i, img in enumerate(tiny.noise_images(3))])
    assert batch.shape == (3, 3, ex.spec.input_size, ex.spec.input_size)
    out = ex(batch)
    ref = reference(batch)
    assert list(out) == feats
    for f in feats:
        assert out[f].dtype == torch.float32 and out[f].device.type == "cpu"
        assert tuple(out[f].shape[1:]) == ex.feature_shapes[f]
        assert (out[f] - ref[f]).abs().max().item() <= 1e-5, f
    assert not torch.allclose(out[feats[0]][0], out[feats[0]][1])  # different images, different features


@pytest.mark.parametrize("registered", NAMES)
def test_spec_is_json_and_names_weights(registered: str, tmp_path: Path) -> None:
    name, weights, overrides, feats, _ = _case(registered, tmp_path)
    ex = extractors.build(name, weights=weights, features=feats, device="cpu", **overrides)
    spec = json.loads(json.dumps(dataclasses.asdict(ex.spec)))
    files = weights.split(",")
    if registered.startswith("aim"):
        assert spec["weights_sha256"] == "+".join(hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in files)
    else:
        assert spec["weights_sha256"] == hashlib.sha256(Path(files[0]).read_bytes()).hexdigest()
    assert spec["features"] == feats and [tuple(d) for d in spec["dims"]] == [ex.feature_shapes[f] for f in feats]
    assert spec["dtype"] == "fp32" and spec["input_size"] == ex.spec.input_size
    assert len(spec["mean"]) == 3 and spec["preprocess"] in ("resize", "center_crop", "rich_patch")


def test_default_policies_follow_the_seeds() -> None:
    uar = extractors.build("aim-v1-3b", device="cpu", **tiny.AIM_TINY).spec
    gapl = extractors.build("clip-l14", device="cpu", **tiny.CLIP_TINY).spec
    omni = extractors.build("clip-l14-336", device="cpu", **tiny.CLIP_TINY).spec
    assert (uar.preprocess, uar.mean, uar.features) == ("rich_patch", (0.485, 0.456, 0.406), ("probe",))
    assert dict(uar.preprocess_params) == {"crops": 192}
    assert (gapl.preprocess, gapl.mean) == ("center_crop", (0.485, 0.456, 0.406))
    assert (omni.preprocess, omni.mean[0]) == ("resize", pytest.approx(0.48145466))


def test_unknown_names_suggest_close_matches() -> None:
    with pytest.raises(ValueError, match="Did you mean clip-l14"):
        extractors.build("clip-l4")
    with pytest.raises(ValueError, match="vit_tiny_patch16_224"):
        extractors.build("timm:vit_tiny_patch16_22")
    with pytest.raises(ValueError, match=r"l<i>\.cls, l<i>\.mean, l<i>\.tokens, pooler, proj with i in 0\.\.1"):
        extractors.build("clip-l14", features=["l2.cls"], device="cpu", **tiny.CLIP_TINY)
    with pytest.raises(ValueError, match="unknown architecture overrides"):
        extractors.build("aim-v1-3b", device="cpu", width=3)


def test_duplicate_registration_is_an_error() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        extractors.register_extractor("clip-l14")(lambda **kw: None)


def test_dtype_and_device_choices() -> None:
    with pytest.raises(ValueError, match="only used on a GPU"):
        extractors.build("timm:vit_tiny_patch16_224", dtype="bf16", device="cpu", **tiny.TIMM_TINY)
    with pytest.raises(ValueError, match="unknown dtype"):
        extractors.build("timm:vit_tiny_patch16_224", dtype="fp8", device="cpu", **tiny.TIMM_TINY)
    ex = extractors.build("timm:vit_tiny_patch16_224", device="auto", **tiny.TIMM_TINY)
    assert ex.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert ex.spec.dtype == ("fp32" if ex.device.type == "cpu" else ex.spec.dtype)
    assert not any(p.requires_grad for p in ex.model.parameters()) and not ex.model.training


def test_random_init_is_reproducible_and_marked() -> None:
    a = extractors.build("timm:vit_tiny_patch16_224", device="cpu", **tiny.TIMM_TINY)
    b = extractors.build("timm:vit_tiny_patch16_224", device="cpu", **tiny.TIMM_TINY)
    x = torch.randn(2, 3, 224, 224)
    assert a.spec.weights_sha256 == "random-init" and dict(a.spec.arch_params) == tiny.TIMM_TINY
    torch.testing.assert_close(a(x)["pooler"], b(x)["pooler"], rtol=0, atol=0)


def test_timm_cnn_stage_means(tmp_path: Path) -> None:
    ex = extractors.build("timm:resnet18", features=["l1.mean", "l4.mean", "pooler"], device="cpu")
    assert ex.feature_shapes == {"l1.mean": (64,), "l4.mean": (512,), "pooler": (512,)}
    out = ex(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(out["l4.mean"], out["pooler"])  # resnet's pooler is the mean of the last stage
    with pytest.raises(ValueError, match="l<i>.mean, pooler"):
        extractors.build("timm:resnet18", features=["l1.cls"], device="cpu")


def test_intermediate_only_requests_stop_early() -> None:
    ex = extractors.build("timm:vit_tiny_patch16_224", features=["l1.mean"], device="cpu", **tiny.TIMM_TINY)
    assert len(ex.model.model.blocks) == 2  # blocks after the deepest requested one are dropped
    assert ex(torch.randn(1, 3, 224, 224))["l1.mean"].shape == (1, 192)


def test_read_state_dict_formats_and_refusals(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    sd = {"a.weight": torch.ones(2, 2), "b": torch.zeros(3)}
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, tmp_path / "wrapped.pth")
    save_file(sd, str(tmp_path / "w.safetensors"))
    for f in ["wrapped.pth", "w.safetensors"]:
        got = read_state_dict(tmp_path / f)
        assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)
    torch.save({"weights": sd, "cfg": Path("x")}, tmp_path / "pickled.pth")  # an arbitrary object needs pickle
    with pytest.raises(ValueError, match="cannot be read as plain weights"):
        read_state_dict(tmp_path / "pickled.pth")
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(tmp_path / "jit.pt"))
    with pytest.raises(ValueError, match="TorchScript archive"):
        read_state_dict(tmp_path / "jit.pt")
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        read_state_dict(tmp_path / "absent.pth")


@pytest.mark.parametrize("cut", [0, 5, -3])
def test_truncated_or_empty_safetensors_weights_are_named(tmp_path: Path, cut: int) -> None:
    from safetensors.torch import save_file

    save_file({"a.weight": torch.ones(4, 4)}, str(tmp_path / "w.safetensors"))
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "w.safetensors").write_bytes(data[:cut] if cut >= 0 else data[:cut])
    with pytest.raises(ValueError, match=r"w.safetensors: not a readable \.?safetensors file"):
        read_state_dict(tmp_path / "w.safetensors")
