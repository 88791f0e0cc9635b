"""Run idempotent tasks on a dask cluster (a LocalCluster of processes or a remote scheduler); knows no stage.

`aigi extract` (shards) and `aigi ablate` (runs) build their tasks and hand them to `map_tasks`; `aigi extract
--devices` runs one long task per device on `device_cluster` through `poll_tasks`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from aigi.common.extras import require


@contextlib.contextmanager
def dask_client(*, workers: int = 0, scheduler: str | None = None, threads_per_worker: int = 1) -> Iterator[Any]:
    """A dask Client on `scheduler`, or on a fresh LocalCluster of `workers` processes that is closed afterwards.

    Local workers share the machine's cores: each gets `cores // workers` BLAS/torch threads so that N workers do
    not oversubscribe the CPU.
    """
    dd = require("dask.distributed", needed_for="--workers / --scheduler")
    Client, LocalCluster = dd.Client, dd.LocalCluster
    if scheduler:
        with Client(scheduler, timeout="30s") as client:
            yield client
        return
    if workers < 1:
        raise ValueError("--workers must be at least 1 (or give --scheduler tcp://HOST:PORT)")
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            dashboard_address=None,
            env=env,
            silence_logs=logging.ERROR,
            host="127.0.0.1",
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


@contextlib.contextmanager
def device_cluster(devices: int) -> Iterator[Any]:
    """A Client on a fresh LocalCluster of one worker process per device (`resources={"DEVICE": 1}`, so each runs
    one device task at a time; worker k is named k), closed afterwards.

    The workers are not daemonic, so that each may start its own decoding processes, and share the cores: each
    gets `cores // devices` BLAS/torch threads.
    """
    dd = require("dask.distributed", needed_for="--devices")
    import dask

    threads = str(max(1, (os.cpu_count() or 1) // devices))
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
    with (
        dask.config.set({"distributed.worker.daemon": False}),  # read again when a dead worker is restarted
        dd.LocalCluster(
            n_workers=devices,
            threads_per_worker=1,
            processes=True,
            resources={"DEVICE": 1},
            dashboard_address=None,
            env=env,
            silence_logs=logging.ERROR,
            host="127.0.0.1",
        ) as cluster,
        dd.Client(cluster) as client,
    ):
        yield client


def task_key(stage: str, target: str | os.PathLike, name: str) -> str:
    """A dask key naming the stage, the output folder (8 hex of its absolute path's sha256) and the task."""
    tag = hashlib.sha256(os.path.abspath(target).encode()).hexdigest()[:8]
    return f"{stage}-{tag}-{name}"


def map_tasks(
    client: Any,
    fn: Callable[..., dict],
    tasks: Sequence[tuple[str, tuple]],
    *,
    resources: dict | None = None,
    retries: int = 3,
    on_done: Callable[[str, dict], None] | None = None,
) -> list[dict]:
    """Submit `fn(*args)` for each (key, args) and gather results as they finish, in submission order.

    Tasks must be idempotent (a finished shard or run is skipped), so dask may rerun one after a worker dies.
    """
    from dask.distributed import as_completed

    futures = {
        client.submit(fn, *args, key=key, pure=False, retries=retries, resources=resources): key for key, args in tasks
    }
    results: dict[str, dict] = {}
    for fut in as_completed(futures):
        key = futures[fut]
        results[key] = fut.result()
        if on_done is not None:
            on_done(key, results[key])
    return [results[key] for key, _ in tasks]


def poll_tasks(
    client: Any,
    fn: Callable[..., dict],
    tasks: Sequence[tuple[str, tuple]],
    *,
    resources: dict | None = None,
    retries: int = 2,
    every: Callable[[], None] | None = None,
    interval_s: float = 1.0,
) -> list[dict]:
    """Submit long-running `fn(*args)` tasks (idempotent, as for `map_tasks`) and wait for all of them, calling
    `every()` each `interval_s` seconds meanwhile (progress that the tasks write somewhere); results in order."""
    from dask.distributed import wait

    futures = [
        client.submit(fn, *args, key=key, pure=False, retries=retries, resources=resources) for key, args in tasks
    ]
    finished = False
    while not finished:
        try:
            wait(futures, timeout=interval_s)
            finished = True
        except TimeoutError:
            pass
        if every is not None:
            every()
    return [f.result() for f in futures]
