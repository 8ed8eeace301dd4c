"""The data contract for canonical transactions: file-level checks stop the run, row-level
problems move the row to quarantine with its reason, exact duplicates are dropped and counted."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fraudlab import schema
from fraudlab.errors import UserError
from fraudlab.params import ValidateParams

REASON_COLUMN = "rejection_reason"


class DataContractError(UserError):
    """The input breaks a rule that row quarantine cannot fix; the message says which."""


@dataclass(frozen=True)
class ValidationResult:
    clean: pd.DataFrame
    rejected: pd.DataFrame
    report: dict


def _check_columns(frame: pd.DataFrame) -> None:
    if frame.empty:
        raise DataContractError("no rows: the input holds no transactions")
    missing = [c for c in schema.REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise DataContractError(
            f"missing required column(s) {missing}; columns present: {list(frame.columns)}"
        )
    expected = {
        schema.TRANSACTION_ID: pd.api.types.is_integer_dtype,
        schema.TX_DATETIME: pd.api.types.is_datetime64_any_dtype,
        schema.TX_AMOUNT: pd.api.types.is_numeric_dtype,
        schema.TX_FRAUD: pd.api.types.is_numeric_dtype,
    }
    wrong = {c: str(frame[c].dtype) for c, ok in expected.items() if not ok(frame[c].dtype)}
    if wrong:
        raise DataContractError(
            f"wrong dtype for column(s) {wrong} ({len(frame)} rows): expected transaction_id "
            "integer, tx_datetime datetime, tx_amount and tx_fraud numeric"
        )


def _row_violations(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Boolean mask per broken rule; a row may break several."""
    rules = {f"null {c}": frame[c].isna().to_numpy() for c in schema.REQUIRED_COLUMNS}
    rules["negative tx_amount"] = (frame[schema.TX_AMOUNT] < 0).to_numpy()
    rules["tx_fraud not 0/1"] = (
        frame[schema.TX_FRAUD].notna() & ~frame[schema.TX_FRAUD].isin([0, 1])
    ).to_numpy()
    ids = frame[schema.TRANSACTION_ID]
    rules["transaction_id repeated with different content"] = ids.duplicated(keep=False).to_numpy()
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
            schema.TX_DATETIME: schema.DATETIME_DTYPE,
            schema.TX_AMOUNT: "float64",
            schema.TX_FRAUD: "int8",
        }
    )
    return out.sort_values(schema.SORT_KEYS, kind="stable").reset_index(drop=True)


def validate_transactions(frame: pd.DataFrame, params: ValidateParams) -> ValidationResult:
    """Apply the contract. Raises DataContractError for file-level problems, or when the share of
    rejected rows exceeds ``params.max_rejected_share`` (naming every rule broken)."""
    _check_columns(frame)
    n_read = len(frame)
    deduplicated = frame.drop_duplicates(keep="first").reset_index(drop=True)
    n_exact_duplicates = n_read - len(deduplicated)

    violations = _row_violations(deduplicated)
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

    clean = _normalize(deduplicated.loc[~rejected_mask])
    labels = clean[schema.TX_FRAUD].unique()
    if len(labels) < 2:
        raise DataContractError(
            f"column tx_fraud holds one class only ({labels.tolist()}) in all {len(clean)} kept "
            "rows: a fraud model needs both frauds and legitimate transactions"
        )
    rejected = deduplicated.loc[rejected_mask].assign(**{REASON_COLUMN: reasons[rejected_mask]})
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
