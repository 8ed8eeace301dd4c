"""Where the partitioned stages run: in the stage's own process, or on a Dask cluster.

The engine is chosen at run time, from the environment, never from ``params.yaml``: it must not
change a byte of any output, so it must not change a hash in ``dvc.lock`` either.

* ``FRAUDLAB_ENGINE``: ``local`` (the default) or ``dask``;
* ``DASK_SCHEDULER_ADDRESS``: with ``dask``, the scheduler to use (``tcp://host:8786``); without
  it, a ``LocalCluster`` of ``FRAUDLAB_DASK_WORKERS`` worker processes (default 2) is started for
  the run on 127.0.0.1 and stopped after it;
* ``FRAUDLAB_PARTITIONS``: how many pieces a stage cuts its work into. Dask's default keeps
  each under a few million rows, and gives every worker one at least; the local engine's is one
  (the data in memory whole, the fastest way when it fits). A larger number bounds a stage's
  memory on either engine, at the cost of scratch files. Any number gives the same outputs.

Workers read and write the workspace's paths, so every worker must see the workspace at the same
path (one machine, or a shared file system: docs/scaling-out.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from fraudlab.core.errors import UserError
from fraudlab.core.io import atomic_path, scratch_directory

log = logging.getLogger(__name__)

ENGINE_VAR = "FRAUDLAB_ENGINE"
ADDRESS_VAR = "DASK_SCHEDULER_ADDRESS"
WORKERS_VAR = "FRAUDLAB_DASK_WORKERS"
PARTITIONS_VAR = "FRAUDLAB_PARTITIONS"
_ROWS_PER_PARTITION = 4_000_000  # the default's aim: a partition's arrays take a few hundred MB

# Dask's nanny starts its workers with MALLOC_TRIM_THRESHOLD_=65536. Setting it also pins
# glibc's mmap threshold at 128 KiB, so every array a task makes is mapped fresh and faulted in
# page by page, and freed straight back. Our tasks make and drop arrays of hundreds of MB: at
# 20 M rows that cost validate and featurize about a quarter of their time (docs/benchmarks.md).
# Without it glibc keeps freed memory for reuse; ``run_task`` gives it back after each task.
# Workers started by hand get the same from cluster/dask.yaml (tested to say the same).
WORKER_CONFIG = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


class EngineError(UserError):
    """The engine's environment variables are invalid, or its cluster cannot be reached."""


@dataclass(frozen=True)
class EngineConfig:
    kind: Literal["local", "dask"]
    address: str | None = None  # None with dask: a local cluster for the run
    workers: int = 2
    partitions: int | None = None  # None: the engine's default (see FRAUDLAB_PARTITIONS)


def _positive(environ: Mapping[str, str], name: str) -> int | None:
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) == 0:
        raise EngineError(f"{name}={raw!r}: expected a positive whole number")
    return int(raw)


def engine_config(environ: Mapping[str, str] = os.environ) -> EngineConfig:
    """The engine the environment asks for; a clear error naming the variable otherwise."""
    kind = environ.get(ENGINE_VAR, "").strip().lower() or "local"
    if kind not in ("local", "dask"):
        raise EngineError(f"{ENGINE_VAR}={kind!r}: expected 'local' or 'dask'")
    address = environ.get(ADDRESS_VAR, "").strip() or None
    return EngineConfig(
        kind=kind,
        address=address,
        workers=_positive(environ, WORKERS_VAR) or 2,
        partitions=_positive(environ, PARTITIONS_VAR),
    )


def partition_of(keys: pd.Series, partitions: int) -> np.ndarray:
    """Each row's partition: a hash of its id that is the same in every process (pandas'
    SipHash with a fixed key), for integer and text ids alike."""
    if partitions == 1:
        return np.zeros(len(keys), dtype=np.int64)
    hashes = pd.util.hash_pandas_object(keys, index=False).to_numpy()
    return (hashes % np.uint64(partitions)).astype(np.int64)


def split_by_partition(
    frame: pd.DataFrame, which: np.ndarray
) -> Iterator[tuple[int, pd.DataFrame]]:
    """``frame``'s rows of each partition in ``which`` (one per row), in their order: one stable
    sort and one copy, rather than a pass over every row for each partition."""
    order = np.argsort(which, kind="stable")
    rows = frame.take(order)
    partitions, starts = np.unique(which[order], return_index=True)
    ends = [*starts[1:], len(order)]
    for partition, start, end in zip(partitions.tolist(), starts, ends, strict=True):
        yield partition, rows.iloc[start:end]


