"""The data contract: a source's columns are mapped and parsed onto the canonical schema, then
checked against a declared pandera schema, lazily, so one run reports every broken rule at once.

File-level problems stop the run. Row-level problems (including values that could not be parsed)
move the row to quarantine with its reasons and its position in the source; the run stops only
when more than ``validate.max_rejected_share`` of the rows break a rule. Exact duplicate rows are
dropped and counted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from fraudlab.core import schema
from fraudlab.core.errors import DataContractError
from fraudlab.core.params import SourceParams, ValidateParams
from fraudlab.data.ingest import (
    LEADING_ZEROS,
    NON_FINITE_AMOUNT,
    NOT_AN_INTEGER,
    Parsed,
    map_columns,
    parse_columns,
    require_canonical,
)

log = logging.getLogger(__name__)

REASON_COLUMN = "rejection_reason"
# 1-based position among the source's data rows (a CSV's line number minus its header).
ROW_COLUMN = "source_row"
_DUPLICATE_ID = "transaction_id repeated with different content"


@dataclass(frozen=True)
class ValidationResult:
    clean: pd.DataFrame
    rejected: pd.DataFrame
    report: dict


@dataclass(frozen=True)
class Violation:
    column: str
    rows: np.ndarray  # boolean mask over the deduplicated rows


@dataclass(frozen=True)
class RuleSummary:
    """A broken rule over some rows: how many, and the first few examples (row, text)."""

    column: str
    count: int
    examples: list[tuple[int, str]]
    # the distinct values as given (a few), where a hint quotes them: unknown label words
    words: tuple[str, ...] = ()


# Rules of one column, in the order reasons are listed: what could not be read, then what is
# missing, then the value rules, then a repeated id. Fixed here, not by which rows come first,
# so a row's reasons read the same whichever rows it was checked with.
_PARSE_PROBLEMS = (NOT_AN_INTEGER, "not an exact integer", LEADING_ZEROS, "outside the int64 range")


def _rule_order(rule: str, summary: Violation | RuleSummary) -> tuple:
    column = summary.column
    if rule.startswith(f"{column} ") and rule[len(column) + 1 :] in _PARSE_PROBLEMS:
        kind = _PARSE_PROBLEMS.index(rule[len(column) + 1 :])
    elif rule == f"unparseable {column}":
        kind = len(_PARSE_PROBLEMS)
    elif rule == f"null {column}":
        kind = len(_PARSE_PROBLEMS) + 1
    elif rule == _DUPLICATE_ID:
        kind = len(_PARSE_PROBLEMS) + 3
    else:  # a value rule (by name)
        kind = len(_PARSE_PROBLEMS) + 2
    return (schema.REQUIRED_COLUMNS.index(column), kind, rule)


def date_rule(params: ValidateParams) -> str:
    return f"tx_datetime outside {params.earliest_date}..{params.latest_date}"


def _value_checks(params: ValidateParams) -> dict[str, list[tuple[str, pa.Check]]]:
    """Per column, the named value rules beyond 'present' (and 'unique' for the id)."""
    after_latest = pd.Timestamp(params.latest_date) + pd.Timedelta(days=1)
    return {
        schema.TRANSACTION_ID: [],
        schema.TX_DATETIME: [
            (
                date_rule(params),
                pa.Check.in_range(
                    pd.Timestamp(params.earliest_date), after_latest, include_max=False
                ),
            )
        ],
        schema.CUSTOMER_ID: [],
        schema.TERMINAL_ID: [],
        schema.TX_AMOUNT: [
            ("negative tx_amount", pa.Check.ge(0)),
            # inf, -inf and 1e999 parse as floats and would flow into the average amounts
            (NON_FINITE_AMOUNT, pa.Check(np.isfinite, name="finite")),
        ],
        schema.TX_FRAUD: [("tx_fraud not 0/1", pa.Check.isin([0, 1]))],
    }


def contract(params: ValidateParams) -> pa.DataFrameSchema:
    """The declared contract on parsed canonical columns; other columns are not checked."""
    return pa.DataFrameSchema(
        {
            column: pa.Column(
                checks=[check for _, check in checks],
                nullable=False,
                unique=column == schema.TRANSACTION_ID,
            )
            for column, checks in _value_checks(params).items()
        },
        strict=False,
    )


def _failure_cases(frame: pd.DataFrame, params: ValidateParams) -> pd.DataFrame:
    try:
        contract(params).validate(frame, lazy=True, inplace=True)
    except SchemaErrors as exc:
        return exc.failure_cases
    return pd.DataFrame(columns=["column", "check", "check_number", "index"])


def _rule(column: str, check: str, number: int, checks: dict) -> str:
    if check == "not_nullable":
        return f"null {column}"
    if check == "field_uniqueness":
        return _DUPLICATE_ID
    return checks[column][number][0]


def row_violations(parsed: Parsed, params: ValidateParams) -> dict[str, Violation]:
    """Every rule broken by at least one row, with the rows breaking it, in canonical column
    order; a row may break several. A value that could not be parsed is reported with its parse
    problem (e.g. 'unparseable tx_amount', 'customer_id not an integer'), not also as null."""
    frame = parsed.frame
    cases = _failure_cases(frame, params)
    if cases["index"].isna().any():  # a frame-level failure: the caller checks columns first
        raise DataContractError(f"contract failed on the whole table:\n{cases.to_string()}")
    positions = cases["index"].to_numpy(dtype=np.int64)
    explained = np.zeros(len(cases), dtype=bool)
    for column, mask in parsed.problems.values():
        explained |= (
            (cases["column"] == column).to_numpy()
            & (cases["check"] == "not_nullable").to_numpy()
            & mask[positions]
        )
    cases, positions = cases.loc[~explained], positions[~explained]
    violations = {
        rule: Violation(column, mask.copy()) for rule, (column, mask) in parsed.problems.items()
    }
    keys = pd.DataFrame(
        {
            "column": cases["column"].astype(str),
            "check": cases["check"].astype(str),
            "number": cases["check_number"].fillna(-1).astype(int),
        }
    )
    checks = _value_checks(params)
    for key, group in keys.groupby(list(keys.columns), sort=False).indices.items():
        rule = _rule(*key, checks)
        violation = violations.setdefault(rule, Violation(key[0], np.zeros(len(frame), bool)))
        violation.rows[positions[group]] = True
    return dict(sorted(violations.items(), key=lambda item: _rule_order(*item)))


def _reasons(violations: dict[str, Violation], n_rows: int) -> np.ndarray:
    """Every rule a row breaks, joined with '; ' ('' for a row that breaks none)."""
    reasons = np.full(n_rows, "", dtype=object)
    for rule, violation in violations.items():
        mask = violation.rows
        reasons[mask] = np.where(reasons[mask] == "", rule, reasons[mask] + "; " + rule)
    return reasons


_SHOWN_CHARACTERS = 40


def _shown(raw: object) -> str:
    """A value as given, cut short: an export's free-text field can be megabytes long."""
    if not isinstance(raw, str):
        return str(raw)
    if len(raw) <= _SHOWN_CHARACTERS:
        return repr(raw)
    return f"{raw[:_SHOWN_CHARACTERS]!r}... ({len(raw):,} characters)"


