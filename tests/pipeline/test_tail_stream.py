"""Token caches through the streamed path: `aigi train` of a tail head with data.stream true / auto under a small
budget equals in-memory training, `aigi eval` and `aigi predict --cache` score streamed tokens alike, and a token
cache larger than the budget trains within it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from aigi import cache, heads
from aigi.cli import main
from aigi.pipeline.tail import load_head
from tests.pipeline.test_extract import BACKBONE, ROOT, make_manifest, weights  # noqa: F401

TOKENS = "l10.tokens"
N = 16  # images; 12 training rows + 4 validation rows (val_fraction 0.25 of the pairs)


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory, weights: Path) -> Path:  # noqa: F811
    root = tmp_path_factory.mktemp("tokens")
    manifest = make_manifest(root, N)
    argv = ["extract", "--manifest", str(manifest), "--backbone", BACKBONE, "--weights", str(weights)]
    assert main([*argv, "--features", TOKENS, "--cache", str(root / "cache"), "--batch-size", "8"]) == 0
    return root


def run_config(root: Path, store: Path, **data) -> Path:
    """tail_lora on the tokens, full-batch steps: the row order inside a step cannot differ between the paths."""
    config = {
        "head": {"name": "tail_lora", "inputs": [TOKENS], "rank": 4, "targets": ["q", "v", "fc1"]},
        "fit": {"lr": 3e-3, "epochs": 4, "batch_size": 64, "seed": 0, "device": "cpu"},
        "data": {"caches": {"tiny": str(store)}, "val_fraction": 0.25, **data},
    }
    path = root / f"run{len(list(root.glob('run*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def train(config: Path, out: Path, weights: Path, capsys, *sets: str) -> str:  # noqa: F811
    argv = ["train", str(config), "--weights", str(weights), "-o", str(out)]
    for s in sets:
        argv += ["--set", s]
    capsys.readouterr()
    assert main(argv) == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def runs(tokens: Path, weights: Path, tmp_path_factory) -> dict[str, Path]:  # noqa: F811
    """The same head trained in memory, streamed (data.stream: true) and streamed by auto under a 100 kB budget."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, data in (("memory", {}), ("stream", {"stream": True}), ("auto", {"memory_budget": "100kB"})):
        cfg = run_config(root, tokens / "cache", **data)
        assert main(["train", str(cfg), "--weights", str(weights), "-o", str(root / name)]) == 0
        out[name] = root / name
    return out


def test_streamed_training_equals_in_memory(runs: dict[str, Path]) -> None:
    info = {k: heads.read_info(v) for k, v in runs.items()}
    assert "in memory as float32" in info["memory"]["rows_held"]
    assert "streamed from disk (data.stream: true" in info["stream"]["rows_held"]
    assert "streamed from disk: the in-memory copy would exceed the budget" in info["auto"]["rows_held"]
    assert "memory budget 100.0 kB" in info["auto"]["rows_held"]
    assert [i["history"]["streamed"] for i in info.values()] == [False, True, True]
    assert info["memory"]["train_rows"] == 12 and info["memory"]["val_rows"] == 4
    curves = {k: [e for s in i["history"]["stages"] for e in s["epochs"]] for k, i in info.items()}
    want = curves["memory"]
    assert len(want) == 4 and want[-1]["loss"] < want[0]["loss"]  # it trains
    for name in ("stream", "auto"):
        assert len(curves[name]) == 4
        for got, exp in zip(curves[name], want):
            assert got["loss"] == pytest.approx(exp["loss"], abs=1e-5), name
            assert got["val_ap"] == pytest.approx(exp["val_ap"], abs=1e-6), name
    ref = load_state(runs["memory"])
    for name in ("stream", "auto"):
        for key, value in load_state(runs[name]).items():
            torch.testing.assert_close(value, ref[key], rtol=0, atol=1e-5, msg=f"{name}: {key}")
    assert any(k.startswith("lora.") and v.abs().max() > 0 for k, v in ref.items())  # the adapters did move


def load_state(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "head.safetensors"))


def test_eval_of_a_streamed_run_streams_and_scores_like_in_memory(runs, weights, tmp_path, capsys) -> None:  # noqa: F811
    scores = {}
    for name in ("memory", "stream"):
        out = tmp_path / name
        capsys.readouterr()
        assert main(["eval", str(runs[name]), "--split", "train", "--weights", str(weights), "-o", str(out)]) == 0
        held = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("data: "))
        assert ("streamed from disk (data.stream: true" in held) == (name == "stream"), held
        scores[name] = pd.read_parquet(out / "scores.parquet").set_index("image_id")["score"]
    assert len(scores["memory"]) == N
    np.testing.assert_allclose(scores["stream"].loc[scores["memory"].index], scores["memory"], rtol=0, atol=1e-5)


