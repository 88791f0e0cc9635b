"""Saved heads: written as a pair (a failed save keeps the old head whole), and damaged, tampered or non-finite files
are refused with one line naming the file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from aigi import heads
from aigi.cli import main


def linear(seed: int, dim: int = 6):
    return heads.build("linear", inputs=("f",), in_dim=dim, seed=seed)


def weights_of(head) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in head.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("failing", ["head.json", "head.safetensors"])
def test_a_failed_save_keeps_the_previous_head_whole(tmp_path, monkeypatch, failing):
    old = linear(0)
    heads.save(old, tmp_path / "run", meta={"metrics": {"auc": 0.5}})
    real_replace = os.replace

    def full_disk(src, dst):
        if Path(dst).name == failing:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="previous head is kept"):
        heads.save(linear(1), tmp_path / "run", meta={"metrics": {"auc": 0.9}})
    monkeypatch.undo()
    head, info = heads.load(tmp_path / "run")
    assert same(weights_of(head), weights_of(old)) and info["metrics"] == {"auc": 0.5}
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["head.json", "head.safetensors"]


def test_weights_from_another_save_are_refused(tmp_path):
    heads.save(linear(0), tmp_path / "a")
    heads.save(linear(1), tmp_path / "b")
    (tmp_path / "b/head.safetensors").replace(tmp_path / "a/head.safetensors")
    with pytest.raises(ValueError, match=r"a/head.safetensors does not match .*a/head.json"):
        heads.load(tmp_path / "a")


def _without_digest(directory: Path, **changes) -> None:
    info = json.loads((directory / "head.json").read_text())
    info.pop("weights_sha256")
    info["config"].update(changes)
    (directory / "head.json").write_text(json.dumps(info))


def test_absurd_shape_in_head_json_is_refused_before_allocating(tmp_path):
    heads.save(linear(0), tmp_path / "h")
    _without_digest(tmp_path / "h", in_dim=10**12)  # 4 TB of float32 if it were built
    with pytest.raises(ValueError, match=r"head.json: config shapes differ from .*head.safetensors"):
        heads.load(tmp_path / "h")


@pytest.mark.parametrize("content", [b"", b"partial"])
def test_truncated_or_empty_weights_are_one_line(tmp_path, capsys, content):
    heads.save(linear(0), tmp_path / "h")
    data = (tmp_path / "h/head.safetensors").read_bytes()
    (tmp_path / "h/head.safetensors").write_bytes(content or b"")
    _without_digest(tmp_path / "h")
    assert main(["head", "info", str(tmp_path / "h")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "head.safetensors is not a readable safetensors file" in err[0]
    (tmp_path / "h/head.safetensors").write_bytes(data[: len(data) - 7])  # cut inside the tensor data
    assert main(["head", "info", str(tmp_path / "h")]) == 2
    assert "head.safetensors is not a readable safetensors file" in capsys.readouterr().err


def test_nan_weights_are_refused_at_import_and_at_load(tmp_path, capsys):
    weight = torch.ones(1, 4)
    weight[0, 1] = float("nan")
    torch.save({"linear.weight": weight, "linear.bias": torch.zeros(1)}, tmp_path / "uar.pth")
    assert main(["head", "import-uar", str(tmp_path / "uar.pth"), "-o", str(tmp_path / "h")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hold NaN/inf" in err[0] and not (tmp_path / "h/head.json").exists()
    heads.save(linear(0, dim=4), tmp_path / "old")  # a head whose weights became infinite on disk
    save_file({"linear.weight": torch.full((1, 4), float("inf")), "linear.bias": torch.zeros(1)},
              str(tmp_path / "old/head.safetensors"))  # fmt: skip
    _without_digest(tmp_path / "old")
    with pytest.raises(ValueError, match=r"old/head.safetensors: weights \['linear.weight'\] hold NaN/inf"):
        heads.load(tmp_path / "old")