def _example(row: int, raw: object, parsed: object) -> str:
    if pd.isna(raw):
        return f"row {row}: empty"
    shown = f"row {row}: {_shown(raw)}"
    # Show what the value was read as when that differs, e.g. epoch numbers in the wrong unit.
    if not pd.isna(parsed) and str(parsed) != str(raw):
        return f"{shown} (read as {parsed})"
    return shown


def examples(
    violations: dict[str, Violation],
    source: pd.DataFrame,
    parsed: pd.DataFrame,
    rows: np.ndarray,
    limit: int,
) -> dict[str, list[tuple[int, str]]]:
    """Per broken rule, its first ``limit`` values as given: (row number in the source, text
    with what the value was read as)."""
    out = {}
    for rule, violation in violations.items():
        hit = np.flatnonzero(violation.rows)[:limit]
        out[rule] = [
            (int(row), _example(row, raw, value))
            for row, raw, value in zip(
                rows[hit],
                source[violation.column].iloc[hit].tolist(),
                parsed[violation.column].iloc[hit].tolist(),
                strict=True,
            )
        ]
    return out


def describe(rules: dict[str, RuleSummary], limit: int) -> list[str]:
    """One line per broken rule, in rule order: column, rule, row count and the first values
    as given (with their row numbers in the source, and what they were read as)."""
    lines = []
    for rule, summary in sorted(rules.items(), key=lambda item: _rule_order(item[0], item[1])):
        shown = ", ".join(text for _, text in sorted(summary.examples)[:limit])
        lines.append(f"column {summary.column}, rule '{rule}': {summary.count} rows, e.g. {shown}")
    return lines


