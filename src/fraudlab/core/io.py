"""File I/O at the edges of the stages: atomic, deterministic writers and plain readers.

Every writer goes through a temporary that is moved into place only once it is complete, so an
interrupted stage never leaves a file (or directory) that looks finished. On Linux a file is
written as an unnamed file (O_TMPFILE) and linked into place at the end: a writer killed with
SIGKILL leaves nothing behind at all, which matters when the next `dvc repro` restores the stage
from DVC's run cache and runs nothing that could clean up. Elsewhere, and for directories, the
temporary is a sibling whose name starts with a dot and contains ``.tmp-`` (ignored by Git);
the next write of the same target removes one left by a killed writer.
"""

from __future__ import annotations

import contextlib
import errno
import io
import itertools
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ruamel.yaml import YAML

_TMP_MARK = ".tmp-"


def _remove_stale_temporaries(target: Path) -> None:
    """Remove temporaries left by an earlier run of this writer that was killed (SIGKILL)."""
    for stale in target.parent.glob(f".{target.name}{_TMP_MARK}*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


_PROC_FDS = Path("/proc/self/fd")
# What open() says when a file system or kernel cannot make unnamed files.
_NO_TMPFILE = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT}


def _open_unnamed(directory: Path) -> int | None:
    """A writable file in ``directory`` with no name (Linux O_TMPFILE), or None where the
    platform or file system has none. The kernel frees it if the process dies."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None or not _PROC_FDS.is_dir():
        return None
    try:
        return os.open(directory, flag | os.O_WRONLY, 0o666)
    except OSError as exc:
        if exc.errno in _NO_TMPFILE:
            return None
        raise


def _link_into_place(fd: int, target: Path) -> None:
    """Give the unnamed file ``fd`` the name ``target``, replacing any file there atomically
    (a name beside it exists only between the link and the rename)."""
    linked = target.with_name(f".{target.name}{_TMP_MARK}{os.getpid()}")
    linked.unlink(missing_ok=True)
    fds = os.open(_PROC_FDS, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # linkat(AT_SYMLINK_FOLLOW) on /proc/self/fd/N names the open file itself.
        os.link(str(fd), linked, src_dir_fd=fds, follow_symlinks=True)
    finally:
        os.close(fds)
    os.replace(linked, target)


@contextlib.contextmanager
def atomic_path(target: str | Path, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path for ``target``; move it onto ``target`` when the block succeeds.

    On any exception (including KeyboardInterrupt and the SystemExit raised on SIGTERM) the
    temporary is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(target)
    fd = None if directory else _open_unnamed(target.parent)
    if fd is not None:
        try:
            yield _PROC_FDS / str(fd)  # writers open it by this path, in this process
            _link_into_place(fd, target)
        finally:
            os.close(fd)
        return
    tmp = target.with_name(f".{target.name}{_TMP_MARK}{os.getpid()}")
    if directory:
        tmp.mkdir()
    try:
        yield tmp
        if directory and target.exists():
            # A directory cannot be renamed over a non-empty one; between these two calls
            # the target is absent, never half-written.
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def scratch_directory(target: str | Path) -> Iterator[Path]:
    """A working directory beside ``target`` for a stage's intermediate files, removed on the
    way out; one left by a killed run goes with the next write of ``target``."""
    target = Path(target)
    scratch = target.with_name(f".{target.name}{_TMP_MARK}{os.getpid()}-scratch")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


_ROW_GROUP = 1_000_000


def write_parquet(frame: pd.DataFrame, path: str | Path) -> None:
    """Write ``frame`` without its index; bytes depend only on the data and library versions."""
    with atomic_path(path) as tmp:
        write_parquet_into(frame, tmp)


def write_parquet_into(frame: pd.DataFrame, path: Path) -> None:
    """``write_parquet`` into a path already temporary (an ``atomic_path``)."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table, path, compression="zstd", row_group_size=_ROW_GROUP)


def read_parquet(
    path: str | Path, columns: list[str] | None = None, *, filters: list | None = None
) -> pd.DataFrame:
    """A Parquet file, or a dataset directory's parts in order. ``filters`` (pyarrow's
    ``[(column, op, value), ...]``) skip the row groups whose statistics rule them out: a
    time range of a large dataset reads only the parts it overlaps."""
    return pd.read_parquet(path, columns=columns, filters=filters)


# A dataset directory: parts of ``rows_per_part`` rows (the last may be shorter; an empty
# dataset has one empty part, which carries the schema), numbered in row order. Which rows a part
# holds depends on the data and that number alone, so every engine writes the same files.
_PART = "part-{:05d}.parquet"
_PART_GLOB = "part-*.parquet"


