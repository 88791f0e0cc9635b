"""UAR's released linear head: import, exact scores on the shared sample, the `aigi head` commands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import heads
from pipeline.cli import main
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
