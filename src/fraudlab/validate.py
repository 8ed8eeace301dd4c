"""The data contract: a source's columns are mapped and parsed onto the canonical schema, then
file-level problems stop the run, row-level problems (including values that could not be parsed)
move the row to quarantine with its reasons, and exact duplicates are dropped and counted."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fraudlab import schema
from fraudlab.errors import DataContractError
from fraudlab.ingest import Parsed, map_columns, parse_columns
from fraudlab.params import SourceParams, ValidateParams

REASON_COLUMN = "rejection_reason"


@dataclass(frozen=True)
class ValidationResult:
    clean: pd.DataFrame
    rejected: pd.DataFrame
    report: dict


def _check_columns(frame: pd.DataFrame) -> None:
    missing = [c for c in schema.REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise DataContractError(
            f"missing required column(s) {missing}; columns present: {list(frame.columns)} "
            "(map differently named columns with source.columns in params.yaml)"
        )


def _row_violations(parsed: Parsed) -> dict[str, np.ndarray]:
    """Boolean mask per broken rule; a row may break several. A value that could not be parsed
    counts as unparseable, not also as null."""
    frame = parsed.frame
    rules = {f"unparseable {c}": mask for c, mask in parsed.unparseable.items()}
    for column in schema.REQUIRED_COLUMNS:
        unparseable = parsed.unparseable.get(column, np.zeros(len(frame), dtype=bool))
        rules[f"null {column}"] = frame[column].isna().to_numpy() & ~unparseable
    rules["negative tx_amount"] = (frame[schema.TX_AMOUNT] < 0).to_numpy()
    rules["tx_fraud not 0/1"] = (
        frame[schema.TX_FRAUD].notna() & ~frame[schema.TX_FRAUD].isin([0, 1])
    ).to_numpy(dtype=bool)
    ids = frame[schema.TRANSACTION_ID]
    rules["transaction_id repeated with different content"] = (
        ids.notna() & ids.duplicated(keep=False)
    ).to_numpy(dtype=bool)
    return {rule: mask for rule, mask in rules.items() if mask.any()}


def _reasons(violations: dict[str, np.ndarray], n_rows: int) -> np.ndarray:
    """Every rule a row breaks, joined with '; ' ('' for a row that breaks none)."""
    reasons = np.full(n_rows, "", dtype=object)
    for rule, mask in violations.items():
        reasons[mask] = np.where(reasons[mask] == "", rule, reasons[mask] + "; " + rule)
    return reasons


def _examples(frame: pd.DataFrame, mask: np.ndarray, limit: int) -> list:
    return frame.loc[mask, schema.TRANSACTION_ID].head(limit).tolist()


def _normalize(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.astype(
        {
            schema.TRANSACTION_ID: "int64",
            schema.TX_DATETIME: schema.DATETIME_DTYPE,
            schema.TX_AMOUNT: "float64",
            schema.TX_FRAUD: "int8",
        }
    )
    return out.sort_values(schema.SORT_KEYS, kind="stable").reset_index(drop=True)


def validate_transactions(
    frame: pd.DataFrame, params: ValidateParams, *, source: SourceParams
) -> ValidationResult:
    """Map, parse and apply the contract to a source's rows. Raises DataContractError for
    file-level problems, or when the share of rejected rows exceeds
    ``params.max_rejected_share`` (naming every rule broken). Rejected rows keep the values as
    the source gave them."""
    if frame.empty:
        raise DataContractError("no rows: the input holds no transactions")
    mapped = map_columns(frame, source.columns)
    _check_columns(mapped)
    n_read = len(mapped)
    deduplicated = mapped.drop_duplicates(keep="first").reset_index(drop=True)
    n_exact_duplicates = n_read - len(deduplicated)

    parsed = parse_columns(deduplicated, source)
    violations = _row_violations(parsed)
    reasons = _reasons(violations, len(deduplicated))
    rejected_mask = reasons != ""
    share = rejected_mask.sum() / n_read
    if share > params.max_rejected_share:
        details = "; ".join(
            f"rule '{rule}': {mask.sum()} rows, e.g. transaction_id "
            f"{_examples(deduplicated, mask, params.example_values)}"
            for rule, mask in violations.items()
        )
        raise DataContractError(
            f"{rejected_mask.sum()} of {n_read} rows ({share:.2%}) break the contract, above "
            f"the allowed {params.max_rejected_share:.2%}: {details}"
        )

    clean = _normalize(parsed.frame.loc[~rejected_mask])
    labels = clean[schema.TX_FRAUD].unique()
    if len(labels) < 2:
        raise DataContractError(
            f"column tx_fraud holds one class only ({labels.tolist()}) in all {len(clean)} kept "
            "rows: a fraud model needs both frauds and legitimate transactions"
        )
    rejected = deduplicated.loc[rejected_mask].assign(**{REASON_COLUMN: reasons[rejected_mask]})
    # Source values may mix types in one column (a number, then a typo): keep them as text.
    mixed = [c for c in rejected.columns if pd.api.types.is_object_dtype(rejected[c])]
    rejected = rejected.astype(dict.fromkeys(mixed, "string"))
    report = {
        "rows_read": n_read,
        "rows_kept": len(clean),
        "rows_rejected": int(rejected_mask.sum()),
        "rejected_share": float(share),
        "exact_duplicates_dropped": n_exact_duplicates,
        "rejected_by_reason": {rule: int(mask.sum()) for rule, mask in violations.items()},
        "fraud_rate": float(clean[schema.TX_FRAUD].mean()),
        "first_tx_datetime": str(clean[schema.TX_DATETIME].iloc[0]),
        "last_tx_datetime": str(clean[schema.TX_DATETIME].iloc[-1]),
    }
    return ValidationResult(clean=clean, rejected=rejected.reset_index(drop=True), report=report)
