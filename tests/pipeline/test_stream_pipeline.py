"""data.stream / data.memory_budget through `aigi train`, `aigi eval` and `aigi ablate`: the choice is said, the
float16 and float32 paths give the same head, streamed heads score alike, ablation runs share frozen experts."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from aigi import heads
from aigi.cli import main
from aigi.pipeline.ablate import AblateOptions, expand, run_ablation
from aigi.pipeline.config import load_config, parse_config
from aigi.pipeline.evaluate import EvalOptions, evaluate_run
from aigi.pipeline.train import train_run
from tests.heads.test_stream_fit import write_cache
from tests.pipeline.test_ablate import STEPS


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return write_cache(tmp_path_factory.mktemp("sp") / "c", 6000, 16, shard_size=1000)  # float16


def config(tmp_path: Path, store: Path, head: dict | None = None) -> Path:
    cfg = {
        "head": head or {"name": "linear", "inputs": ["x"]},
        "fit": {"optimizer": "adam", "lr": 3e-3, "epochs": 2, "batch_size": 128, "device": "cpu"},
        "data": {"caches": {"syn": str(store)}, "val_fraction": 0.1},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def train(cfg: Path, out: Path, capsys, *sets: str) -> str:
    argv = ["train", str(cfg), "-o", str(out)]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    return capsys.readouterr().out


def test_the_choice_is_said_and_float16_in_memory_trains_the_same_head(store, tmp_path, capsys) -> None:
    cfg = config(tmp_path, store)
    # 4,800 x 16 values of training + validation rows: float32 307.2 kB, float16 153.6 kB
    out32 = train(cfg, tmp_path / "r32", capsys)
    out16 = train(cfg, tmp_path / "r16", capsys, "data.memory_budget=200kB")
    outst = train(cfg, tmp_path / "rst", capsys, "data.memory_budget=100kB")
    assert "rows in memory as float32 (float32 copy 307.2 kB" in out32
    assert "rows in memory as stored float16 153.6 kB (float32 copy 307.2 kB, memory budget 200.0 kB)" in out16
    assert "rows streamed from disk: the in-memory copy would exceed the budget" in outst
    for out in (out32, out16, outst):
        line = next(x for x in out.splitlines() if x.startswith("time: "))
        assert all(f" {k} " in f" {line} " for k in ("start", "config", "open", "load", "fit", "write"))
    h32, _ = heads.load(tmp_path / "r32")
    h16, _ = heads.load(tmp_path / "r16")
    for key, value in h32.state_dict().items():  # the same float16 values, widened per batch or up front
        assert torch.equal(value, h16.state_dict()[key]), key
    meta = json.loads((tmp_path / "rst" / "head.json").read_text())
    assert meta["history"]["streamed"] is True and "streamed" in meta["rows_held"]


def test_eval_streams_and_scores_like_in_memory(store, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    train(config(tmp_path, store), run, capsys)
    cfg = load_config(run / "config.yaml")
    small = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, memory_budget="10kB"))
    mem = evaluate_run(run, tmp_path / "e1", EvalOptions(plots=False), config=cfg).metrics
    streamed = evaluate_run(run, tmp_path / "e2", EvalOptions(plots=False), config=small).metrics
    assert "float32" in mem["rows_held"] and "streamed" in streamed["rows_held"]
    for k in ("acc", "ap", "auc"):
        assert streamed["mean"][k] == pytest.approx(mem["mean"][k], abs=1e-9)


def split_cache(store: Path, tmp_path: Path) -> dict[str, Path]:
    """From `store` (feature x): `b`, a second cache of the same images with a feature z, storing them in another
    order and in other shards; `both`, one cache holding x and z of every row in the store's order."""
    from aigi import cache

    src = cache.open(store)
    meta, x = src.meta(), src.load(["x"], dtype="float16").features["x"]
    rng = np.random.default_rng(3)
    z = (x[:, :6].astype(np.float32) * 0.5 + rng.standard_normal((len(x), 6))).astype(np.float16)
    spec = {**src.spec, "backbone": "other"}
    order = rng.permutation(len(meta))
    with cache.CacheWriter(tmp_path / "b", spec=spec, features={"z": (6,)}, shard_size=700, dtype="float16") as w:
        w.append(meta.iloc[order].reset_index(drop=True), {"z": z[order]})
    with cache.CacheWriter(tmp_path / "both", spec=spec, features={"x": (16,), "z": (6,)}, shard_size=1000) as w:
        w.append(meta, {"x": x, "z": z})
    return {"b": tmp_path / "b", "both": tmp_path / "both"}


