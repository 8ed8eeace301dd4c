"""The canonical transaction schema every data source is mapped onto (SPEC section 2)."""

from __future__ import annotations

TRANSACTION_ID = "transaction_id"
TX_DATETIME = "tx_datetime"
CUSTOMER_ID = "customer_id"
TERMINAL_ID = "terminal_id"
TX_AMOUNT = "tx_amount"
TX_FRAUD = "tx_fraud"

REQUIRED_COLUMNS = (TRANSACTION_ID, TX_DATETIME, CUSTOMER_ID, TERMINAL_ID, TX_AMOUNT, TX_FRAUD)

# Canonical order of rows everywhere in the pipeline: by time, ties broken by transaction id.
SORT_KEYS = [TX_DATETIME, TRANSACTION_ID]

DATETIME_DTYPE = "datetime64[ns]"
