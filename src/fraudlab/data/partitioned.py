"""The validate stage in chunks: a source of any size through the data contract with memory
bounded by a chunk and a partition, on either engine (``fraudlab.scaleout.engine``), the same
files out.

1. ``parse_chunk``, per chunk of the source (a Parquet row group; ``storage.rows_per_part`` rows
   of a CSV, read in order by the stage): columns mapped and parsed row by row, then each row
   sent to a partition by its transaction_id, so that every copy of an exact duplicate and every
   row sharing an id meet in one partition (the rules across chunks);
2. ``check_partition``, per partition: the contract (``validate.check_parsed``) on its rows in
   source order; kept rows written in (time, id) order with their count per day, rejected rows
   with their reasons;
3. the stage adds the partitions' counts up and stops, writing nothing, when the source fails
   as a whole (``validate.accept``); otherwise ``write_clean_part``, per output part, merges the
   days its rows come from out of every partition.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fraudlab.core import schema
from fraudlab.core.errors import DataContractError
from fraudlab.core.io import (
    part_days,
    part_starts,
    read_days,
    read_piece,
    write_days,
    write_part,
    write_parts,
    write_piece,
)
from fraudlab.core.params import SourceParams, ValidateParams
from fraudlab.data.ingest import (
    Parsed,
    csv_chunks,
    map_columns,
    parse_columns,
    read_part,
    require_canonical,
    source_files,
)
from fraudlab.data.validate import (
    Checked,
    Summary,
    accept,
    check_parsed,
    finish_rejected,
    mixed_as_text,
    quality_report,
    summarize,
    time_id_order,
)
from fraudlab.scaleout.engine import partition_of, release_freed_memory, split_by_partition

log = logging.getLogger(__name__)

_ROW = "__source_row"  # 0-based position in the source
_RAW = "__raw__"  # prefix of a canonical column's value as given
_PROBLEM = "__problem__|"  # prefix of a parse problem's row mask: __problem__|column|rule
_AS_PARSED = "fraudlab.raw_as_parsed"  # a piece's attrs: {column: dtype} of the raw values left out
_NS_PER_DAY = 86_400 * 10**9


class ParquetChunk(NamedTuple):
    """A row group of a Parquet file, and the source position of its first row."""

    path: Path
    row_group: int
    first_row: int


def parquet_chunks(files: list[Path]) -> list[ParquetChunk]:
    """The row groups of a Parquet source's files (``source_files``), in row order."""
    chunks, first_row = [], 0
    for file in files:
        metadata = pq.ParquetFile(file).metadata
        for group in range(metadata.num_row_groups):
            chunks.append(ParquetChunk(file, group, first_row))
            first_row += metadata.row_group(group).num_rows
    return chunks


