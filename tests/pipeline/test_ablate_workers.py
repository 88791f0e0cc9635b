"""`aigi ablate --jobs N`: workers end with their parent; a re-run never deletes a run a live process works on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import yaml

from aigi.pipeline.ablate import execute_run, expand, read_result
from tests.pipeline.test_ablate import STEPS, ablation, make_cache

ROOT = Path(__file__).resolve().parents[2]


def slow_ablation(store: Path, seeds: int) -> dict:
    raw = ablation(store)
    raw["fit"] = {**raw["fit"], "epochs": 400, "batch_size": 8}
    raw["seeds"] = list(range(seeds))
    return raw


def test_killing_the_main_process_ends_its_workers(tmp_path):
    store = make_cache(tmp_path / "cache")
    (tmp_path / "abl.yaml").write_text(yaml.safe_dump(slow_ablation(store, seeds=8)))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    main = subprocess.Popen(
        [sys.executable, "-m", "aigi", "ablate", str(tmp_path / "abl.yaml"), "-o", str(out), "--jobs", "2"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not (out / "runs").is_dir() or not any((out / "runs").iterdir()):  # a worker started a run
            assert main.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        workers = psutil.Process(main.pid).children(recursive=True)
        assert workers
        os.kill(main.pid, signal.SIGKILL)
        main.wait(timeout=30)
        _, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, [p.cmdline()[:3] for p in alive]
    finally:
        for p in psutil.Process().children(recursive=True):
            p.kill()
    finished = [r for r in (out / "runs").iterdir() if read_result(r) is not None]
    assert len(finished) < 16  # the queued runs did not go on without their parent


HOLDER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {root!r})
    import yaml
    from aigi.pipeline.ablate import execute_run, expand
    run = expand(yaml.safe_load(open({cfg!r}))).runs[0]
    import aigi.pipeline.train as train
    from aigi.pipeline.ablate import RunSteps
    from aigi.pipeline.evaluate import EvalOptions, evaluate_run

    real = train.train_run

    def slow(cfg, path, **kwargs):
        (path / "marker").parent.mkdir(parents=True, exist_ok=True)
        (path / "marker").write_text("mine")
        print("running", flush=True)
        time.sleep(4)  # the re-run starts meanwhile
        return real(cfg, path, **kwargs)

    train.train_run = slow
    info = {{"run_id": run.run_id, "setting": run.setting, "variant": run.variant, "values": run.values,
             "seed": run.seed}}
    steps = RunSteps(train=train.train_run, evaluate=evaluate_run, train_options=train.TrainOptions(),
                     eval_options=EvalOptions())
    execute_run({runs!r} + "/" + run.run_id, run.config, info, 1, steps)
    print("done", flush=True)
    """
)


def test_a_rerun_waits_for_a_live_run_instead_of_deleting_it(tmp_path):
    store = make_cache(tmp_path / "cache")
    raw = ablation(store)
    (tmp_path / "abl.yaml").write_text(yaml.safe_dump(raw))
    runs = tmp_path / "out" / "runs"
    runs.mkdir(parents=True)
    code = HOLDER.format(root=str(ROOT), cfg=str(tmp_path / "abl.yaml"), runs=str(runs))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert child.stdout.readline().strip() == "running"
        run = expand(raw).runs[0]
        info = {"run_id": run.run_id, "setting": run.setting, "variant": run.variant, "values": run.values,
                "seed": run.seed}  # fmt: skip
        result = execute_run(str(runs / run.run_id), run.config, info, 1, STEPS)
        assert child.stdout.readline().strip() == "done"
        child.wait(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert result["skipped"] and (runs / run.run_id / "marker").read_text() == "mine"
    assert child.returncode == 0


_HELD: list = []


def grow(step_mb: int, seconds: float, identity: dict, threads: int) -> dict:
    """A run that keeps `step_mb` more MB in its process (as an ablation worker keeps loaded rows) and reports it."""
    import numpy as np

    _HELD.append(np.ones(step_mb << 18, dtype=np.float32))  # touched pages: resident memory
    time.sleep(seconds)  # loky looks at a worker's memory at most once a second
    return {"run_id": identity["run_id"], "pid": os.getpid(), "held_mb": len(_HELD) * step_mb}


def test_workers_keep_what_they_hold_across_runs() -> None:
    from aigi.pipeline.ablate import _run_local

    class Bar:
        n = 0

        def update(self, k: int) -> None:
            self.n += k

    tasks = [(f"r{i}", (110, 1.05, {"run_id": f"r{i}"}, 1)) for i in range(10)]
    bar = Bar()
    results = _run_local(tasks, jobs=2, bar=bar, run=grow)
    assert [r["run_id"] for r in results] == [k for k, _ in tasks] and bar.n == 10
    pids = {r["pid"] for r in results}
    # 10 runs on 2 processes: growing by 330 MB or more after a first run did not replace a worker (loky would)
    assert len(pids) <= 2 and max(r["held_mb"] for r in results) >= 5 * 110, results


def test_each_worker_reads_a_row_selection_once(tmp_path) -> None:
    from aigi.pipeline.ablate import AblateOptions, run_ablation

    store = make_cache(tmp_path / "cache")
    plan = expand(ablation(store, seeds=[0, 1, 2, 3]))  # 8 runs, all on the same rows
    run_ablation(plan, tmp_path / "out", STEPS, AblateOptions(jobs=2, progress=False))
    results = [read_result(tmp_path / "out" / "runs" / r.run_id) for r in plan.runs]
    by_pid: dict[int, list[dict]] = {}
    for r in sorted(results, key=lambda r: r["finished_at"]):
        by_pid.setdefault(r["pid"], []).append(r["row_sets"])
    assert 1 <= len(by_pid) <= 2 and os.getpid() not in by_pid
    for sets in by_pid.values():
        # the first run of a worker reads the training + validation rows and the test rows; its later runs reuse both
        assert sets[0] == {"loaded": 2, "reused": 0}
        assert all(s == {"loaded": 0, "reused": 2} for s in sets[1:]), sets
