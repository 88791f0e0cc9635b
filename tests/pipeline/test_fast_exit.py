"""The `aigi` console script skips the interpreter's teardown after read-and-write-a-result commands, and only then.

A real `python -m pipeline` process with an atexit hook (installed by a sitecustomize on its path) that prints a
marker: the marker shows that teardown ran. Whatever the exit path, the command's files and output must be whole.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.pipeline.test_train_eval import make_cache, manual_scores, write_config

ROOT = Path(__file__).resolve().parents[2]
MARKER = "teardown-ran"


def _aigi(tmp_path: Path, *argv: str, hook: str = "") -> subprocess.CompletedProcess:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        f"import atexit, sys\natexit.register(lambda: print({MARKER!r}, file=sys.stderr))\n{hook}\n", encoding="utf-8"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    return subprocess.run([sys.executable, "-m", "aigi", *argv], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("fast_exit")
    store = make_cache(tmp / "cache", ratios={"train": 0.6, "val": 0.2, "test": 0.2})
    cfg = write_config(tmp / "run.yaml", head={"name": "linear", "inputs": ["f"]}, caches={"syn": str(store)})
    out = _aigi(tmp, "train", str(cfg), "-o", str(tmp / "run"))
    return {"tmp": tmp, "cache": store, "cfg": cfg, "train": out}


def test_train_skips_teardown_and_writes_a_whole_head(trained: dict) -> None:
    out = trained["train"]
    assert out.returncode == 0, out.stderr
    assert MARKER not in out.stderr
    assert "train: linear" in out.stdout  # flushed before the exit
    run = trained["tmp"] / "run"
    state = load_file(str(run / "head.safetensors"))
    assert np.isfinite(state["linear.weight"]).all()
    assert json.loads((run / "head.json").read_text())["name"] == "linear"


def test_predict_output_is_whole_without_teardown(trained: dict) -> None:
    tmp = trained["tmp"]
    from aigi import cache

    fs = cache.open(trained["cache"]).load(["f"], where={"view": "orig"})
    out = _aigi(tmp, "predict", str(tmp / "run"), "--cache", str(trained["cache"]), "-o", str(tmp / "p.csv"))
    assert out.returncode == 0, out.stderr
    assert MARKER not in out.stderr
    import pandas as pd

    got = pd.read_csv(tmp / "p.csv").set_index("image_id")
    want = manual_scores(tmp / "run", fs.features["f"])
    ids = fs.meta["image_id"].to_numpy()
    np.testing.assert_allclose(got.loc[ids, "p_fake"].to_numpy(), want, rtol=1e-4, atol=1e-5)


def test_other_commands_and_failures_keep_teardown(trained: dict) -> None:
    tmp = trained["tmp"]
    verify = _aigi(tmp, "cache", "verify", str(trained["cache"]))
    assert verify.returncode == 0, verify.stderr
    assert MARKER in verify.stderr
    again = _aigi(tmp, "train", str(trained["cfg"]), "-o", str(tmp / "run"))  # refused: run exists
    assert again.returncode == 2 and MARKER not in again.stderr  # fast only after the command's own exit path
    assert again.stderr.strip().count("\n") == 0


def test_a_running_non_daemon_thread_keeps_teardown(trained: dict) -> None:
    tmp = trained["tmp"]
    # a thread that lives exactly as long as the main thread (whatever the machine's speed): it ends at shutdown
    hook = "import threading\nthreading.Thread(target=threading.main_thread().join, daemon=False).start()\n"
    out = _aigi(tmp, "train", str(trained["cfg"]), "-o", str(tmp / "run_t"), hook=hook)
    assert out.returncode == 0, out.stderr
    assert MARKER in out.stderr
