"""UAR's released linear head: import, exact scores on the shared sample, the `aigi head` commands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from aigi import heads
from aigi.cli import main
from tests.conftest import shared_path


def _sample() -> tuple[np.ndarray, Path]:
    root = shared_path("uar_sample")
    files = sorted(root.glob("0_real/*.npy")) + sorted(root.glob("1_fake/*.npy"))
    X = np.concatenate([np.load(f, allow_pickle=False).reshape(1, -1) for f in files]).astype(np.float32)
    return X, root / "uar_released_linear_head.pth"


def test_uar_head_scores_every_row_as_x_w_plus_b() -> None:
    X, pth = _sample()
    assert X.shape == (4000, 3072)
    state = torch.load(pth, weights_only=True, map_location="cpu")
    w = state["linear.weight"].numpy().astype(np.float64)
    b = state["linear.bias"].numpy().astype(np.float64)
    head = heads.uar_linear(pth)
    with torch.no_grad():
        logits = head({"probe": torch.from_numpy(X)}).double().numpy()
    expected = (X.astype(np.float64) @ w.T + b).ravel()
    np.testing.assert_allclose(logits, expected, rtol=0, atol=2e-5)
    np.testing.assert_allclose(heads.predict(head, X), 1 / (1 + np.exp(-expected)), rtol=0, atol=1e-6)


def test_cli_import_uar_then_info(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    X, pth = _sample()
    assert main(["head", "import-uar", str(pth), "-o", str(tmp_path / "uar"), "--feature", "probe"]) == 0
    head, info = heads.load(tmp_path / "uar")
    assert info["name"] == "linear" and info["inputs"] == ["probe"] and info["imported_from"]["kind"] == "uar"
    np.testing.assert_array_equal(heads.predict(head, X[:50]), heads.predict(heads.uar_linear(pth), X[:50]))
    capsys.readouterr()
    assert main(["head", "info", str(tmp_path / "uar")]) == 0
    out = capsys.readouterr().out
    assert "linear" in out and "3,073 parameters" in out and "probe" in out


def test_cli_import_gapl(tmp_path: Path) -> None:
    gapl = shared_path("gapl")
    code = main(
        [
            "head",
            "import-gapl",
            "--stage1",
            str(gapl / "stage1.pt"),
            "--prototypes",
            str(gapl / "pca_3type_num64.pt"),
            "-o",
            str(tmp_path / "g"),
        ]
    )
    assert code == 0
    head, info = heads.load(tmp_path / "g")
    assert info["name"] == "prototype" and head.cfg.fit_prototypes is False
    assert torch.equal(head.prototypes, torch.load(gapl / "pca_3type_num64.pt", weights_only=True))


def test_import_rejects_wrong_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.pth"
    torch.save({"fc.weight": torch.zeros(1, 4)}, bad)
    with pytest.raises(ValueError, match="linear.weight"):
        heads.uar_linear(bad)
    assert main(["head", "import-uar", str(tmp_path / "missing.pth"), "-o", str(tmp_path / "o")]) == 2
    assert "missing.pth" in capsys.readouterr().err


# ---------------------------------------------------------------- any released linear probe (`aigi head import-linear`)
def _univfd_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """The layout of UnivFD's pretrained_weights/fc_weights.pth: `model.fc.state_dict()` of nn.Linear(768, 1)."""
    fc = torch.nn.Linear(768, 1)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        fc.weight.copy_(torch.randn(1, 768, generator=g) * 0.05)
        fc.bias.copy_(torch.randn(1, generator=g))
    return fc.state_dict()


def test_univfd_fc_weights_score_exactly_as_x_w_plus_b(tmp_path: Path) -> None:
    state = _univfd_state()
    assert sorted(state) == ["bias", "weight"]
    torch.save(state, tmp_path / "fc_weights.pth")
    head = heads.linear_probe(tmp_path / "fc_weights.pth", feature="proj")
    x = torch.randn(64, 768, generator=torch.Generator().manual_seed(1))
    w, b = state["weight"], state["bias"]
    reference_fc = torch.nn.Linear(768, 1)
    reference_fc.load_state_dict(state)  # UnivFD: model.fc.load_state_dict(torch.load(ckpt))
    with torch.no_grad():
        got = head({"proj": x})
        assert torch.equal(got, (x @ w.T + b).squeeze(-1))
        assert torch.equal(got, reference_fc(x).squeeze(-1))
    np.testing.assert_array_equal(heads.predict(head, x.numpy()), torch.sigmoid((x @ w.T + b).double()).numpy()[:, 0])


@pytest.mark.parametrize("prefix", ["", "linear.", "fc.", "module.fc."])
def test_probe_layouts_load(prefix: str, tmp_path: Path) -> None:
    state = {f"{prefix}{k}": v for k, v in _univfd_state(2).items()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "probe.pth")
    head = heads.linear_probe(tmp_path / "probe.pth", feature="proj")
    torch.testing.assert_close(head.linear.weight, _univfd_state(2)["weight"], rtol=0, atol=0)