def _read_chunk(chunk: ParquetChunk | pd.DataFrame, columns: list[str] | None) -> pd.DataFrame:
    if isinstance(chunk, pd.DataFrame):  # a CSV chunk, read by the stage
        return chunk
    try:
        table = pq.ParquetFile(chunk.path).read_row_group(chunk.row_group, columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise DataContractError(
            f"part {chunk.path.name}, row group {chunk.row_group}: not readable: {exc}"
        ) from None
    frame = table.to_pandas()
    frame.index = pd.RangeIndex(chunk.first_row, chunk.first_row + len(frame))
    return frame


def _piece(scratch: Path, *, partition: int, chunk: int) -> Path:
    return scratch / "chunks" / f"{partition:05d}" / f"{chunk:06d}.arrow"


def parse_chunk(
    number: int,
    *,
    chunk: ParquetChunk | pd.DataFrame,
    columns: list[str] | None,
    source: SourceParams,
    scratch: Path,
    partitions: int,
) -> int:
    """Task 1: chunk ``number`` mapped and parsed, its rows cut into one piece per partition
    holding the parsed values, the values as given and the parse problems.

    A column's values as given are left out when they are its parsed values cast back, bit for
    bit (a typed source's usual case): the piece records their dtype instead, which halves what
    the pieces carry between the two rounds of tasks."""
    mapped, parsed = _parsed_chunk(chunk, columns, source)
    as_parsed = {
        c: mapped[c].dtype.str
        for c in schema.REQUIRED_COLUMNS
        if _recoverable(mapped[c], parsed.frame[c])
    }
    piece = parsed.frame.assign(
        **{f"{_RAW}{c}": mapped[c] for c in schema.REQUIRED_COLUMNS if c not in as_parsed},
        **{f"{_PROBLEM}{column}|{rule}": mask for rule, (column, mask) in parsed.problems.items()},
        **{_ROW: mapped.index.to_numpy(dtype=np.int64)},
    )
    piece.attrs[_AS_PARSED] = as_parsed  # kept by the row selections and the Arrow file
    which = _id_partition(
        parsed.frame[schema.TRANSACTION_ID], mapped[schema.TRANSACTION_ID], partitions
    )
    for partition, rows in split_by_partition(piece, which):
        table = pa.Table.from_pandas(rows, preserve_index=False)
        write_piece(table, _piece(scratch, partition=partition, chunk=number))
    return len(mapped)


def _parsed_chunk(
    chunk: ParquetChunk | pd.DataFrame, columns: list[str] | None, source: SourceParams
) -> tuple[pd.DataFrame, Parsed]:
    mapped = map_columns(_read_chunk(chunk, columns), source.columns)
    require_canonical(list(mapped.columns))
    return mapped, parse_columns(mapped, source)


def _recoverable(raw: pd.Series, parsed: pd.Series) -> bool:
    """Whether ``raw`` (a column as given) is ``parsed`` cast to raw's dtype, bit for bit, missing
    values and all; only for NumPy numbers, booleans and times (their dtype round-trips as
    ``dtype.str``)."""
    dtype = raw.dtype
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biufM":
        return False
    try:
        back = parsed.to_numpy(dtype=dtype)
    except (TypeError, ValueError):  # e.g. a missing value with no integer form
        return False
    bits = f"u{dtype.itemsize}"
    return bool(np.array_equal(back.view(bits), raw.to_numpy().view(bits)))


def _with_raw(piece: pd.DataFrame) -> pd.DataFrame:
    """A piece with the values as given that ``parse_chunk`` left out put back."""
    for column, dtype in piece.attrs.pop(_AS_PARSED, {}).items():
        piece[f"{_RAW}{column}"] = piece[column].to_numpy(dtype=np.dtype(dtype))
    return piece


def _id_partition(ids: pd.Series, raw: pd.Series, partitions: int) -> np.ndarray:
    """Each row's partition, by its transaction_id; an id that could not be read goes by its
    text, which its exact duplicates share."""
    which = np.zeros(len(ids), dtype=np.int64)
    if partitions > 1:
        known = ids.notna().to_numpy()
        which[known] = partition_of(ids[known].astype("int64"), partitions)
        which[~known] = partition_of(raw[~known].astype("string").fillna(""), partitions)
    return which


def _unpack(piece: pd.DataFrame) -> tuple[pd.DataFrame, Parsed]:
    """The mapped rows as given and their parsed form, from a partition's pieces."""
    problems = {}
    for name in [c for c in piece.columns if c.startswith(_PROBLEM)]:
        _, column, rule = name.split("|", 2)
        mask = piece.pop(name).fillna(False).to_numpy(dtype=bool)
        if mask.any():
            problems[rule] = (column, mask)
    piece.index = pd.Index(piece.pop(_ROW).to_numpy(), name=None)
    raw_names = [f"{_RAW}{c}" for c in schema.REQUIRED_COLUMNS]
    raw = piece[raw_names].rename(columns=lambda name: name[len(_RAW) :])
    parsed = piece.drop(columns=raw_names)
    order = list(parsed.columns)
    mapped = parsed.drop(columns=list(schema.REQUIRED_COLUMNS)).join(raw)[order]
    return mapped, Parsed(frame=parsed.reset_index(drop=True), problems=problems)


class Checks(NamedTuple):
    """What a partition's checks report back to the stage (its rows stay on disk)."""

    summary: Summary
    day_counts: dict[int, int]  # kept rows per day (days since 1970-01-01)
    frauds: int
    first: pd.Timestamp | None
    last: pd.Timestamp | None


def check_partition(
    partition: int, *, params: ValidateParams, source: SourceParams, scratch: Path
) -> Checks:
    """Task 2: the contract on one partition's rows."""
    paths = sorted((scratch / "chunks" / f"{partition:05d}").glob("*.arrow"))
    if not paths:
        return Checks(summarize([]), {}, 0, None, None)
    piece = pd.concat([_with_raw(read_piece(path)) for path in paths])
    mapped, parsed = _unpack(piece)
    checked: Checked = check_parsed(mapped, parsed, params, source=source)
    clean = checked.clean
    days = clean[schema.TX_DATETIME].to_numpy(dtype="datetime64[ns]").view(np.int64)
    days = days // _NS_PER_DAY
    write_days(  # a part reads only the days it needs
        pa.Table.from_pandas(clean, preserve_index=False),
        scratch / "clean" / f"{partition:05d}.arrow",
        days=days,
    )
    write_piece(
        pa.Table.from_pandas(mixed_as_text(checked.rejected), preserve_index=False),
        scratch / "rejected" / f"{partition:05d}.arrow",
    )
    distinct, counts = np.unique(days, return_counts=True)
    return Checks(
        summary=summarize([checked]),
        day_counts=dict(zip(distinct.tolist(), counts.tolist(), strict=True)),
        frauds=int(clean[schema.TX_FRAUD].sum()),
        first=clean[schema.TX_DATETIME].min() if len(clean) else None,
        last=clean[schema.TX_DATETIME].max() if len(clean) else None,
    )


def write_clean_part(
    part: int,
    *,
    scratch: Path,
    out: Path,
    first_day: int,
    day_starts: np.ndarray,
    rows_per_part: int,
) -> int:
    """Task 3: output part ``part``: the kept rows of its days from every partition, in
    (time, id) order (ids are unique among kept rows, so the order is total)."""
    first, last, skip = part_days(part, rows_per_part=rows_per_part, day_starts=day_starts)
    paths = sorted((scratch / "clean").glob("*.arrow"))
    tables = [read_days(path, first_day + first, first_day + last) for path in paths]
    found = [table for table in tables if table.num_rows] or tables[:1]  # empty: the schema
    frame = pd.concat([table.to_pandas() for table in found], ignore_index=True)
    frame = frame.take(time_id_order(frame)[skip : skip + rows_per_part])
    write_part(pa.Table.from_pandas(frame, preserve_index=False), out, part)
    return len(frame)


def _chunks(
    path: Path,
    files: list[Path],
    columns: list[str] | None,
    *,
    text: dict[str, str],
    rows_per_part: int,
) -> Iterator[ParquetChunk | pd.DataFrame]:
    if _is_parquet(path):
        yield from parquet_chunks(files)
    else:
        yield from csv_chunks(path, columns, text=text, rows=rows_per_part)


class Validated(NamedTuple):
    report: dict  # metrics/data_quality.json
    rejected: pd.DataFrame  # in source order, with their reasons: small (validate.accept)


def validate_dataset(
    engine,
    path: Path,
    *,
    columns: list[str] | None,
    text: dict[str, str],
    clean_out: Path,
    scratch: Path,
    params: ValidateParams,
    source: SourceParams,
    rows_per_part: int,
) -> Validated:
    """Validate the source at ``path`` through ``engine``: the clean dataset written into
    ``clean_out`` (a directory being built); returns the data-quality report and the rejected
    rows. Raises before writing anything when the source fails as a whole."""
    path, clean_out, scratch = path.resolve(), clean_out.resolve(), scratch.resolve()
    # a dataset's parts listed and checked once (magic, footer, columns)
    files = source_files(path, columns) if _is_parquet(path) else [path]
    chunks = _chunks(path, files, columns, text=text, rows_per_part=rows_per_part)
    partitions = engine.partitions(_size_hint(path, files))
    if partitions == 1:
        if path.is_dir():  # each part with its own schema: never one cast by Arrow
            chunks = _parts_in_memory(path, files, columns)
        elif _is_parquet(path):
            # typed columns: parsing the whole file gives each row what parsing its row group
            # would, with no second copy of the rows held for the concatenation
            chunks = iter([pd.read_parquet(path, columns=columns)])
        return _validate_in_memory(
            chunks,
            columns=columns,
            clean_out=clean_out,
            params=params,
            source=source,
            rows_per_part=rows_per_part,
        )
    n_read = engine.map_iter(
        parse_chunk,
        chunks,
        columns=columns,
        source=source,
        scratch=scratch,
        partitions=partitions,
    )
    log.info(
        "read %d rows in %d chunks; checking them in %d partitions on the %s engine",
        sum(n_read),
        len(n_read),
        partitions,
        engine.kind,
    )
    checks: list[Checks] = engine.map(
        check_partition, range(partitions), params=params, source=source, scratch=scratch
    )
    summary = summarize([c.summary for c in checks])
    accept(summary, params)  # raises before anything is written
    day_counts: dict[int, int] = {}
    for check in checks:
        for day, count in check.day_counts.items():
            day_counts[day] = day_counts.get(day, 0) + count
    first_day = min(day_counts)
    per_day = np.zeros(max(day_counts) - first_day + 1, dtype=np.int64)
    for day, count in day_counts.items():
        per_day[day - first_day] = count
    day_starts = np.concatenate([[0], np.cumsum(per_day)])
    kept = int(day_starts[-1])
    engine.map(
        write_clean_part,
        range(len(part_starts(kept, rows_per_part))),
        scratch=scratch,
        out=clean_out,
        first_day=first_day,
        day_starts=day_starts,
        rows_per_part=rows_per_part,
    )
    rejected = finish_rejected(
        [read_piece(p) for p in sorted((scratch / "rejected").glob("*.arrow"))]
    )
    report = quality_report(
        summary,
        kept=kept,
        frauds=sum(c.frauds for c in checks),
        first=min(c.first for c in checks if c.first is not None),
        last=max(c.last for c in checks if c.last is not None),
    )
    return Validated(report, rejected)


def _validate_in_memory(
    chunks: Iterator[ParquetChunk | pd.DataFrame],
    *,
    columns: list[str] | None,
    clean_out: Path,
    params: ValidateParams,
    source: SourceParams,
    rows_per_part: int,
) -> Validated:
    """One partition, in this process, without scratch files: chunks parsed one by one as the
    tasks would, then the contract on all their rows (what one partition would hold)."""
    mapped, frames, problems = [], [], []
    for chunk in chunks:
        chunk_mapped, parsed = _parsed_chunk(chunk, columns, source)
        mapped.append(chunk_mapped)
        frames.append(parsed.frame)
        problems.append(parsed.problems)
    if not mapped:
        raise DataContractError("no rows: the input holds no transactions")
    if len(frames) == 1:  # a Parquet source, read whole: nothing to join, nothing to copy
        parsed = Parsed(frame=frames[0], problems=problems[0])
        checked = check_parsed(mapped[0], parsed, params, source=source)
    else:  # a CSV's chunks: each list goes as soon as it is joined, to hold one copy less
        all_mapped = pd.concat(mapped)
        mapped.clear()
        joined = _joined(frames, problems)
        frames.clear()
        release_freed_memory()  # the chunks' arrays: about 1 GiB of the peak at 20 M CSV rows
        checked = check_parsed(all_mapped, joined, params, source=source)
        del all_mapped, joined
    del mapped, frames
    summary = summarize([checked])
    accept(summary, params)  # raises before anything is written
    clean = checked.clean
    write_parts(clean, clean_out, rows_per_part=rows_per_part)
    report = quality_report(
        summary,
        kept=len(clean),
        frauds=int(clean[schema.TX_FRAUD].sum()),
        first=clean[schema.TX_DATETIME].min(),
        last=clean[schema.TX_DATETIME].max(),
    )
    return Validated(report, finish_rejected([mixed_as_text(checked.rejected)]))


def _parts_in_memory(
    path: Path, files: list[Path], columns: list[str] | None
) -> Iterator[pd.DataFrame]:
    """A dataset directory's parts one by one, each indexed by its rows' positions in the
    dataset (row numbers in messages count across parts)."""
    first_row = 0
    for part in files:
        frame = read_part(path, part, columns)
        frame.index = pd.RangeIndex(first_row, first_row + len(frame))
        first_row += len(frame)
        yield frame


def _is_parquet(path: Path) -> bool:
    return path.is_dir() or path.suffix.lower() in (".parquet", ".pq")


def _joined(frames: list[pd.DataFrame], problems: list[dict]) -> Parsed:
    """Chunks parsed one by one, as one ``Parsed``."""
    lengths = [len(frame) for frame in frames]
    rules = {rule: column for found in problems for rule, (column, _) in found.items()}
    return Parsed(
        frame=pd.concat(frames),
        problems={
            rule: (
                column,
                np.concatenate(
                    [
                        found[rule][1] if rule in found else np.zeros(n, dtype=bool)
                        for found, n in zip(problems, lengths, strict=True)
                    ]
                ),
            )
            for rule, column in rules.items()
        },
    )


def _size_hint(path: Path, files: list[Path]) -> int:
    """Rows in a Parquet source (from its files' footers); a CSV's size in bytes / 50."""
    if _is_parquet(path):
        return sum(pq.read_metadata(file).num_rows for file in files)
    return path.stat().st_size // 50