def _normalize(frame: pd.DataFrame, text_ids: list[str]) -> pd.DataFrame:
    """Kept rows in (time, id) order with the canonical dtypes, built a column at a time so
    that one copy of the rows is made, not three (filter, cast, sort)."""
    casts = {
        schema.TRANSACTION_ID: "int64",
        **{c: "int64" for c in (schema.CUSTOMER_ID, schema.TERMINAL_ID) if c not in text_ids},
        schema.TX_DATETIME: schema.DATETIME_DTYPE,
        schema.TX_AMOUNT: "float64",
        schema.TX_FRAUD: "int8",
    }
    order = time_id_order(frame)
    columns = {
        name: column.astype(casts[name]).take(order).reset_index(drop=True)
        if name in casts
        else column.take(order).reset_index(drop=True)
        for name, column in frame.items()
    }
    return pd.DataFrame(columns, copy=False)


def time_id_order(frame: pd.DataFrame) -> np.ndarray:
    """The (time, id) order of rows whose ids are unique and present (kept rows): what
    ``sort_values(SORT_KEYS)`` gives, without pandas factorizing each key."""
    times = frame[schema.TX_DATETIME].to_numpy(dtype="datetime64[ns]").view(np.int64)
    return np.lexsort((frame[schema.TRANSACTION_ID].to_numpy(dtype=np.int64), times))


_WORDS = 8  # distinct unknown label words quoted in a hint
UNKNOWN_LABEL = f"unparseable {schema.TX_FRAUD}"


def _words(rule: str, violation: Violation, given: pd.DataFrame) -> tuple[str, ...]:
    """The first few distinct label words no label param lists (only for that rule)."""
    if rule != UNKNOWN_LABEL:
        return ()
    values = given[violation.column].to_numpy()[violation.rows]
    return tuple(str(word) for word in pd.unique(values)[:_WORDS])


def _hints(summary: Summary, params: ValidateParams) -> str:
    """What usually causes a file-wide failure, when the violations look like it."""
    hints = []
    violations = summary.rules
    dates = violations.get(date_rule(params))
    if dates is not None and dates.count == summary.rows_deduplicated:
        hints.append(
            "Every tx_datetime is outside the range: check source.timestamp_unit and "
            "source.timezone, or set validate.earliest_date / latest_date to your data's period."
        )
    text_like = sorted(
        {
            v.column
            for rule, v in violations.items()
            if v.column in (schema.CUSTOMER_ID, schema.TERMINAL_ID)
            and rule.endswith((NOT_AN_INTEGER, LEADING_ZEROS))
        }
    )
    if text_like:
        hints.append(
            f"{' and '.join(text_like)} hold text or zero-padded codes: if these are your ids, "
            "list them in source.text_ids to keep them as text."
        )
    labels = violations.get(UNKNOWN_LABEL)
    if labels is not None:
        words = ", ".join(repr(word) for word in labels.words)
        hints.append(
            f"tx_fraud holds label words no label param lists: {words}. List each in "
            "source.fraud_values or source.legit_values (params.yaml; case is ignored), e.g. "
            'fraud_values: [1, "Y"] and legit_values: [0, "N"].'
        )
    return "".join(f"\n{hint}" for hint in hints)


def _too_many_rejected(
    lines: list[str], n_rejected: int, n_read: int, params: ValidateParams, hints: str
) -> DataContractError:
    return DataContractError(
        f"{n_rejected} of {n_read} rows ({n_rejected / n_read:.2%}) break the data contract, "
        f"more than validate.max_rejected_share ({params.max_rejected_share:.2%}):\n  "
        + "\n  ".join(lines)
        + hints
        + "\nFix these rows in the source, map or parse them differently (params.yaml: source), "
        "or allow more rejections (validate.max_rejected_share)."
    )


@dataclass(frozen=True)
class Checked:
    """Rows after the contract: the kept ones (canonical types, in (time, id) order), the
    rejected ones (as given, with reasons and source rows, in source order) and what the report
    and the messages need. One per partition of the source's rows; ``merge`` adds them up."""

    clean: pd.DataFrame
    rejected: pd.DataFrame
    rows_read: int
    rows_deduplicated: int  # rows_read less the exact duplicates and the re-exports folded
    rows_folded: int  # copies equal to an earlier row once parsed, though written differently
    rules: dict[str, RuleSummary]
    labels: frozenset  # the classes among the kept rows


def check_rows(frame: pd.DataFrame, params: ValidateParams, *, source: SourceParams) -> Checked:
    """Map, parse and apply the contract to rows of a source (index: 0-based position in the
    source). Every copy of an exact duplicate and every row of a transaction_id must be among
    ``frame``'s rows: rows of one id are checked together. File-level problems raise."""
    mapped = map_columns(frame, source.columns)
    require_canonical(list(mapped.columns))
    return check_parsed(mapped, parse_columns(mapped, source), params, source=source)


