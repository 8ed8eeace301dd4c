"""Features of a dataset directory computed partition by partition: what the featurize stage
runs on the Dask engine (``fraudlab.scaleout.engine``), with the same kernels as
``features.build_features`` and the same output files as the local engine.

A customer's windows depend on that customer's rows alone, and a terminal's on its own rows
(``features``' kernels never look at another group), so the rows are spread over partitions by a
hash of the customer id, and again of the terminal id; each partition's windows are computed
where all of a group's rows are at hand, then sent back to the part each row came from. Output
part k holds exactly input part k's rows with their features, however many partitions and
workers there are.

Three rounds of tasks, each reading and writing files in a scratch directory (what a task
returns is a few numbers, so no data passes through the scheduler):

1. ``spread``, per input part: each row's customer columns to its customer partition, its
   terminal columns to its terminal partition;
2. ``windows``, per partition: the pieces from every part in part order (which is (time, id)
   order), the kernel, and the values cut back into one piece per part;
3. ``assemble``, per part: the part's rows, the calendar flags and the values from every
   partition, written as the output part.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fraudlab.core import schema
from fraudlab.core.errors import UserError
from fraudlab.core.io import dataset_parts, part_path, read_piece, write_part, write_piece
from fraudlab.core.params import FeaturesParams
from fraudlab.features.kernels import calendar_features, customer_features, terminal_features
from fraudlab.scaleout.engine import partition_of, split_by_partition

log = logging.getLogger(__name__)

Kind = Literal["customer", "terminal"]
_POSITION = "_position"  # a row's place in its part
_COLUMNS: dict[Kind, list[str]] = {
    "customer": [schema.TX_DATETIME, schema.CUSTOMER_ID, schema.TX_AMOUNT],
    "terminal": [schema.TX_DATETIME, schema.TERMINAL_ID, schema.TX_FRAUD],
}
_KEY: dict[Kind, str] = {"customer": schema.CUSTOMER_ID, "terminal": schema.TERMINAL_ID}
_KERNEL = {"customer": customer_features, "terminal": terminal_features}


class DatasetError(UserError):
    """A dataset directory is not in the layout the stage needs."""


def _piece(scratch: Path, stage: str, *, partition: int, part: int) -> Path:
    return scratch / stage / f"{partition:05d}" / f"{part:05d}.arrow"


def _write_piece(frame: pd.DataFrame, path: Path) -> None:
    write_piece(pa.Table.from_pandas(frame, preserve_index=False), path)


def check_layout(clean: Path, *, rows_per_part: int) -> list[int]:
    """Row counts of the parts of ``clean``, after checking from the footers alone that every
    part but the last has ``rows_per_part`` rows and that parts follow each other in time."""
    counts, previous_last = [], None
    for path in dataset_parts(clean):
        metadata = pq.ParquetFile(path).metadata
        counts.append(metadata.num_rows)
        column = metadata.schema.to_arrow_schema().get_field_index(schema.TX_DATETIME)
        for group in range(metadata.num_row_groups):
            stats = metadata.row_group(group).column(column).statistics
            if stats is None or not stats.has_min_max:
                continue
            if previous_last is not None and stats.min < previous_last:
                raise DatasetError(
                    f"{path}: starts at {stats.min}, before the previous part ends "
                    f"({previous_last}): parts must follow each other in time"
                )
            previous_last = stats.max
    short = [i for i, n in enumerate(counts[:-1]) if n != rows_per_part]
    if short:
        raise DatasetError(
            f"{clean}: part {short[0]} has {counts[short[0]]} rows, not storage.rows_per_part = "
            f"{rows_per_part}: rerun the stage that wrote it"
        )
    return counts


def spread(part: int, *, clean: Path, scratch: Path, partitions: int) -> int:
    """Task 1: cut input part ``part`` into one piece per customer and per terminal partition."""
    path = part_path(clean, part)
    frame = pd.read_parquet(path, columns=sorted({c for cs in _COLUMNS.values() for c in cs}))
    times = frame[schema.TX_DATETIME].to_numpy()
    if len(times) > 1 and bool(np.any(times[1:] < times[:-1])):
        raise DatasetError(f"{path}: rows are not in time order")
    frame[_POSITION] = np.arange(len(frame), dtype=np.int64)
    for kind, columns in _COLUMNS.items():
        which = partition_of(frame[_KEY[kind]], partitions)
        for partition, rows in split_by_partition(frame[[_POSITION, *columns]], which):
            _write_piece(rows, _piece(scratch, kind, partition=partition, part=part))
    return len(frame)


def windows(which: tuple[Kind, int], *, scratch: Path, params: FeaturesParams) -> int:
    """Task 2: the ``(kind, partition)`` partition's windows, from its pieces of every part (in
    part order, so the rows are in (time, id) order), cut back into one piece per part."""
    kind, partition = which
    paths = sorted((scratch / kind / f"{partition:05d}").glob("*.arrow"))
    if not paths:
        return 0
    pieces = [read_piece(path) for path in paths]
    frame = pd.concat(pieces, ignore_index=True)
    values = pd.DataFrame(_KERNEL[kind](frame, params))
    values.insert(0, _POSITION, frame[_POSITION].to_numpy())
    bounds = np.cumsum([0, *(len(piece) for piece in pieces)])
    for path, start, end in zip(paths, bounds[:-1], bounds[1:], strict=True):
        part = int(path.stem)
        _write_piece(
            values.iloc[start:end],
            _piece(scratch, f"{kind}_windows", partition=partition, part=part),
        )
    return len(frame)


def _gathered(scratch: Path, kind: Kind, *, part: int, n_rows: int) -> dict[str, np.ndarray]:
    """Part ``part``'s ``kind`` windows from every partition, in the part's row order."""
    paths = sorted(scratch.glob(f"{kind}_windows/*/{part:05d}.arrow"))
    values = pd.concat([read_piece(path) for path in paths], ignore_index=True)
    if len(values) != n_rows:
        raise RuntimeError(f"part {part}: {len(values)} {kind} window rows for {n_rows} rows")
    position = values.pop(_POSITION).to_numpy()
    out = {}
    for name in values.columns:
        column = values[name].to_numpy()
        placed = np.empty_like(column)
        placed[position] = column
        out[name] = placed
    return out


def assemble(part: int, *, clean: Path, scratch: Path, out: Path, params: FeaturesParams) -> int:
    """Task 3: input part ``part`` with its features, written as output part ``part``."""
    frame = pd.read_parquet(part_path(clean, part))
    features = frame.assign(
        **calendar_features(frame, params),
        **_gathered(scratch, "customer", part=part, n_rows=len(frame)),
        **_gathered(scratch, "terminal", part=part, n_rows=len(frame)),
    )
    write_part(pa.Table.from_pandas(features, preserve_index=False), out, part)
    return len(features)


def featurize_dataset(
    engine, clean: Path, out: Path, *, scratch: Path, params: FeaturesParams, rows_per_part: int
) -> int:
    """Write the features of dataset ``clean`` as dataset ``out`` (a directory being built)
    through ``engine``; returns the number of rows."""
    # workers may run elsewhere: they get absolute paths (docs/scaling-out.md)
    clean, out, scratch = clean.resolve(), out.resolve(), scratch.resolve()
    counts = check_layout(clean, rows_per_part=rows_per_part)
    n_rows = sum(counts)
    partitions = engine.partitions(n_rows)
    parts = range(len(counts))
    log.info(
        "featurizing %d rows in %d parts over %d partitions on the %s engine",
        n_rows,
        len(counts),
        partitions,
        engine.kind,
    )
    engine.map(spread, parts, clean=clean, scratch=scratch, partitions=partitions)
    # both kinds in one round: a worker done with its customer partitions starts on terminals
    partition_tasks = [(kind, partition) for kind in _COLUMNS for partition in range(partitions)]
    engine.map(windows, partition_tasks, scratch=scratch, params=params)
    engine.map(assemble, parts, clean=clean, scratch=scratch, out=out, params=params)
    return n_rows
