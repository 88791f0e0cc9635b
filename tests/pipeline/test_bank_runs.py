"""Runs trained as banks (`train_bank`): equal to lone runs, rows read once, split by data; joins that drop rows;
the default memory budget within the process's limits; an ablation whose failing run fails alone."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from aigi import cache, heads
from aigi.cli import main
from aigi.pipeline.ablate import AblateOptions, RunSteps, expand, read_failure, read_result, run_ablation
from aigi.pipeline.config import parse_config
from aigi.pipeline.evaluate import EvalOptions, evaluate_run
from aigi.pipeline.rows import RowStore, available_ram, parse_budget
from aigi.pipeline.train import TrainOptions, train_bank, train_run
from tests.pipeline.test_ablate import ablation, make_cache

ROOT = Path(__file__).resolve().parents[2]
BANK_STEPS = RunSteps(train=train_run, evaluate=evaluate_run, train_options=TrainOptions(),
                      eval_options=EvalOptions(plots=False), train_bank=train_bank)  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cache(tmp_path_factory.mktemp("bank") / "cache")


def _config(store: Path, head: dict, data: dict | None = None, **fit) -> object:
    raw = ablation(store)
    return parse_config({"head": head, "fit": {**raw["fit"], **fit}, "data": {**raw["data"], **(data or {})}})


def test_a_bank_of_runs_equals_each_run_alone_and_reads_its_rows_once(store: Path, tmp_path: Path, caplog) -> None:
    cfgs = [
        _config(store, {"name": "linear", "inputs": ["f"]}, seed=0),
        _config(store, {"name": "linear", "inputs": ["f"]}, seed=1, lr=0.01),
        _config(store, {"name": "gating", "inputs": ["f"], "experts": {"v": ["vae:*"], "s": ["sr:*"]}, "rank": 2}),
        _config(store, {"name": "mlp", "inputs": ["f"], "hidden": 4}, seed=2),
    ]
    rows = RowStore()
    caplog.set_level("INFO", logger="aigi.pipeline.train")
    runs = [(cfg, tmp_path / f"bank{i}") for i, cfg in enumerate(cfgs)]
    other = _config(store, {"name": "linear", "inputs": ["f"]}, data={"where": {}}, seed=3)  # another data section
    runs.append((other, tmp_path / "bank4"))
    results = train_bank(runs, rows=rows)
    assert rows.counts == {"loaded": 2, "reused": 0}  # one train+val selection per bank of two data sections
    assert "5 heads in 2 banks" in caplog.text
    for i, ((cfg, run_dir), result) in enumerate(zip(runs, results, strict=True)):
        assert result.run_dir == run_dir and result.val_metrics is not None
        if i in (0, 3):  # linear heads in one stacked step (1, 4 of another bank) and gating stand for the others
            continue
        alone_dir = tmp_path / f"alone_{run_dir.name}"
        train_run(cfg, alone_dir)
        alone, _ = heads.load(alone_dir)
        banked, info = heads.load(run_dir)
        for key, value in alone.state_dict().items():
            torch.testing.assert_close(value, banked.state_dict()[key], rtol=1e-5, atol=1e-6)
        assert info["train_rows"] == result.train_rows and (run_dir / "config.yaml").is_file()


def _two_caches(tmp_path: Path, *, missing: int) -> tuple[Path, Path]:
    """Cache a (feature x) and cache b (feature y) of the same images, b lacking the first `missing` rows of a."""
    a = make_cache(tmp_path / "a", dim=4)
    full = cache.open(a).load()
    meta, x = full.meta, full.features["f"]
    b = tmp_path / "b"
    keep = np.arange(len(meta)) >= missing
    with cache.CacheWriter(b, spec={"synthetic": "b"}, features={"y": (4,)}, dtype="float32") as w:
        w.append(meta[keep].reset_index(drop=True), {"y": x[keep] * 2})
    return a, b


def test_a_join_that_drops_rows_says_how_many_and_refuses_beyond_data_join(tmp_path: Path, capsys) -> None:
    a, b = _two_caches(tmp_path, missing=30)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({
        "head": {"name": "concat", "inputs": ["f", "y"]},
        "fit": {"epochs": 1, "batch_size": 32, "device": "cpu"},
        "data": {"caches": {"a": str(a), "b": str(b)}},
    }))  # fmt: skip
    split = cache.open(a).meta()["split"].to_numpy()
    n, lost = int((split == "train").sum()), int((split[:30] == "train").sum())  # b lacks a's first 30 rows
    code = main(["train", str(cfg), "-o", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("aigi train: error: joining caches ['a', 'b']")
    assert f"dropped {lost} of the {n} selected rows of 'a'" in err[0] and f"'b': {lost}" in err[0]
    assert f"--set data.join.max_dropped={np.ceil(100 * lost / n) / 100:g}" in err[0]
    code = main(["train", str(cfg), "--set", "data.join.max_dropped=0.3", "-o", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert code == 0 and f"dropped {lost} of the {n}" in out and "within data.join.max_dropped = 0.3" in out
    assert json.loads((tmp_path / "run" / "head.json").read_text())["train_rows"] == n - lost
    for bad in ("-0.1", "1.5"):
        assert main(["train", str(cfg), "--set", f"data.join.max_dropped={bad}", "-o", str(tmp_path / "x")]) == 2


def test_the_default_budget_stays_within_the_process_limits(tmp_path: Path, monkeypatch) -> None:
    code = textwrap.dedent(
        """
        import resource, sys
        sys.path.insert(0, {root!r})
        limit = 3 * 2**30
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        from aigi.pipeline.rows import parse_budget, _proc_values
        from pathlib import Path
        used = _proc_values(Path("/proc/self/status"))["VmSize"]
        print(parse_budget(None), limit - used)
        """
    ).format(root=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    budget, room = (int(v) for v in out.stdout.split())
    assert 0 < budget <= room // 2 + (64 << 20)  # half of what the address-space limit leaves (VmSize moves a bit)
    # a cgroup limit (v2 at this process's path, v1 in a namespace whose mount is the process's own cgroup)
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text("MemAvailable:   64000000 kB\n")
    (proc / "self" / "status").write_text("VmSize:   1000 kB\nVmData:   500 kB\n")
    v2 = tmp_path / "v2"
    (v2 / "job" / "step").mkdir(parents=True)
    (v2 / "job" / "memory.max").write_text("3000000000\n")
    (v2 / "job" / "memory.current").write_text("1000000000\n")
    (v2 / "job" / "step" / "memory.max").write_text("max\n")
    (v2 / "job" / "step" / "memory.current").write_text("900000000\n")
    (proc / "self" / "cgroup").write_text("0::/job/step\n")
    monkeypatch.setattr("resource.getrlimit", lambda _: (-1, -1))
    assert available_ram(proc=proc, cgroup_root=v2) == 2_000_000_000
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("1500000000\n")
    (v1 / "memory" / "memory.usage_in_bytes").write_text("500000000\n")
    (proc / "self" / "cgroup").write_text("5:memory:/docker/abc\n0::/\n")
    assert available_ram(proc=proc, cgroup_root=v1) == 1_000_000_000
    monkeypatch.setattr("aigi.pipeline.rows.available_ram", lambda: 1_000_000_000)
    assert parse_budget(None) == 500_000_000 and parse_budget("2GB") == 2_000_000_000


def test_a_failing_run_fails_alone_and_is_listed_in_the_summary(store: Path, tmp_path: Path) -> None:
    raw = ablation(store, seeds=[0])
    raw["variants"]["bad"] = {"head": {"name": "expert", "inputs": ["f"], "column": "source", "subset": ["gan:*"]}}
    plan = expand(raw)
    result = run_ablation(plan, tmp_path / "abl", BANK_STEPS, AblateOptions(jobs=1, progress=False))
    bad = next(r for r in plan.runs if r.variant == "bad")
    assert [f["run_id"] for f in result.failed] == [bad.run_id] and len(result.results) == 2
    failure = read_failure(tmp_path / "abl" / "runs" / bad.run_id)
    assert "one class" in failure["error"] and read_result(tmp_path / "abl" / "runs" / bad.run_id) is None
    summary = (tmp_path / "abl" / "summary.md").read_text()
    assert "## Failed runs (1)" in summary and f"`{bad.run_id}`: ValueError: stage 'expert:gan:*'" in summary
    again = run_ablation(plan, tmp_path / "abl", BANK_STEPS, AblateOptions(jobs=1, progress=False))
    assert (again.ran, again.skipped, len(again.failed)) == (0, 2, 1)  # the failed run is tried again, alone