def check_parsed(
    mapped: pd.DataFrame, parsed: Parsed, params: ValidateParams, *, source: SourceParams
) -> Checked:
    """``check_rows`` for rows already mapped and parsed (row by row, so parsing a chunk of a
    source gives each row what parsing all of it would)."""
    # A CSV's column is typed per chunk: a number read as a number in one chunk and as text in
    # another (one with a word in it) is one value, and its rows may be exact duplicates.
    rows_read = len(mapped)
    repeated = _repeated_or_missing(parsed.frame[schema.TRANSACTION_ID])
    exact = exact_duplicates(mapped, parsed.frame[schema.TRANSACTION_ID], repeated)
    folded = reexported_copies(parsed, exact, repeated[0])
    keep = ~(exact | folded)
    if not keep.all():  # (no copies of the whole source when nothing repeats)
        mapped = mapped.loc[keep]
        parsed = Parsed(
            frame=parsed.frame.loc[keep],
            problems={
                rule: (column, mask[keep])
                for rule, (column, mask) in parsed.problems.items()
                if mask[keep].any()
            },
        )
    rows = mapped.index.to_numpy() + 1
    deduplicated = mapped.reset_index(drop=True)
    parsed = Parsed(parsed.frame.reset_index(drop=True), parsed.problems)
    violations = row_violations(parsed, params)
    reasons = _reasons(violations, len(deduplicated))
    rejected_mask = reasons != ""
    found = examples(violations, deduplicated, parsed.frame, rows, params.example_values)
    kept = parsed.frame.loc[~rejected_mask] if rejected_mask.any() else parsed.frame
    clean = _normalize(kept, source.text_ids)
    rejected = deduplicated.loc[rejected_mask].assign(
        **{REASON_COLUMN: reasons[rejected_mask], ROW_COLUMN: rows[rejected_mask]}
    )
    return Checked(
        clean=clean,
        rejected=rejected.reset_index(drop=True),
        rows_read=rows_read,
        rows_deduplicated=len(deduplicated),
        rows_folded=int(folded.sum()),
        rules={
            rule: RuleSummary(
                v.column, int(v.rows.sum()), found[rule], _words(rule, v, deduplicated)
            )
            for rule, v in violations.items()
        },
        labels=frozenset(clean[schema.TX_FRAUD].unique().tolist()),
    )


@dataclass(frozen=True)
class Summary:
    """What the checks of every partition add up to."""

    rows_read: int
    rows_deduplicated: int
    rows_folded: int
    rows_rejected: int
    rules: dict[str, RuleSummary]
    labels: frozenset


def summarize(parts: list[Checked] | list[Summary]) -> Summary:
    rules: dict[str, RuleSummary] = {}
    for part in parts:
        for rule, found in part.rules.items():
            seen = rules.get(rule)
            if seen is None:
                rules[rule] = found
            else:
                words = tuple(dict.fromkeys(seen.words + found.words))[:_WORDS]
                rules[rule] = RuleSummary(
                    found.column, seen.count + found.count, seen.examples + found.examples, words
                )
    return Summary(
        rows_read=sum(part.rows_read for part in parts),
        rows_deduplicated=sum(part.rows_deduplicated for part in parts),
        rows_folded=sum(part.rows_folded for part in parts),
        rows_rejected=sum(
            len(part.rejected) if isinstance(part, Checked) else part.rows_rejected
            for part in parts
        ),
        rules=rules,
        labels=frozenset().union(*(part.labels for part in parts)),
    )


def accept(summary: Summary, params: ValidateParams) -> list[str]:
    """Raise when the checks fail the source as a whole (no rows, too many rejected, one class);
    otherwise return the lines describing what was quarantined (logged as a warning)."""
    if summary.rows_read == 0:
        raise DataContractError("no rows: the input holds no transactions")
    lines = describe(summary.rules, params.example_values)
    if summary.rows_rejected / summary.rows_read > params.max_rejected_share:
        raise _too_many_rejected(
            lines,
            summary.rows_rejected,
            summary.rows_read,
            params,
            _hints(summary, params),
        )
    if lines:
        log.warning("quarantined %d rows:\n  %s", summary.rows_rejected, "\n  ".join(lines))
    if len(summary.labels) < 2:
        kept = summary.rows_deduplicated - summary.rows_rejected
        raise DataContractError(
            f"column tx_fraud holds one class only ({sorted(summary.labels)}) in all {kept} "
            "kept rows: a fraud model needs both frauds and legitimate transactions"
        )
    return lines