def release_freed_memory() -> None:
    """Give the heap's free pages back to the system (glibc only; elsewhere nothing happens):
    glibc keeps memory freed by large arrays for reuse, and a process that freed them stays as
    large as it was."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.malloc_trim(0)


def run_task(task: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> Any:
    """``task(*args, **kwargs)`` on a worker, then the memory it freed given back, so that a
    worker holds only what its tasks keep (stages run one after another on the same workers).
    The task's arguments travel as a tuple and a dict, so none can clash with ``submit``'s."""
    try:
        return task(*args, **kwargs)
    finally:
        release_freed_memory()


def _keys(task: Callable[..., Any], n: int) -> list[str]:
    # the task's name, not run_task's, in the dashboard and the performance report
    return [f"{task.__name__}-{uuid.uuid4().hex}" for _ in range(n)]


def local_cluster(workers: int) -> Any:
    """A ``LocalCluster`` of ``workers`` one-thread worker processes on 127.0.0.1 (no dashboard),
    its workers started without Dask's malloc setting (``WORKER_CONFIG``)."""
    import dask
    from dask.distributed import LocalCluster

    with dask.config.set(WORKER_CONFIG):  # read by each nanny as it starts, kept for restarts
        return LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        )


class LocalEngine:
    """Runs every task in this process, in order."""

    kind = "local"

    def __init__(self, partitions: int | None = None) -> None:
        self._partitions = partitions

    def partitions(self, n_rows: int) -> int:
        # one: what fits this machine's memory is worked on whole, as fast as it goes
        return self._partitions or 1

    def map(self, task: Callable[..., Any], items: Sequence, **kwargs: Any) -> list:
        return [task(item, **kwargs) for item in items]

    def map_iter(self, task: Callable[..., Any], chunks: Iterable, **kwargs: Any) -> list:
        """``task(number, chunk=chunk, **kwargs)`` for each chunk, read one at a time."""
        return [task(number, chunk=chunk, **kwargs) for number, chunk in enumerate(chunks)]


class DaskEngine:
    """Runs tasks on a Dask cluster through ``client``; results come back in ``items``' order.

    A task is a module-level function of the package, so workers import it rather than unpickle
    code; each task writes its own files and returns a small summary, so no dataset passes
    through the scheduler or this process."""

    kind = "dask"

    def __init__(self, client: Any, partitions: int | None = None) -> None:
        self.client = client
        self._partitions = partitions
        self.workers = max(len(client.scheduler_info(n_workers=-1)["workers"]), 1)

    def partitions(self, n_rows: int) -> int:
        if self._partitions:
            return self._partitions
        # a whole number of rounds: with 5 partitions on 2 workers, one worker idles a round
        rounds = max(1, -(-n_rows // (_ROWS_PER_PARTITION * self.workers)))
        return rounds * self.workers

    def map(self, task: Callable[..., Any], items: Sequence, **kwargs: Any) -> list:
        # each key unique: a task writes files, so Dask must run it even if it ran an equal one
        items = list(items)
        futures = [
            self.client.submit(run_task, task, (item,), kwargs, key=key)
            for item, key in zip(items, _keys(task, len(items)), strict=True)
        ]
        return self.client.gather(futures)

    def map_iter(self, task: Callable[..., Any], chunks: Iterable, **kwargs: Any) -> list:
        """``task(number, chunk=chunk, **kwargs)`` for each chunk; chunks are read as tasks
        finish, a few per worker in flight, so a source read here (a CSV) never sits whole in
        this process or on the cluster."""
        from dask.distributed import wait

        futures, in_flight = [], []
        for number, chunk in enumerate(chunks):
            while len(in_flight) >= 2 * self.workers:
                done = wait(in_flight, return_when="FIRST_COMPLETED").done
                in_flight = [f for f in in_flight if f not in done]
            [key] = _keys(task, 1)
            future = self.client.submit(
                run_task, task, (number,), {"chunk": chunk, **kwargs}, key=key
            )
            futures.append(future)
            in_flight.append(future)
        return self.client.gather(futures)


@contextlib.contextmanager
def open_engine(config: EngineConfig) -> Iterator[LocalEngine | DaskEngine]:
    """The engine ``config`` names, ready for the stage; a local cluster started here is stopped
    on the way out, whatever happens."""
    if config.kind == "local":
        yield LocalEngine(config.partitions)
        return
    from dask.distributed import Client  # only the Dask engine needs it

    # the cluster's own chatter (workers starting and stopping) is not the stage's log
    logging.getLogger("distributed").setLevel(logging.WARNING)

    with contextlib.ExitStack() as stack:
        if config.address is None:
            cluster = stack.enter_context(local_cluster(config.workers))
            client = stack.enter_context(Client(cluster))
            log.info("started a local Dask cluster of %d workers", config.workers)
        else:
            try:
                client = stack.enter_context(Client(config.address, timeout="30s"))
            except OSError as exc:
                raise EngineError(
                    f"{ADDRESS_VAR}={config.address!r}: cannot reach the scheduler: {exc}"
                ) from None
            log.info("using the Dask scheduler at %s", config.address)
        yield DaskEngine(client, config.partitions)


@contextlib.contextmanager
def partitioned_run(
    config: EngineConfig, target: str | Path
) -> Iterator[tuple[LocalEngine | DaskEngine, Path, Path]]:
    """What a partitioned stage writes ``target`` with: the engine, the directory being built
    (it becomes ``target`` when the block succeeds, and is removed otherwise) and a scratch
    directory beside it (always removed)."""
    with (
        open_engine(config) as engine,
        atomic_path(target, directory=True) as out,
        scratch_directory(target) as scratch,
    ):
        yield engine, out, scratch
