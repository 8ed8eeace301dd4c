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
path (one machine, or a shared file system: README "Scaling out").
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from fraudlab.errors import UserError
from fraudlab.io import atomic_path, scratch_directory

log = logging.getLogger(__name__)

ENGINE_VAR = "FRAUDLAB_ENGINE"
ADDRESS_VAR = "DASK_SCHEDULER_ADDRESS"
WORKERS_VAR = "FRAUDLAB_DASK_WORKERS"
PARTITIONS_VAR = "FRAUDLAB_PARTITIONS"
_ROWS_PER_PARTITION = 4_000_000  # the default's aim: a partition's arrays take a few hundred MB


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
        return max(self.workers, -(-n_rows // _ROWS_PER_PARTITION))

    def map(self, task: Callable[..., Any], items: Sequence, **kwargs: Any) -> list:
        # pure=False: a task writes files, so Dask must run it even if it ran an equal one before
        futures = self.client.map(task, list(items), pure=False, **kwargs)
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
            future = self.client.submit(task, number, chunk=chunk, pure=False, **kwargs)
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
    from dask.distributed import Client, LocalCluster  # only the Dask engine needs them

    # the cluster's own chatter (workers starting and stopping) is not the stage's log
    logging.getLogger("distributed").setLevel(logging.WARNING)

    with contextlib.ExitStack() as stack:
        if config.address is None:
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=config.workers,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=None,
                )
            )
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