def test_two_caches_stream_joined_as_one_cache_holding_both(store, tmp_path, capsys) -> None:
    """A run joining two caches streams (the second stores the rows in another order), and trains the very head
    that streaming one cache holding both features trains (same rows, same batches); scoring it streamed equals
    scoring it in memory."""
    caches = split_cache(store, tmp_path)
    head = {"name": "concat", "inputs": ["x", "z"]}
    cfg = config(tmp_path, store, head=head)
    joined = ["--cache", f"o={caches['b']}", "--set", "data.stream=true"]
    assert main(["train", str(cfg), *joined, "-o", str(tmp_path / "joined")]) == 0
    assert "rows streamed from disk (data.stream: true" in capsys.readouterr().out
    cfg = config(tmp_path, caches["both"], head=head)
    assert main(["train", str(cfg), "--set", "data.stream=true", "-o", str(tmp_path / "one")]) == 0
    h_joined, _ = heads.load(tmp_path / "joined")
    h_one, _ = heads.load(tmp_path / "one")
    for key, value in h_one.state_dict().items():
        assert torch.equal(value, h_joined.state_dict()[key]), key
    assert json.loads((tmp_path / "joined" / "head.json").read_text())["history"]["streamed"] is True
    run_cfg = load_config(tmp_path / "joined" / "config.yaml")
    small = dataclasses.replace(run_cfg, data=dataclasses.replace(run_cfg.data, memory_budget="10kB", stream="auto"))
    big = dataclasses.replace(run_cfg, data=dataclasses.replace(run_cfg.data, stream=False))
    streamed = evaluate_run(tmp_path / "joined", tmp_path / "e1", EvalOptions(plots=False), config=small).metrics
    mem = evaluate_run(tmp_path / "joined", tmp_path / "e2", EvalOptions(plots=False), config=big).metrics
    assert "streamed" in streamed["rows_held"] and "float32" in mem["rows_held"]
    for k in ("acc", "ap", "auc"):
        assert streamed["mean"][k] == pytest.approx(mem["mean"][k], abs=1e-9)


def test_streaming_caches_of_two_dtypes_is_one_line(store, tmp_path, capsys) -> None:
    other = tmp_path / "other"
    from aigi import cache

    src = cache.open(store)
    with cache.CacheWriter(other, spec=src.spec, features={"z": (4,)}, dtype="float32") as w:
        w.append(src.meta(), {"z": np.zeros((len(src), 4), np.float32)})
    cfg = config(tmp_path, store, head={"name": "concat", "inputs": ["x", "z"]})
    argv = ["train", str(cfg), "--cache", f"o={other}", "--set", "data.stream=true"]
    assert main([*argv, "-o", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("aigi train: error: data.stream: true joins caches of one stored dtype") and "\n" not in err


def test_ablation_runs_share_the_experts_and_equal_lone_runs(store, tmp_path) -> None:
    experts = {"vae": ["vae:*"], "sr": ["sr:*"]}
    raw = {
        "head": {"name": "gating", "inputs": ["x"], "experts": experts, "rank": 4},
        "fit": {"optimizer": "adam", "lr": 3e-3, "epochs": 1, "batch_size": 128, "device": "cpu"},
        "data": {"caches": {"syn": str(store)}, "val_fraction": 0.1},
        "variants": {
            "gating": {},
            "concat": {"head": {"name": "concat", "inputs": ["x"], "experts": experts, "rank": 4}},
        },
        "seeds": [0],
    }
    plan = expand(raw)
    run_ablation(plan, tmp_path / "abl", STEPS, AblateOptions(jobs=1, progress=False))
    shared = sorted((tmp_path / "abl" / "shared_stages").glob("*.json"))
    assert len(shared) == 2  # one entry per expert, trained once for both heads
    concat = next(r for r in plan.runs if r.variant == "concat")
    done = json.loads((tmp_path / "abl" / "runs" / concat.run_id / "head.json").read_text())
    assert [s.get("reused", False) for s in done["history"]["stages"]] == [True, True, False]
    result = json.loads((tmp_path / "abl" / "runs" / concat.run_id / "result.json").read_text())
    assert set(result["stage_seconds"]) == {"open", "load", "fit", "write", "eval"}
    train_run(parse_config(concat.config), tmp_path / "alone")
    alone, _ = heads.load(tmp_path / "alone")
    shared_head, _ = heads.load(tmp_path / "abl" / "runs" / concat.run_id)
    for key, value in alone.state_dict().items():
        assert torch.equal(value, shared_head.state_dict()[key]), key
    assert np.isfinite(result["metrics"]["mean"]["auc"])