def part_path(directory: str | Path, number: int) -> Path:
    return Path(directory) / _PART.format(number)


def dataset_parts(path: str | Path) -> list[Path]:
    """The parts of a dataset directory, in row order."""
    parts = sorted(Path(path).glob(_PART_GLOB))
    if not parts:
        raise FileNotFoundError(f"{path}: no {_PART_GLOB} files: not a dataset directory")
    return parts


def parquet_files(path: str | Path) -> list[Path]:
    """A Parquet file, or a dataset directory's parts in row order."""
    path = Path(path)
    return dataset_parts(path) if path.is_dir() else [path]


def parquet_rows(path: str | Path) -> int:
    """Rows of a Parquet file or dataset directory, from the footers."""
    return sum(pq.read_metadata(file).num_rows for file in parquet_files(path))


def time_span(path: str | Path, column: str = "tx_datetime") -> tuple[pd.Timestamp, pd.Timestamp]:
    """The first and last value of ``column`` in a Parquet file or dataset directory, from the
    footers' statistics (the column itself is read only where a footer has none)."""
    lows, highs = [], []
    for file in parquet_files(path):
        metadata = pq.ParquetFile(file).metadata
        index = metadata.schema.to_arrow_schema().get_field_index(column)
        for group in range(metadata.num_row_groups):
            chunk = metadata.row_group(group).column(index)
            if chunk.num_values == 0:
                continue
            stats = chunk.statistics
            if stats is None or not stats.has_min_max:
                values = pq.ParquetFile(file).read_row_group(group, columns=[column])[column]
                lows.append(pd.Timestamp(pc.min(values).as_py()))
                highs.append(pd.Timestamp(pc.max(values).as_py()))
            else:
                lows.append(pd.Timestamp(stats.min))
                highs.append(pd.Timestamp(stats.max))
    if not lows:
        raise ValueError(f"{path}: no {column} values")
    return min(lows), max(highs)


def part_starts(n_rows: int, rows_per_part: int) -> range:
    """The first row of each part."""
    return range(0, max(n_rows, 1), rows_per_part)


def part_days(number: int, *, rows_per_part: int, day_starts: np.ndarray) -> tuple[int, int, int]:
    """Which days part ``number`` of rows sorted by time takes its rows from, given where each
    day's rows start (``day_starts``: cumulative counts, one more entry than days): the first
    day, the last day and how many rows of the first day belong to earlier parts."""
    first_row = number * rows_per_part
    last_row = max(min(first_row + rows_per_part, int(day_starts[-1])) - 1, first_row)
    first_day = int(np.searchsorted(day_starts, first_row, side="right")) - 1
    last_day = int(np.searchsorted(day_starts, last_row, side="right")) - 1
    return first_day, last_day, first_row - int(day_starts[first_day])


_FIRST_DAY = b"fraudlab.first_day"


def write_piece(table: pa.Table, path: Path) -> None:
    """A file a partitioned stage hands from one round of tasks to the next, read whole: an
    Arrow IPC file (LZ4), which skips Parquet's encoding, statistics and decoding."""
    _write_ipc(path, table.schema, table.to_batches())


def read_piece(path: Path) -> pd.DataFrame:
    """A piece ``write_piece`` wrote, as the frame it was written from."""
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).read_all().to_pandas()


def write_days(table: pa.Table, path: Path, *, days: np.ndarray) -> None:
    """Rows in day order (``days``: each row's day number) as an Arrow IPC file of one batch
    per day, from the first day to the last (empty days too), so that ``read_days`` reads a
    range of days alone."""
    first = int(days[0]) if len(days) else 0
    counts = np.bincount(days - first) if len(days) else np.zeros(0, dtype=np.int64)
    bounds = np.concatenate([[0], np.cumsum(counts)]).tolist()
    schema = table.schema.with_metadata(
        {**(table.schema.metadata or {}), _FIRST_DAY: str(first).encode()}
    )
    whole = table.combine_chunks().to_batches()  # one batch (none for no rows), sliced uncopied
    batches = [
        pa.RecordBatch.from_arrays(whole[0].slice(start, stop - start).columns, schema=schema)
        for start, stop in itertools.pairwise(bounds)
    ]
    _write_ipc(path, schema, batches)


def read_days(path: Path, first: int, last: int) -> pa.Table:
    """The rows of days ``first`` to ``last`` (inclusive) of a ``write_days`` file."""
    with pa.memory_map(str(path)) as source:
        reader = pa.ipc.open_file(source)
        start = int(reader.schema.metadata[_FIRST_DAY])
        wanted = range(max(first - start, 0), min(last - start + 1, reader.num_record_batches))
        return pa.Table.from_batches([reader.get_batch(i) for i in wanted], schema=reader.schema)


