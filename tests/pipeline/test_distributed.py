"""Extraction on real dask processes (loopback only): same cache as one process, survives a killed worker."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from aigi.cli import main
from tests.pipeline.test_extract import _cache_content, extract_args, make_manifest, weights  # noqa: F401

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def assert_same_cache(a: Path, b: Path) -> None:
    (m1, f1), (m2, f2) = _cache_content(a), _cache_content(b)
    pd.testing.assert_frame_equal(m1, m2)
    assert f1.keys() == f2.keys()
    for name in f1:
        np.testing.assert_array_equal(f1[name], f2[name])


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, weights: Path) -> tuple[Path, Path]:  # noqa: F811
    root = tmp_path_factory.mktemp("dist")
    manifest = make_manifest(root, 16)
    assert main(extract_args(manifest, root / "single", weights)) == 0
    return manifest, root / "single"


def test_two_local_workers_equal_one_process(tmp_path: Path, weights: Path, reference) -> None:  # noqa: F811
    manifest, single = reference
    assert main(extract_args(manifest, tmp_path / "dask", weights, "--workers", "2")) == 0
    assert_same_cache(tmp_path / "dask", single)


def _worker_pids() -> list[int]:
    """Dask worker processes started by this test process (spawned children, not the resource tracker)."""
    kids = psutil.Process().children(recursive=True)
    return [
        p.pid for p in kids if "spawn_main" in " ".join(p.cmdline()) and "resource_tracker" not in " ".join(p.cmdline())
    ]


def test_worker_killed_mid_run_still_completes_identically(tmp_path: Path, weights: Path, reference) -> None:  # noqa: F811
    manifest, single = reference
    shards = tmp_path / "dask" / "shards"
    killed: list[int] = []

    def assassin() -> None:
        deadline = time.time() + 300
        while time.time() < deadline and not list(shards.glob("*.h5")):
            time.sleep(0.05)
        pids = _worker_pids()
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    thread = threading.Thread(target=assassin, daemon=True)
    thread.start()
    assert main(extract_args(manifest, tmp_path / "dask", weights, "--workers", "2", "--batch-size", "2")) == 0
    thread.join(timeout=5)
    assert killed, "no worker was killed: the test did not exercise a worker loss"
    assert_same_cache(tmp_path / "dask", single)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_existing_scheduler_with_two_worker_processes(tmp_path: Path, weights: Path, reference) -> None:  # noqa: F811
    manifest, single = reference
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    bindir = Path(sys.executable).parent
    procs = [
        subprocess.Popen(
            [str(bindir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        for _ in range(2):
            procs.append(
                subprocess.Popen(
                    [
                        str(bindir / "dask"),
                        "worker",
                        address,
                        "--nworkers",
                        "1",
                        "--nthreads",
                        "1",
                        "--no-dashboard",
                        "--host",
                        "127.0.0.1",
                    ],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        from dask.distributed import Client

        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
        assert main(extract_args(manifest, tmp_path / "remote", weights, "--scheduler", address)) == 0
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
    assert_same_cache(tmp_path / "remote", single)