def finish_rejected(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """The rejected rows of every partition, in source order."""
    nonempty = [part for part in parts if len(part)] or parts[:1]
    rejected = pd.concat(nonempty, ignore_index=True).sort_values(ROW_COLUMN, kind="stable")
    return mixed_as_text(rejected).reset_index(drop=True)


def _repeated_or_missing(ids: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose transaction_id (parsed) another row shares, and rows without one."""
    missing = ids.isna().to_numpy()
    values = ids.to_numpy(dtype="int64", na_value=0)
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    repeats = np.zeros(len(ids), dtype=bool)
    same = ordered[1:] == ordered[:-1]
    repeats[order[1:][same]] = True
    repeats[order[:-1][same]] = True
    return repeats & ~missing, missing


def exact_duplicates(
    mapped: pd.DataFrame,
    ids: pd.Series,
    repeated: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Which rows repeat an earlier row value for value (``mixed_as_text``). Copies read the
    same transaction_id (``ids``, parsed), or none, so only rows whose id repeats or is missing
    are compared whole: hashing every column of every row costs more than the rows.
    ``repeated``: ``_repeated_or_missing(ids)`` when the caller has it."""
    repeats, missing = repeated if repeated is not None else _repeated_or_missing(ids)
    candidates = np.flatnonzero(repeats | missing)
    copies = np.zeros(len(mapped), dtype=bool)
    if len(candidates):
        rows = mixed_as_text(mapped.iloc[candidates])
        copies[candidates] = rows.duplicated(keep="first").to_numpy()
    return copies


def reexported_copies(parsed: Parsed, exact: np.ndarray, repeats: np.ndarray) -> np.ndarray:
    """Rows that are not exact copies but equal an earlier row once parsed (``40.770`` and
    ``40.77``, a ``T`` or a space in a timestamp, ``07`` and ``7``): the same transaction
    exported twice, folded into the first. Rows with a value that could not be parsed are
    compared as given only (two unreadable values are not the same value). ``repeats``: the
    rows whose transaction_id another row shares."""
    unreadable = np.zeros(len(exact), dtype=bool)
    for _, mask in parsed.problems.values():
        unreadable |= mask
    candidates = np.flatnonzero(repeats & ~unreadable & ~exact)
    folded = np.zeros(len(exact), dtype=bool)
    if len(candidates):
        rows = mixed_as_text(parsed.frame.iloc[candidates])
        folded[candidates] = rows.duplicated(keep="first").to_numpy()
    return folded


def mixed_as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """Source values may mix types in one column (a number, then a typo): keep them as text."""
    mixed = [c for c in frame.columns if pd.api.types.is_object_dtype(frame[c])]
    return frame.astype(dict.fromkeys(mixed, "string"))


def quality_report(
    summary: Summary, *, kept: int, frauds: int, first: pd.Timestamp, last: pd.Timestamp
) -> dict:
    return {
        "rows_read": summary.rows_read,
        "rows_kept": kept,
        "rows_rejected": summary.rows_rejected,
        "rejected_share": summary.rows_rejected / summary.rows_read,
        "exact_duplicates_dropped": summary.rows_read
        - summary.rows_deduplicated
        - summary.rows_folded,
        "reexports_folded": summary.rows_folded,
        "rejected_by_reason": {rule: found.count for rule, found in summary.rules.items()},
        "fraud_rate": frauds / kept,
        "first_tx_datetime": str(first),
        "last_tx_datetime": str(last),
    }


def validate_transactions(
    frame: pd.DataFrame, params: ValidateParams, *, source: SourceParams
) -> ValidationResult:
    """Map, parse and apply the contract to a source's rows (index: position in the source).
    Raises DataContractError for file-level problems, or when the share of rejected rows
    exceeds ``params.max_rejected_share`` (naming every rule broken). Rejected rows keep the
    values as the source gave them."""
    if frame.empty:
        raise DataContractError("no rows: the input holds no transactions")
    checked = check_rows(frame, params, source=source)
    summary = summarize([checked])
    accept(summary, params)
    clean = checked.clean
    report = quality_report(
        summary,
        kept=len(clean),
        frauds=int(clean[schema.TX_FRAUD].sum()),
        first=clean[schema.TX_DATETIME].iloc[0],
        last=clean[schema.TX_DATETIME].iloc[-1],
    )
    return ValidationResult(
        clean=clean, rejected=finish_rejected([checked.rejected]), report=report
    )
