"""Every trained run records the code that made it: the git revision in a checkout, else the package version."""

from __future__ import annotations

import json
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

import aigi.common.provenance as provenance
from aigi.cli import main
from aigi.pipeline.ablate import AblateOptions, expand, read_result, run_ablation
from aigi.pipeline.config import load_config, saved_revision
from tests.pipeline.test_ablate import STEPS, ablation
from tests.pipeline.test_ablate import make_cache as make_ablation_cache
from tests.pipeline.test_train_eval import make_cache, write_config

ROOT = Path(__file__).resolve().parents[2]


def checkout_head() -> str:
    out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("the tests do not run from a git checkout")
    return out.stdout.strip()


def train(tmp_path: Path) -> Path:
    store = make_cache(tmp_path / "cache", ratios={"train": 0.6, "val": 0.2, "test": 0.2})
    cfg = write_config(tmp_path / "run.yaml", head={"name": "linear", "inputs": ["f"]}, caches={"syn": str(store)})
    assert main(["train", str(cfg), "-o", str(tmp_path / "run")]) == 0
    return tmp_path / "run"


def test_train_saves_the_git_revision_with_the_head_and_the_config(tmp_path: Path) -> None:
    head = checkout_head()
    run = train(tmp_path)
    info = json.loads((run / "head.json").read_text())
    assert info["code_revision"].removesuffix("+dirty") == head
    assert saved_revision(run / "config.yaml") == info["code_revision"]
    assert load_config(run / "config.yaml").head.name == "linear"  # the revision line does not disturb a replay


def test_outside_a_checkout_the_package_version_is_saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(provenance, "git_revision", lambda *a, **k: None)
    run = train(tmp_path)
    expected = f"aigi {metadata.version('aigi')}"
    assert json.loads((run / "head.json").read_text())["code_revision"] == expected
    assert saved_revision(run / "config.yaml") == expected


def test_every_ablation_run_saves_the_revision(tmp_path: Path) -> None:
    head = checkout_head()
    store = make_ablation_cache(tmp_path / "cache")
    plan = expand({**ablation(store), "seeds": [0]})
    run_ablation(plan, tmp_path / "abl", STEPS, AblateOptions(jobs=1, progress=False))
    for r in plan.runs:
        run_dir = tmp_path / "abl" / "runs" / r.run_id
        assert read_result(run_dir)["code_revision"].removesuffix("+dirty") == head
        assert saved_revision(run_dir / "config.yaml").removesuffix("+dirty") == head
