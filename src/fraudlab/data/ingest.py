"""Bring transactions in any layout onto the canonical schema (SPEC §2), by params alone.

``read_transactions`` is the I/O edge (CSV or Parquet, file-level problems become
DataContractError). ``map_columns`` renames the source's columns; ``parse_columns`` turns text,
epoch numbers, zoned timestamps and label words into canonical types, and reports, per column,
the rows whose value could not be parsed (they go to quarantine, never silently to NaN).
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fraudlab.core import schema
from fraudlab.core.errors import DataContractError
from fraudlab.core.params import SourceParams

_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_OFFSET = r"(?:[zZ]|[+-]\d{2}:?\d{2})$"


def _file_kind(path: Path) -> str:
    if path.is_dir():  # a dataset directory, whatever its name: its parts are checked one by one
        return "parquet"
    kind = _FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataContractError(
            f"unknown file type '{path.suffix}': expected one of {sorted(_FORMATS)}"
        )
    return kind


# Leading bytes of binary formats a CSV export is sometimes confused with.
_MAGIC = {
    b"PAR1": "a Parquet file: name it .parquet",
    b"PK\x03\x04": "a ZIP archive (an .xlsx workbook?): export the sheet as CSV",
    b"\xd0\xcf\x11\xe0": "an old Excel (.xls) workbook: export the sheet as CSV",
    b"\x1f\x8b": "gzip-compressed: decompress it first",
    b"\x89PNG": "a PNG image",
    b"%PDF": "a PDF document",
}
_SNIFF_BYTES = 8192


def _first_invalid_utf8(path: Path) -> tuple[int, int]:
    """Byte offset (0-based) and line (1-based) of the first byte that is not valid UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, lines = 0, 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                # the decoder may hold up to 3 bytes of an unfinished character from before
                held = len(decoder.getstate()[0]) if exc.start == 0 else 0
                bad = offset + exc.start - held
                return bad, lines + chunk[: max(exc.start, 0)].count(b"\n") + 1
            offset += len(chunk)
            lines += chunk.count(b"\n")
    return offset, lines + 1


def _sniff_csv(path: Path) -> None:
    """Refuse a binary file named .csv before a CSV reader turns it into a confusing error."""
    with open(path, "rb") as handle:
        head = handle.read(_SNIFF_BYTES)
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            raise DataContractError(f"not CSV text but {what}")
    if b"\x00" in head and head.count(b"\x00") > len(head) // 10:
        raise DataContractError("not CSV text but binary data (NUL bytes): is it the right file?")


@contextmanager
def _readable(kind: str, path: Path) -> Iterator[None]:
    """Turn a reader's failure on a malformed file into a message about the file."""
    try:
        yield
    except pd.errors.EmptyDataError:
        raise DataContractError("empty file: no header and no rows") from None
    except UnicodeDecodeError:
        offset, line = _first_invalid_utf8(path)
        raise DataContractError(
            f"not UTF-8 text (line {line}, byte {offset} of the file): re-export as UTF-8"
        ) from None
    except (pa.ArrowException, pd.errors.ParserError, OSError) as exc:
        raise DataContractError(f"not a readable {kind} file: {exc}") from None


_TRAILING = "__field_after_the_header__"  # the empty field a trailing delimiter makes


def _first_records(path: Path) -> tuple[list[str], list[str]]:
    """The header's fields and the first data row's, as a CSV reader splits them (quotes
    honoured, blank lines skipped)."""
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as handle:
        records = (record for record in csv.reader(handle) if record)
        header, first = next(records, []), next(records, [])
    return header, first


def _csv_options(path: Path) -> dict:
    _sniff_csv(path)
    # Only an empty field is missing: pandas would also read "NA", "null" or "nan" as missing,
    # which turns a real id or label into a null and hides what the file said.
    options = {
        "encoding": "utf-8",
        "encoding_errors": "strict",
        "keep_default_na": False,
        "na_values": [""],
    }
    header, first = _first_records(path)
    if header and len(first) == len(header) + 1:
        # A delimiter at the end of every data row, not of the header: pandas would take the
        # first column as the index and shift every name one column left. The surplus field
        # is read under a name of its own and must be empty (``_without_trailing``).
        options |= {"names": [*header, _TRAILING], "header": 0, "index_col": False}
    return options