def test_predict_on_the_cached_tokens_streamed_or_in_memory(runs, tokens, weights, tmp_path, capsys) -> None:  # noqa: F811
    run, store = runs["memory"], tokens / "cache"
    got = {}
    for mode, extra in (("false", []), ("true", ["--memory-budget", "100kB"])):
        out = tmp_path / f"{mode}.csv"
        argv = ["predict", str(run), "--cache", str(store), "--stream", mode, "--weights", str(weights), "-o", str(out)]
        assert main([*argv, *extra]) == 0
        assert ("streamed" in capsys.readouterr().err) == (mode == "true")
        got[mode] = pd.read_csv(out).set_index("image_id")["p_fake"]
    head, _ = load_head(run, [str(weights)])
    fs = cache.open(store).load([TOKENS])  # float16 tokens widened to float32 in memory
    want = pd.Series(heads.predict(head, fs.features), index=fs.meta["image_id"])
    for mode in ("false", "true"):
        assert len(got[mode]) == N
        np.testing.assert_allclose(got[mode].loc[want.index], want, rtol=0, atol=1e-6)
    assert want.std() > 0


PEAK = textwrap.dedent(
    """
    import json, sys
    from aigi.cli import main

    def rss(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024

    def growth(config):  # peak RSS growth of one `aigi train`
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
        base = rss("VmRSS")
        argv = ["train", config, "--weights", weights, "-o", out, "--overwrite"]
        assert main(argv + ["--set", "data.memory_budget=" + budget, "--set", "data.stream=" + stream]) == 0
        return rss("VmHWM") - base

    small, big, weights, out, budget, stream = sys.argv[1:7]
    growth(small)  # imports, the tail, the first steps
    loop = growth(small)  # the training loop's own memory (activations of one batch) on the 16-row cache
    print(json.dumps({"loop": loop, "big": growth(big)}))
    """
)


def big_token_cache(path: Path, like: Path, rows: int) -> Path:
    """`rows` rows of random float16 tokens with the spec of a real token cache (so the tail is rebuilt from it)."""
    spec = cache.open(like).spec
    shape = tuple(spec["dims"][spec["features"].index(TOKENS)])
    rng = np.random.default_rng(0)
    with cache.CacheWriter(path, spec=spec, features={TOKENS: shape}, shard_size=256, dtype="float16") as w:
        for lo in range(0, rows, 128):
            n = min(128, rows - lo)
            meta = pd.DataFrame(
                {
                    "image_id": [f"{i:064x}" for i in range(lo, lo + n)],
                    "path": [f"img/{i}.png" for i in range(lo, lo + n)],
                    "label": np.arange(lo, lo + n) % 2,
                    "source": np.where(np.arange(lo, lo + n) % 2, "gen", "real"),
                    "split": "train",
                }
            )
            w.append(meta, {TOKENS: rng.standard_normal((n, *shape)).astype(np.float16)})
    return path


@pytest.mark.slow
def test_a_token_cache_larger_than_the_budget_trains_within_it(tokens, weights, tmp_path) -> None:  # noqa: F811
    """Peak RSS growth of `aigi train` in a fresh process. The budget holds the features; the tail's activations
    for one batch come on top, so they are measured first by training on the 16-row cache and subtracted. Streamed
    (auto: the tokens exceed the budget) stays under the budget; the control (data.stream: false holds the float16
    tokens) grows by at least the cache's size. glibc returns freed blocks to the system at once
    (MALLOC_MMAP_THRESHOLD_), so the peak counts live memory, not what the allocator kept."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pytest.skip("this kernel does not let a process reset its peak RSS")
    big = big_token_cache(tmp_path / "big", tokens / "cache", 600)  # 600 x 197 x 192 float16 = 45.4 MB
    size, budget = 600 * 197 * 192 * 2, 20 << 20
    configs = []
    for name, store in (("small", tokens / "cache"), ("big", big)):
        cfg = yaml.safe_load(run_config(tmp_path, store).read_text())
        cfg["fit"].update(epochs=1, batch_size=16, threads=1)
        cfg["data"]["val_fraction"] = 0.0
        configs.append(tmp_path / f"{name}.yaml")
        configs[-1].write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "131072"}
    got = {}
    for stream in ("auto", "false"):
        argv = [*map(str, configs), str(weights), str(tmp_path / "run"), str(budget), stream]
        run = subprocess.run([sys.executable, "-c", PEAK, *argv], capture_output=True, text=True, env=env, check=False)
        assert run.returncode == 0, run.stderr[-2000:]
        assert ("rows streamed from disk" in run.stdout) == (stream == "auto"), run.stdout
        got[stream] = json.loads(run.stdout.strip().splitlines()[-1])
    assert size > 2 * budget
    assert got["false"]["big"] - got["false"]["loop"] >= 0.9 * size, got  # the control: the token matrix was held
    assert got["auto"]["big"] - got["auto"]["loop"] < budget, got