def test_two_class_head_becomes_its_logit_difference(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(3)
    w, b = torch.randn(2, 32, generator=g), torch.randn(2, generator=g)
    save_file({"fc.weight": w, "fc.bias": b}, str(tmp_path / "two.safetensors"))
    x = torch.randn(50, 32, generator=g)
    softmax_fake = torch.softmax(x @ w.T + b, dim=1)[:, 1]
    head = heads.linear_probe(tmp_path / "two.safetensors", feature="pooler")
    torch.testing.assert_close(
        torch.from_numpy(heads.predict(head, x.numpy())).float(), softmax_fake, rtol=0, atol=1e-6
    )
    flipped = heads.linear_probe(tmp_path / "two.safetensors", feature="pooler", fake_class=0)
    torch.testing.assert_close(
        torch.from_numpy(heads.predict(flipped, x.numpy())).float(), 1 - softmax_fake, rtol=0, atol=1e-6
    )


def test_imported_probe_refuses_other_features(tmp_path: Path) -> None:
    torch.save(_univfd_state(), tmp_path / "fc_weights.pth")
    head = heads.linear_probe(tmp_path / "fc_weights.pth", feature="proj")
    with pytest.raises(ValueError, match=r"needs feature\(s\) \['proj'\]"):
        heads.predict(head, {"pooler": np.zeros((2, 1024), np.float32)})
    with pytest.raises(ValueError, match="'proj' of width 768.*1024"):
        heads.predict(head, {"proj": np.zeros((2, 1024), np.float32)})


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"weight": torch.zeros(3, 8), "bias": torch.zeros(3)}, "1 or 2 rows"),
        ({"weight": torch.zeros(1, 8), "bias": torch.zeros(1), "other.weight": torch.zeros(2)}, "other.weight"),
        ({"fc.weight": torch.zeros(1, 8), "linear.weight": torch.zeros(1, 8)}, "several"),
        ({"encoder.weight": torch.zeros(1, 8)}, "no linear probe"),
    ],
)
def test_probe_import_explains_unusable_files(state: dict, message: str, tmp_path: Path) -> None:
    torch.save(state, tmp_path / "x.pth")
    with pytest.raises(ValueError, match=message):
        heads.linear_probe(tmp_path / "x.pth", feature="proj")


def test_cli_import_linear_needs_the_feature_and_records_the_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from aigi import cache
    from aigi.cache import CacheWriter

    torch.save(_univfd_state(), tmp_path / "fc_weights.pth")
    with pytest.raises(SystemExit):  # --feature is required: the probe only means something on its own feature
        main(["head", "import-linear", str(tmp_path / "fc_weights.pth"), "-o", str(tmp_path / "h")])
    capsys.readouterr()
    spec = {"name": "clip-l14", "preprocess": "center_crop", "mean": [0.48145466, 0.4578275, 0.40821073]}
    with CacheWriter(tmp_path / "c", spec=spec, features={"proj": (768,), "pooler": (1024,)}, fmt="h5") as writer:
        meta = pd.DataFrame({"image_id": ["a", "b"], "label": [0, 1], "source": ["s", "s"], "path": ["a", "b"]})
        feats = np.random.default_rng(0).standard_normal((2, 768)).astype(np.float32)
        writer.append(meta, {"proj": feats, "pooler": np.zeros((2, 1024), np.float32)})
    args = [
        "head",
        "import-linear",
        str(tmp_path / "fc_weights.pth"),
        "--feature",
        "pooler",
        "--cache",
        str(tmp_path / "c"),
    ]
    assert main([*args, "-o", str(tmp_path / "bad")]) == 2
    assert "width 1024" in capsys.readouterr().err
    args[4] = "proj"
    assert main([*args, "-o", str(tmp_path / "h")]) == 0
    head, info = heads.load(tmp_path / "h")
    assert info["inputs"] == ["proj"] and info["imported_from"]["kind"] == "linear"
    assert info["fingerprints"] == {"clip-l14": cache.open(tmp_path / "c").fingerprint}
    assert info["extractor_spec"]["clip-l14"]["mean"] == spec["mean"]


def test_bound_probe_scores_its_cache_and_refuses_another_recipe(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """UnivFD's probe bound to a CLIP-normalised `proj` cache: `aigi eval` scores it as sigmoid(x @ w.T + b) and
    refuses a cache of the same feature made with ImageNet statistics."""
    from aigi.cache import CacheWriter

    state = _univfd_state(4)
    torch.save(state, tmp_path / "fc_weights.pth")
    X = np.random.default_rng(5).standard_normal((40, 768)).astype(np.float32)
    rows = pd.DataFrame(
        {"image_id": [f"i{i}" for i in range(40)], "label": [i % 2 for i in range(40)], "source": "s", "split": "test"}
    ).assign(path=lambda d: d["image_id"])
    for name, mean in [("clipnorm", [0.48145466, 0.4578275, 0.40821073]), ("imagenet", [0.485, 0.456, 0.406])]:
        spec = {"name": "clip-l14", "preprocess": "center_crop", "mean": mean}
        with CacheWriter(tmp_path / name, spec=spec, features={"proj": (768,)}, fmt="h5", dtype="float32") as w:
            w.append(rows, {"proj": X})
    cmd = ["head", "import-linear", str(tmp_path / "fc_weights.pth"), "--feature", "proj"]
    assert main([*cmd, "--cache", str(tmp_path / "clipnorm"), "-o", str(tmp_path / "univfd")]) == 0
    assert (
        main(["eval", str(tmp_path / "univfd"), "--cache", str(tmp_path / "imagenet"), "-o", str(tmp_path / "r")]) == 2
    )
    assert "mean: [0.48145466" in capsys.readouterr().err
    assert (
        main(["eval", str(tmp_path / "univfd"), "--cache", str(tmp_path / "clipnorm"), "-o", str(tmp_path / "r")]) == 0
    )
    scores = pd.read_parquet(tmp_path / "r" / "scores.parquet").set_index("image_id").loc[rows["image_id"], "score"]
    expected = torch.sigmoid((torch.from_numpy(X) @ state["weight"].T + state["bias"]).double()).numpy()[:, 0]
    np.testing.assert_array_equal(scores.to_numpy(), expected)
