"""AIM-v1: Apple's checkpoints load by name, the probe equals a plain computation, the trunk stops early."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from aigi import extractors
from aigi.extractors.aim import AIM_SIZES, create_aim_model, official_to_ours, sincos_positions

from . import tiny

DATA = Path(__file__).resolve().parents[1] / "data"
CFG = tiny.AIM_TINY


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, Path]:
    sd = tiny.aim_official_state(embed_dim=CFG["embed_dim"], depth=CFG["depth"], num_heads=CFG["num_heads"], seed=3)
    backbone, head = tiny.save_aim_checkpoints(sd, tmp_path_factory.mktemp("aim"))
    return sd, backbone, head


def _official_keys() -> dict[str, dict[str, list[int]]]:
    return json.loads((DATA / "aim_v1_3b_keys.json").read_text())["files"]


def test_probe_equals_plain_computation(checkpoint: tuple[dict, Path, Path]) -> None:
    sd, backbone, head = checkpoint
    ex = extractors.build("aim-v1-1b", weights=f"{backbone},{head}", device="cpu", **CFG)
    assert ex.spec.features == ("probe",) and ex.feature_shapes == {"probe": (CFG["embed_dim"],)}
    batch = torch.stack([ex.transform(img, f"img{i}") for i, img in enumerate(tiny.noise_images(4, (120, 90)))])
    expected = tiny.plain_aim(sd, batch, heads=CFG["num_heads"], probe_layers=CFG["probe_layers"])["probe"]
    assert (ex(batch)["probe"] - expected).abs().max().item() <= 1e-5


def test_weights_folder_and_backbone_only(checkpoint: tuple[dict, Path, Path]) -> None:
    sd, backbone, head = checkpoint
    x = torch.randn(2, 3, 56, 56)
    from_folder = extractors.build("aim-v1-3b", weights=backbone.parent, device="cpu", **CFG)
    assert from_folder.spec.weights_sha256.count("+") == 1
    expected = tiny.plain_aim(sd, x, heads=CFG["num_heads"], probe_layers=CFG["probe_layers"])
    assert (from_folder(x)["probe"] - expected["probe"]).abs().max().item() <= 1e-5
    trunk_only = extractors.build("aim-v1-3b", weights=backbone, features=["l2.mean"], device="cpu", **CFG)
    assert "+" not in trunk_only.spec.weights_sha256  # the head file is not part of what l2.mean depends on
    assert (trunk_only(x)["l2.mean"] - expected["l2.mean"]).abs().max().item() <= 1e-5
    with pytest.raises(ValueError, match="needs the attention-probe head"):
        extractors.build("aim-v1-3b", weights=backbone, features=["probe"], device="cpu", **CFG)
    with pytest.raises(ValueError, match=r"l<i>\.mean, l<i>\.tokens, probe"):
        extractors.build("aim-v1-3b", weights=backbone, features=["l2.cls"], device="cpu", **CFG)


def test_last_layers_head_uses_the_last_six_blocks(tmp_path: Path) -> None:
    cfg = {**CFG, "depth": 7}
    sd = tiny.aim_official_state(embed_dim=cfg["embed_dim"], depth=7, num_heads=cfg["num_heads"])
    backbone, head = tiny.save_aim_checkpoints(sd, tmp_path)
    last = head.rename(tmp_path / "aim_tiny_attnprobe_head_last_layers.pth")
    ex = extractors.build(
        "aim-v1-3b", weights=f"{backbone},{last}", device="cpu", **{k: v for k, v in cfg.items() if k != "probe_layers"}
    )
    assert dict(ex.spec.arch_params)["probe_layers"] == (1, 2, 3, 4, 5, 6)
    x = torch.randn(2, 3, 56, 56)
    expected = tiny.plain_aim(sd, x, heads=cfg["num_heads"], probe_layers=(1, 2, 3, 4, 5, 6))["probe"]
    assert (ex(x)["probe"] - expected).abs().max().item() <= 1e-5


def test_trunk_stops_after_the_deepest_needed_block(checkpoint: tuple[dict, Path, Path]) -> None:
    _, backbone, head = checkpoint
    ex = extractors.build("aim-v1-3b", weights=f"{backbone},{head}", features=["probe", "l0.mean"], device="cpu", **CFG)
    assert len(ex.model.trunk.blocks) == max(CFG["probe_layers"]) + 1
    real = create_aim_model("aim-v1-3b", device="meta")
    real.set_features(["probe"])
    assert len(real.trunk.blocks) == 18  # blocks 0-17 of 24: a quarter of the trunk is never run


def test_positions_follow_apples_grid_order() -> None:
    pos = sincos_positions(2, 3, 8)  # w = (1, 0.01); token (row 1, column 2) is index 5
    w = (1.0, 0.01)
    expected = [
        math.sin(2 * w[0]),
        math.sin(2 * w[1]),
        math.cos(2 * w[0]),
        math.cos(2 * w[1]),
        math.sin(1 * w[0]),
        math.sin(1 * w[1]),
        math.cos(1 * w[0]),
        math.cos(1 * w[1]),
    ]
    torch.testing.assert_close(pos[5], torch.tensor(expected))
    torch.testing.assert_close(pos[0], torch.tensor([0.0, 0, 1, 1, 0, 0, 1, 1]))


def test_tiny_generator_uses_the_official_names() -> None:
    official = _official_keys()
    names = set().union(*official.values())
    sd = tiny.aim_official_state(embed_dim=8, depth=24, num_heads=2)
    assert set(sd) == names


def test_real_3b_matches_apples_checkpoint_names_and_shapes() -> None:
    official = _official_keys()
    meta = {k: torch.empty(s, device="meta") for f in official.values() for k, s in f.items()}
    model = create_aim_model("aim-v1-3b", device="meta")
    mapped = {k: tuple(v.shape) for k, v in official_to_ours(meta, model).items()}
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert mapped == ours
    assert all(k.startswith(("preprocessor.", "trunk.")) for k in official["aim_3b_5bimgs_attnprobe_backbone.pth"])
    trunk = sum(p.numel() for n, p in model.named_parameters() if n.startswith("trunk.") and n != "trunk.pos_embed")
    assert trunk == sum(torch.Size(s).numel() for s in official["aim_3b_5bimgs_attnprobe_backbone.pth"].values())
    assert round(trunk / 1e9, 2) == 2.72


@pytest.mark.parametrize("name", sorted(AIM_SIZES))
def test_published_sizes(name: str) -> None:
    model = create_aim_model(name, device="meta")
    size = AIM_SIZES[name]
    assert model.trunk.pos_embed.shape == (1, 256, size.embed_dim) and len(model.trunk.blocks) == size.depth
    assert model.trunk.blocks[0].attn.qkv.bias is None and model.trunk.blocks[0].mlp.fc1.bias is None
    assert model.trunk.blocks[0].norm1.eps == 1e-6 and model.head.bn.eps == 1e-6 and not model.head.bn.affine


def test_probe_averages_the_blocks_in_apples_order(tmp_path: Path) -> None:
    """Apple's AverageLayers stacks the probe blocks on a last axis and means over it; summing in another order
    rounds differently (3.8e-6 at the 3B size), so the probe must take exactly Apple's reduction."""
    cfg = {"img_size": 56, "embed_dim": 64, "depth": 6, "num_heads": 2, "probe_layers": (0, 1, 2, 3, 4, 5)}
    sd = tiny.aim_official_state(embed_dim=64, depth=6, num_heads=2, seed=5)
    backbone, head = tiny.save_aim_checkpoints(sd, tmp_path)
    ex = extractors.build("aim-v1-3b", weights=f"{backbone},{head}", device="cpu", **cfg)
    model = ex.model
    x = torch.randn(8, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        blocks = model.trunk.forward_intermediates(x, indices=list(range(6)), output_fmt="NLC", intermediates_only=True)
        expected = model.head(torch.stack(blocks, dim=-1).mean(dim=-1))  # Apple: stack(dim=-1).mean(dim=-1)
        got = ex(x)["probe"]
    assert torch.equal(got, expected)
