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

from fraudlab import schema
from fraudlab.errors import DataContractError
from fraudlab.ingest import (
    LEADING_ZEROS,
    NON_FINITE_AMOUNT,
    NOT_AN_INTEGER,
    Parsed,
    map_columns,
    parse_columns,
    require_canonical,
)
from fraudlab.params import SourceParams, ValidateParams

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
    order = {column: i for i, column in enumerate(schema.REQUIRED_COLUMNS)}
    return dict(sorted(violations.items(), key=lambda item: order[item[1].column]))


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


def describe(
    violations: dict[str, Violation],
    source: pd.DataFrame,
    parsed: pd.DataFrame,
    rows: np.ndarray,
    limit: int,
) -> list[str]:
    """One line per broken rule: column, rule, row count and the first values as given (with
    their row numbers in the source, and what they were read as)."""
    lines = []
    for rule, violation in violations.items():
        hit = np.flatnonzero(violation.rows)[:limit]
        examples = ", ".join(
            _example(row, raw, value)
            for row, raw, value in zip(
                rows[hit],
                source[violation.column].iloc[hit].tolist(),
                parsed[violation.column].iloc[hit].tolist(),
                strict=True,
            )
        )
        count = int(violation.rows.sum())
        lines.append(f"column {violation.column}, rule '{rule}': {count} rows, e.g. {examples}")
    return lines


def _normalize(frame: pd.DataFrame, text_ids: list[str]) -> pd.DataFrame:
    out = frame.astype(
        {
            schema.TRANSACTION_ID: "int64",
            **{c: "int64" for c in (schema.CUSTOMER_ID, schema.TERMINAL_ID) if c not in text_ids},
            schema.TX_DATETIME: schema.DATETIME_DTYPE,
            schema.TX_AMOUNT: "float64",
            schema.TX_FRAUD: "int8",
        }
    )
    return out.sort_values(schema.SORT_KEYS, kind="stable").reset_index(drop=True)


def _hints(violations: dict[str, Violation], params: ValidateParams) -> str:
    """What usually causes a file-wide failure, when the violations look like it."""
    hints = []
    dates = violations.get(date_rule(params))
    if dates is not None and dates.rows.all():
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
    return "".join(f"\n{hint}" for hint in hints)


def _too_many_rejected(
    lines: list[str], n_rejected: int, n_read: int, params: ValidateParams, hints: str
) -> DataContractError:
    return DataContractError(
        f"{n_rejected} of {n_read} rows ({n_rejected / n_read:.2%}) break the data contract, "
        f"more than validate.max_rejected_share ({params.max_rejected_share:.2%}):\n  "
        + "\n  ".join(lines)
        + hints
        + "\nNothing was written. Fix these rows in the source, map or parse them differently "
        "(params.yaml: source), or allow more rejections (validate.max_rejected_share)."
    )


def validate_transactions(
    frame: pd.DataFrame, params: ValidateParams, *, source: SourceParams
) -> ValidationResult:
    """Map, parse and apply the contract to a source's rows (index: position in the source).
    Raises DataContractError for file-level problems, or when the share of rejected rows
    exceeds ``params.max_rejected_share`` (naming every rule broken). Rejected rows keep the
    values as the source gave them."""
    if frame.empty:
        raise DataContractError("no rows: the input holds no transactions")
    mapped = map_columns(frame, source.columns)
    require_canonical(list(mapped.columns))
    n_read = len(mapped)
    deduplicated = mapped.drop_duplicates(keep="first")
    rows = deduplicated.index.to_numpy() + 1
    deduplicated = deduplicated.reset_index(drop=True)

    parsed = parse_columns(deduplicated, source)
    violations = row_violations(parsed, params)
    reasons = _reasons(violations, len(deduplicated))
    rejected_mask = reasons != ""
    n_rejected = int(rejected_mask.sum())
    lines = describe(violations, deduplicated, parsed.frame, rows, params.example_values)
    if n_rejected / n_read > params.max_rejected_share:
        raise _too_many_rejected(lines, n_rejected, n_read, params, _hints(violations, params))
    if lines:
        log.warning("quarantined %d rows:\n  %s", n_rejected, "\n  ".join(lines))

    clean = _normalize(parsed.frame.loc[~rejected_mask], source.text_ids)
    labels = clean[schema.TX_FRAUD].unique()
    if len(labels) < 2:
        raise DataContractError(
            f"column tx_fraud holds one class only ({labels.tolist()}) in all {len(clean)} kept "
            "rows: a fraud model needs both frauds and legitimate transactions"
        )
    rejected = deduplicated.loc[rejected_mask].assign(
        **{REASON_COLUMN: reasons[rejected_mask], ROW_COLUMN: rows[rejected_mask]}
    )
    # Source values may mix types in one column (a number, then a typo): keep them as text.
    mixed = [c for c in rejected.columns if pd.api.types.is_object_dtype(rejected[c])]
    rejected = rejected.astype(dict.fromkeys(mixed, "string"))
    report = {
        "rows_read": n_read,
        "rows_kept": len(clean),
        "rows_rejected": n_rejected,
        "rejected_share": n_rejected / n_read,
        "exact_duplicates_dropped": n_read - len(deduplicated),
        "rejected_by_reason": {rule: int(v.rows.sum()) for rule, v in violations.items()},
        "fraud_rate": float(clean[schema.TX_FRAUD].mean()),
        "first_tx_datetime": str(clean[schema.TX_DATETIME].iloc[0]),
        "last_tx_datetime": str(clean[schema.TX_DATETIME].iloc[-1]),
    }
    return ValidationResult(clean=clean, rejected=rejected.reset_index(drop=True), report=report)
