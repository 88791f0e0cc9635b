"""The commands take `--weights` by name (a loopback hub stands in for the Hugging Face hub): a name that does not
resolve is one line naming what was tried and the manual way, exit 2, and `aigi domains --text-weights openai` finds
the text tower through open_clip's registry."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aigi import cache
from tests.hub_server import FakeHub, go_offline, hub  # noqa: F401
from tests.pipeline.test_cli_errors import cli, user_error
from tests.pipeline.test_domains import tiny_clip
from tests.pipeline.test_extract import extract_args, make_manifest


def test_extract_with_a_name_that_does_not_resolve_is_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    hub: FakeHub,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manifest = make_manifest(tmp_path, 1)
    user_error(
        capsys,
        *extract_args(manifest, tmp_path / "c1", "hf-hub:org/vit-tiny"),
        words=("model.safetensors (absent) / open_clip_model.safetensors (absent)", "pass --weights PATH"),
    )
    go_offline(monkeypatch)
    line = user_error(
        capsys,
        *extract_args(manifest, tmp_path / "c2", "hf-hub:org/vit-tiny:w.pth@v2"),
        words=("HF_HUB_OFFLINE=1", "w.pth (not in the cache)", "pass --weights PATH"),
    )
    assert f"{hub.url}/org/vit-tiny/resolve/v2/w.pth" in line
    user_error(
        capsys,
        *extract_args(manifest, tmp_path / "c3", "timm:no_such_tag"),
        words=("timm's registry has no hub file for the pretrained tag 'no_such_tag' of vit_tiny_patch16_224",),
    )
    assert not hub.gets


def test_domains_text_weights_by_alias(
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    hub: FakeHub,  # noqa: F811
) -> None:
    tiny_clip(tmp_path / "clip.safetensors")
    hub.add("timm/vit_large_patch14_clip_224.openai", "open_clip_model.safetensors",
            (tmp_path / "clip.safetensors").read_bytes())  # fmt: skip
    x = np.random.default_rng(0).standard_normal((6, 24)).astype(np.float32)
    ids = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(6)]
    meta = pd.DataFrame({"image_id": ids, "path": ids, "label": 0, "source": "real", "view": "orig"})
    with cache.CacheWriter(tmp_path / "c", spec={"name": "clip-l14"}, features={"proj": (24,)}, dtype="float32") as w:
        w.append(meta, {"proj": x})
    code, out, err = cli(capsys, "domains", "--cache", tmp_path / "c", "--text-weights", "openai", "-o", tmp_path / "d")
    assert code == 0, err
    assert "zero-shot" in out and set(pd.read_parquet(tmp_path / "d")["method"]) == {"zero-shot"}
    user_error(capsys, "domains", "--cache", tmp_path / "c", "--text-weights", "opena", "-o", tmp_path / "e",
               words=("did you mean openai?",))  # fmt: skip
    assert hub.gets == {"/timm/vit_large_patch14_clip_224.openai/resolve/main/open_clip_model.safetensors": 1}