def _write_ipc(path: Path, schema: pa.Schema, batches: list[pa.RecordBatch]) -> None:
    # written whole and then renamed: a task run again after its worker died replaces it
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{_TMP_MARK}{os.getpid()}")
    try:
        options = pa.ipc.IpcWriteOptions(compression="lz4")
        with pa.ipc.new_file(tmp, schema, options=options) as writer:
            for batch in batches:
                writer.write_batch(batch)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_part(table: pa.Table, directory: str | Path, number: int) -> None:
    """Write part ``number`` of a dataset being built in ``directory`` (all in one row group).
    The file appears whole or not at all: a task rerun after its worker died rewrites it."""
    target = part_path(directory, number)
    tmp = target.with_name(f".{target.name}{_TMP_MARK}{os.getpid()}-{id(table)}")
    try:
        pq.write_table(table, tmp, compression="zstd", row_group_size=max(table.num_rows, 1))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_dataset(frame: pd.DataFrame, path: str | Path, *, rows_per_part: int) -> None:
    """Write ``frame`` (in its row order) as a dataset directory, atomically."""
    with atomic_path(path, directory=True) as tmp:
        write_parts(frame, tmp, rows_per_part=rows_per_part)


def write_parts(frame: pd.DataFrame, directory: Path, *, rows_per_part: int) -> None:
    """Write ``frame`` (in its row order) as the parts of a dataset being built in
    ``directory``."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    for number, start in enumerate(part_starts(len(frame), rows_per_part)):
        write_part(table.slice(start, rows_per_part), directory, number)


class RowGroupWriter:
    """Frames appended one after the other to one Parquet file, in row groups of a fixed size:
    the bytes ``write_parquet`` writes for their concatenation, without holding it."""

    def __init__(self, path: Path, *, row_group_size: int = _ROW_GROUP) -> None:
        self.path, self.size = path, row_group_size
        self.writer: pq.ParquetWriter | None = None
        self.schema: pa.Schema | None = None
        self.pending: list[pa.Table] = []
        self.n_pending = 0

    def write(self, frame: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(frame, schema=self.schema, preserve_index=False)
        if self.writer is None:
            self.schema = table.schema
            self.writer = pq.ParquetWriter(self.path, table.schema, compression="zstd")
        self.pending.append(table)
        self.n_pending += table.num_rows
        while self.n_pending >= self.size:
            self._flush(self.size)

    def _flush(self, n_rows: int) -> None:
        """Write the first ``n_rows`` pending rows as one row group."""
        head, rest, needed = [], [], n_rows
        for table in self.pending:
            taken = min(needed, table.num_rows)
            if taken:
                head.append(table.slice(0, taken))
            if taken < table.num_rows:
                rest.append(table.slice(taken))
            needed -= taken
        # one contiguous chunk per column, as a frame converted whole gives: the writer cuts
        # pages at chunk boundaries too (only this row group is copied)
        group = pa.concat_tables(head).combine_chunks()
        self.writer.write_table(group, row_group_size=self.size)
        self.pending, self.n_pending = rest, self.n_pending - n_rows

    def close(self) -> None:
        if self.n_pending:
            self._flush(self.n_pending)
        if self.writer is not None:
            self.writer.close()


@contextlib.contextmanager
def row_group_writer(path: str | Path) -> Iterator[RowGroupWriter]:
    """A ``RowGroupWriter`` on ``path``, written atomically."""
    with atomic_path(path) as tmp:
        writer = RowGroupWriter(tmp)
        try:
            yield writer
        finally:
            writer.close()


def write_json(data: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_joblib(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        joblib.dump(obj, tmp)


def _yaml() -> YAML:
    # YAML 1.2, the dialect DVC reads and writes (`dvc exp run -S` rewrites params.yaml with it):
    # a YAML 1.1 reader would take the bare `yes` / `no` DVC leaves as booleans.
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.sort_base_mapping_type_on_output = False
    return yaml


def read_yaml(path: str | Path) -> Any:
    """A YAML file (params.yaml, dvc.yaml, dvc.lock, a .dvc file) read as DVC reads it."""
    return _yaml().load(Path(path).read_text(encoding="utf-8"))


def parse_yaml(text: str) -> Any:
    """YAML text (e.g. a file as committed, from `git show`) read as DVC reads it."""
    return _yaml().load(text)


def dump_yaml(value: Any) -> str:
    """``value`` as YAML text that DVC reads back as the same values, keys in their order."""
    stream = io.StringIO()
    _yaml().dump(value, stream)
    return stream.getvalue()