def _usecols(columns: list[str] | None, options: dict) -> list[str] | None:
    trailing = _TRAILING in options.get("names", ())
    return [*columns, _TRAILING] if columns is not None and trailing else columns


def _without_trailing(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows without the field a trailing delimiter adds; a value in it is a row with more
    fields than the header, refused with the row and the count."""
    if _TRAILING not in frame.columns:
        return frame
    given = frame[_TRAILING].notna().to_numpy()
    if given.any():
        first = int(np.flatnonzero(given)[0])
        raise DataContractError(
            f"data row {frame.index[first] + 1} has {len(frame.columns)} fields where the header "
            f"has {len(frame.columns) - 1} (a value after the last column: "
            f"{frame[_TRAILING].iloc[first]!r}); rows end with a delimiter, so only an empty "
            f"last field is read as that delimiter ({int(given.sum())} row(s) hold a value there)"
        )
    return frame.drop(columns=_TRAILING)


def read_header(path: str | Path) -> list[str]:
    """The file's column names, read without reading its rows."""
    path = Path(path)
    kind = _file_kind(path)
    with _readable(kind, path):
        if kind == "csv":
            names = list(pd.read_csv(path, nrows=0, **_csv_options(path)))
            return [name for name in names if name != _TRAILING]
        return list(pq.read_schema(source_files(path)[0]).names)


def require_canonical(columns: list[str]) -> None:
    missing = [c for c in schema.REQUIRED_COLUMNS if c not in columns]
    if missing:
        glued = [sep for sep in (";", "\t", "|") if len(columns) == 1 and sep in columns[0]]
        hint = (
            f"; the header is one column holding {glued[0]!r}: the file is not comma-separated, "
            "re-export it with commas"
            if glued
            else ""
        )
        raise DataContractError(
            f"missing required column(s) {missing}; columns present: {columns} "
            f"(map differently named columns with source.columns in params.yaml){hint}"
        )


def columns_to_read(header: list[str], params: SourceParams) -> list[str] | None:
    """The source columns the pipeline needs (the canonical ones, through the mapping, and the
    declared extras), or None for every column. Fails on names the file lacks."""
    require_canonical(mapped_names(header, params.columns))
    if params.extra_columns == "all":
        return None
    absent = [c for c in params.extra_columns if c not in header]
    if absent:
        raise DataContractError(
            f"source.extra_columns names column(s) the file does not have: {absent}; "
            f"columns present: {header}"
        )
    canonical = {params.columns.get(c, c) for c in schema.REQUIRED_COLUMNS}
    return [c for c in header if c in canonical or c in params.extra_columns]


def _bookkeeping(relative: Path) -> bool:
    # _SUCCESS, _common_metadata, .crc files and hidden directories of Spark, Hive or Dask
    return any(name.startswith((".", "_")) for name in relative.parts)


def source_files(path: str | Path, columns: list[str] | None = None) -> list[Path]:
    """A Parquet file, or every part of a dataset directory (any names, sub-directories
    included, in path order; bookkeeping files skipped). Each part must be Parquet with a
    readable footer and hold ``columns`` (default: the first part's columns)."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    parts = sorted(
        file
        for file in path.rglob("*")
        if file.is_file() and not _bookkeeping(file.relative_to(path))
    )
    if not parts:
        raise DataContractError("a directory without files: no Parquet parts to read")
    expected = columns
    for part in parts:
        name = part.relative_to(path)
        with open(part, "rb") as handle:
            if handle.read(4) != b"PAR1":
                raise DataContractError(
                    f"part {name} is not a Parquet file: a dataset directory holds Parquet "
                    "parts only"
                )
        try:
            present = pq.read_schema(part).names
        except (pa.ArrowException, OSError) as exc:
            raise DataContractError(f"part {name}: not a readable parquet file: {exc}") from None
        expected = present if expected is None else expected
        absent = [c for c in expected if c not in present]
        if absent:
            raise DataContractError(
                f"part {name} lacks column(s) {absent} that the first part has; its columns: "
                f"{present}"
            )
    return parts


def read_part(path: Path, part: Path, columns: list[str] | None) -> pd.DataFrame:
    """One part of a Parquet source (``source_files`` checked it) with its own schema, never
    cast to another part's: each part's values go through the same parsing as a single file's."""
    try:
        return pq.read_table(part, columns=columns).to_pandas()
    except (pa.ArrowException, OSError) as exc:
        name = part.relative_to(path) if part != path else part.name
        raise DataContractError(f"part {name}: not a readable parquet file: {exc}") from None


def read_transactions(
    path: str | Path, columns: list[str] | None = None, *, text: dict[str, str] | None = None
) -> pd.DataFrame:
    """Read a CSV (UTF-8) or Parquet file (or dataset directory), only ``columns`` when given;
    anything unreadable is a DataContractError. ``text`` names CSV columns read as text (ids,
    parsed exactly later). Rows keep their position in the file as index (0 = first data row)."""
    path = Path(path)
    kind = _file_kind(path)
    with _readable(kind, path):
        if kind == "csv":
            options = _csv_options(path)
            frame = pd.read_csv(path, usecols=_usecols(columns, options), dtype=text, **options)
            return _without_trailing(frame)
        if path.is_dir():
            parts = [read_part(path, part, columns) for part in source_files(path, columns)]
            return pd.concat(parts, ignore_index=True)
        return pd.read_parquet(path, columns=columns)


def csv_chunks(
    path: str | Path, columns: list[str] | None, *, text: dict[str, str], rows: int
) -> Iterator[pd.DataFrame]:
    """``read_transactions`` for a CSV, ``rows`` rows at a time (the index keeps counting
    across chunks). A column's type is read per chunk: a chunk of numbers gives numbers, one
    with a word in it gives text, and the parsers take either."""
    path = Path(path)
    with _readable("csv", path):
        options = _csv_options(path)
        reader = pd.read_csv(
            path, usecols=_usecols(columns, options), dtype=text, chunksize=rows, **options
        )
        with reader:
            yield from (_without_trailing(chunk) for chunk in reader)


def mapped_names(present: list[str], columns: dict[str, str]) -> list[str]:
    """The column names after mapping (``columns``: canonical name -> source name); fails on a
    mapping that names a column not ``present`` or renames onto an existing column."""
    absent = {canonical: name for canonical, name in columns.items() if name not in present}
    if absent:
        raise DataContractError(
            f"source.columns names column(s) the file does not have: {absent}; "
            f"columns present: {present}"
        )
    clashing = [c for c, name in columns.items() if c != name and c in present]
    if clashing:
        raise DataContractError(
            f"column(s) {clashing} exist in the file and are also mapped from another column"
        )
    renamed = {name: canonical for canonical, name in columns.items()}
    return [renamed.get(name, name) for name in present]


def map_columns(frame: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """Rename source columns to canonical names (``columns``: canonical name -> source name)."""
    return frame.set_axis(mapped_names(list(frame.columns), columns), axis="columns")


@dataclass(frozen=True)
class Parsed:
    frame: pd.DataFrame  # canonical dtypes; a value that could not be parsed is missing
    # rule -> (column, mask of rows breaking it): values that could not be read as their type
    problems: dict[str, tuple[str, np.ndarray]]


def _to_utc_naive(values: pd.Series, timezone: str) -> pd.Series:
    if values.dt.tz is None:
        if timezone == "UTC":
            return values
        values = values.dt.tz_localize(timezone, ambiguous="NaT", nonexistent="NaT")
    return values.dt.tz_convert("UTC").dt.tz_localize(None)


_FINER_THAN_NS = r"[.,]\d{10,}"


def _within_nanoseconds(values: pd.Series) -> pd.Series:
    """Times that int64 nanoseconds cannot hold (before 1677 or after 2262, e.g. year 1 with
    an offset that moves it into year 0) as missing: such a row is then an unparseable value,
    quarantined, never an overflow that stops the stage."""
    inside = (values >= pd.Timestamp.min) & (values <= pd.Timestamp.max)
    return values.where(inside).astype(schema.DATETIME_DTYPE)


def local_time_problems(naive: pd.Series, timezone: str) -> dict[str, np.ndarray]:
    """Local times ``timezone``'s daylight-saving changes make impossible to place: skipped
    when clocks go forward, or passed twice when they go back (no offset says which)."""
    present = naive.notna().to_numpy()
    never = naive.dt.tz_localize(
        timezone, ambiguous=np.zeros(len(naive), dtype=bool), nonexistent="NaT"
    )
    twice = naive.dt.tz_localize(timezone, ambiguous="NaT", nonexistent="shift_forward")
    return {
        f"tx_datetime skipped by {timezone}'s daylight-saving change (clocks go forward)": (
            present & never.isna().to_numpy()
        ),
        f"tx_datetime ambiguous in {timezone}: clocks go back and pass it twice (add the "
        "UTC offset to the export)": present & twice.isna().to_numpy(),
    }


def _local_problems(naive: pd.Series, parsed: pd.Series, timezone: str) -> dict[str, np.ndarray]:
    # only when localizing lost a value: a zone without daylight saving costs nothing here
    if timezone == "UTC" or not (parsed.isna() & naive.notna()).any():
        return {}
    return local_time_problems(naive, timezone)


def _parse_datetime(
    values: pd.Series, params: SourceParams
) -> tuple[pd.Series, dict[str, np.ndarray]]:
    problems: dict[str, np.ndarray] = {}
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = _to_utc_naive(values, params.timezone)
        if values.dt.tz is None:
            problems = _local_problems(values, parsed, params.timezone)
    elif pd.api.types.is_numeric_dtype(values):
        if params.timestamp_unit is None:
            raise DataContractError(
                "column tx_datetime holds numbers: set source.timestamp_unit (s, ms, us or ns) "
                "to read them as epoch timestamps"
            )
        parsed = pd.to_datetime(values, unit=params.timestamp_unit, errors="coerce")
    else:
        text = values.astype("string").str.strip()
        zoned = text.str.contains(_OFFSET, regex=True, na=False).to_numpy()
        parsed = pd.Series(pd.NaT, index=values.index, dtype=schema.DATETIME_DTYPE)
        if zoned.any():
            aware = pd.to_datetime(text[zoned], errors="coerce", utc=True, format="ISO8601")
            parsed[zoned] = _within_nanoseconds(aware.dt.tz_localize(None))
        if (~zoned).any():
            naive = pd.to_datetime(text[~zoned], errors="coerce", format="ISO8601")
            local = _to_utc_naive(naive, params.timezone)
            parsed[~zoned] = _within_nanoseconds(local)
            rows = np.flatnonzero(~zoned)
            for rule, mask in _local_problems(naive, local, params.timezone).items():
                problems[rule] = np.zeros(len(values), dtype=bool)
                problems[rule][rows[mask]] = True
        # more digits than nanoseconds hold would be rounded: unparseable instead
        parsed[text.str.contains(_FINER_THAN_NS, regex=True, na=False).to_numpy()] = pd.NaT
    return parsed.astype(schema.DATETIME_DTYPE), problems


def _label_key(value: object) -> str:
    return str(value).strip().lower()


def _parse_label(values: pd.Series, params: SourceParams) -> pd.Series:
    if pd.api.types.is_bool_dtype(values):
        return values.astype("int8")
    if pd.api.types.is_numeric_dtype(values):
        return values  # the contract checks 0/1
    words = {_label_key(v): 1 for v in params.fraud_values} | {
        _label_key(v): 0 for v in params.legit_values
    }
    # A label column holds a handful of distinct words: look each up once.
    codes, distinct = pd.factorize(values)
    known = np.array([words.get(_label_key(v), np.nan) for v in distinct] + [np.nan])
    return pd.Series(known[codes], index=values.index).astype("Float64")


_ID_COLUMNS = (schema.TRANSACTION_ID, schema.CUSTOMER_ID, schema.TERMINAL_ID)
# Reasons a value could not be read as its type; the contract (validate) uses them too.
NOT_AN_INTEGER = "not an integer"
LEADING_ZEROS = "with leading zeros"
NON_FINITE_AMOUNT = "non-finite tx_amount"
UNDERFLOWING_AMOUNT = "tx_amount too small to represent (it would be read as 0)"
_INT64 = np.iinfo(np.int64)
_EXACT_FLOAT_LIMIT = 2.0**53  # above it a float64 cannot hold every integer
_SAFE_DIGITS = 18  # any number of up to 18 digits fits int64


def _text_to_int64(text: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Parse strings of [+-]digits exactly (never through a float): values and an in-range mask.
    Up to 18 digits in one vectorized Arrow cast; longer ones one by one."""
    digits = text.str.lstrip("+-").str.len().to_numpy()
    values = np.zeros(len(text), dtype=np.int64)
    fits = np.ones(len(text), dtype=bool)
    short = digits <= _SAFE_DIGITS
    if short.any():
        strings = pa.array(text[short].astype("string[pyarrow]").array)
        values[short] = pc.cast(pc.utf8_ltrim(strings, "+"), pa.int64()).to_numpy()
    for i in np.flatnonzero(~short):
        number = int(text.iloc[i])
        fits[i] = _INT64.min <= number <= _INT64.max
        values[i] = number if fits[i] else 0
    return values, fits


def _integer_from_text(values: pd.Series, column: str) -> tuple[pd.Series, dict[str, np.ndarray]]:
    text = values.astype("string").str.strip()
    present = text.notna().to_numpy()
    integer = text.str.fullmatch(r"[+-]?[0-9]+").fillna(False).to_numpy(dtype=bool)
    padded = integer & text.str.fullmatch(r"[+-]?0[0-9]+").fillna(False).to_numpy(dtype=bool)
    parsed, fits = np.zeros(len(text), dtype=np.int64), np.ones(len(text), dtype=bool)
    readable = integer & ~padded
    parsed[readable], fits[readable] = _text_to_int64(text[readable])
    ok = readable & fits
    problems = {
        f"{column} {NOT_AN_INTEGER}": present & ~integer,
        # "007" and "7" would become one id: never merge ids silently
        f"{column} {LEADING_ZEROS}": padded,
        f"{column} outside the int64 range": readable & ~fits,
    }
    return pd.Series(pd.array(parsed, dtype="Int64"), index=values.index).where(ok), problems


def _parse_integer_id(values: pd.Series, column: str) -> tuple[pd.Series, dict[str, np.ndarray]]:
    """An id column as exact int64, whatever the source's type: text is parsed digit by digit,
    an unsigned or float column is checked for values int64 or float64 cannot hold exactly."""
    if pd.api.types.is_bool_dtype(values):
        return values.astype("Int64").where(False), {
            f"{column} {NOT_AN_INTEGER}": values.notna().to_numpy()
        }
    if pd.api.types.is_integer_dtype(values):
        unsigned = pd.api.types.is_unsigned_integer_dtype(values)
        big = (
            (values > np.uint64(_INT64.max)).fillna(False).to_numpy(dtype=bool)
            if unsigned
            else np.zeros(len(values), dtype=bool)
        )
        fitted = values.where(~big, 0).astype("Int64").where(~big)
        return fitted, {f"{column} outside the int64 range": big}
    if pd.api.types.is_float_dtype(values):
        floats = values.to_numpy(dtype=np.float64, na_value=np.nan)
        with np.errstate(invalid="ignore"):
            exact = np.isfinite(floats) & (floats % 1 == 0) & (np.abs(floats) <= _EXACT_FLOAT_LIMIT)
        present = ~np.isnan(floats)
        parsed = pd.Series(np.where(exact, floats, 0).astype(np.int64), index=values.index)
        return parsed.astype("Int64").where(exact), {
            f"{column} not an exact integer": present & ~exact
        }
    return _integer_from_text(values, column)


def _parse_amount(values: pd.Series) -> tuple[pd.Series, dict[str, np.ndarray]]:
    """Amounts as float64; 'nan' written out is a non-finite amount, not an unreadable one
    (inf, -inf and 1e999 parse, and the contract's finite rule catches them); a non-zero amount
    too small for float64 (1e-400) would be read as 0 and is refused."""
    numbers = pd.to_numeric(values, errors="coerce")
    if pd.api.types.is_numeric_dtype(values):
        return numbers, {}
    # The text is looked at only where the number says something may be off: a NaN (written
    # out, or unreadable) or a zero (written as one, or an underflow). Most rows are neither.
    written_nan = np.zeros(len(values), dtype=bool)
    underflow = np.zeros(len(values), dtype=bool)
    missing = numbers.isna().to_numpy()
    zero = (numbers == 0).fillna(False).to_numpy(dtype=bool)
    if missing.any():
        text = values[missing].astype("string").str.strip().str.lower()
        written_nan[missing] = text.isin(["nan", "+nan", "-nan"]).fillna(False).to_numpy(bool)
    if zero.any():
        text = values[zero].astype("string").str.strip().str.lower()
        mantissa = text.str.split("e", n=1).str[0]
        underflow[zero] = mantissa.str.contains(r"[1-9]", regex=True).fillna(False).to_numpy(bool)
    return numbers, {NON_FINITE_AMOUNT: written_nan, UNDERFLOWING_AMOUNT: underflow}


def _parse_text_id(values: pd.Series, column: str) -> tuple[pd.Series, dict[str, np.ndarray]]:
    """An id column as text, exactly as given; numbers are written out without a decimal part."""
    if pd.api.types.is_float_dtype(values) or pd.api.types.is_integer_dtype(values):
        numbers, problems = _parse_integer_id(values, column)
        return numbers.astype("string"), problems
    return values.astype("string"), {}


def text_columns(params: SourceParams) -> dict[str, str]:
    """Source name of each column a CSV is read as text -> that dtype: every id (parsed exactly
    later: a CSV reader would turn integers with one empty cell into floats and merge large
    ids) and the amount (a rejected row keeps ``'111.590'`` as given, not the float read)."""
    read_as_text = (*_ID_COLUMNS, schema.TX_AMOUNT)
    return {params.columns.get(c, c): "string" for c in read_as_text}


def _with_problems(parse: Callable[[pd.Series], pd.Series]):
    return lambda values: (parse(values), {})


def parse_columns(frame: pd.DataFrame, params: SourceParams) -> Parsed:
    """Parse the canonical columns of a renamed frame; other columns pass through untouched.
    A value that cannot be read as its column's type is missing in the result and its row is
    marked with the reason (a specific one for ids, 'unparseable <column>' otherwise)."""
    parsers = {
        schema.TRANSACTION_ID: lambda v: _parse_integer_id(v, schema.TRANSACTION_ID),
        schema.TX_DATETIME: lambda v: _parse_datetime(v, params),
        schema.TX_AMOUNT: _parse_amount,
        schema.TX_FRAUD: _with_problems(lambda v: _parse_label(v, params)),
    }
    for column in (schema.CUSTOMER_ID, schema.TERMINAL_ID):
        text = column in params.text_ids
        parse_id = _parse_text_id if text else _parse_integer_id
        parsers[column] = lambda v, c=column, parse_id=parse_id: parse_id(v, c)
    parsed, problems = {}, {}
    for column, parse in parsers.items():
        if column not in frame:  # the caller checks that required columns are present
            continue
        parsed[column], specific = parse(frame[column])
        lost = (parsed[column].isna() & frame[column].notna()).to_numpy(dtype=bool)
        explained = np.zeros(len(frame), dtype=bool)
        for rule, mask in specific.items():
            explained |= mask
            if mask.any():
                problems[rule] = (column, mask)
        if (lost & ~explained).any():
            problems[f"unparseable {column}"] = (column, lost & ~explained)
    return Parsed(frame=frame.assign(**parsed), problems=problems)
