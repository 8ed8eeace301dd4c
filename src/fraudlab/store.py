"""The scoring service's history: the rows the online feature windows read, in an embedded SQLite
database behind a small interface (``HistoryStore``), so a networked store can replace it.

* A write is durable once the call returns: WAL journal with ``synchronous=FULL`` (a ``kill -9``
  or a power cut loses nothing acknowledged), one transaction per call.
* Several processes may share the file (WAL readers never block the writer; writers wait for
  each other up to ``busy_timeout``).
* A customer's or a terminal's rows in a time range are read through an index on
  (customer or terminal, time, id): no scan, whatever the size of the history.
* Adding a transaction is idempotent: the same id with the same content is accepted again and
  changes nothing (clients retry); with other content it is a ``ConflictError``.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from fraudlab import schema
from fraudlab.errors import UserError
from fraudlab.features import History, history_needed, transaction_features
from fraudlab.params import FeaturesParams


@dataclass(frozen=True)
class Transaction:
    transaction_id: int
    time: int  # nanoseconds since the epoch, naive UTC
    customer_id: int | str
    terminal_id: int | str
    amount: float


class ConflictError(UserError):
    """A transaction id already stored with other content."""


class UnknownTransactionError(UserError):
    """A label for a transaction the store has never seen."""


class HistoryStore(Protocol):
    def add(self, transactions: Iterable[Transaction]) -> list[bool]: ...

    def label(self, labels: Iterable[tuple[int, int]]) -> None: ...

    def customer_rows(self, customer_id: int | str, *, after: int, until: int) -> History: ...

    def terminal_rows(self, terminal_id: int | str, *, after: int, until: int) -> History: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS history (
    transaction_id INTEGER PRIMARY KEY,
    time INTEGER NOT NULL,
    customer_id NOT NULL,
    terminal_id NOT NULL,
    amount REAL NOT NULL,
    fraud INTEGER CHECK (fraud IN (0, 1))
);
CREATE INDEX IF NOT EXISTS by_customer ON history (customer_id, time, transaction_id);
CREATE INDEX IF NOT EXISTS by_terminal ON history (terminal_id, time, transaction_id);
"""
_ROWS = (
    "SELECT time, transaction_id, {value} FROM history INDEXED BY {index} "
    "WHERE {column} = ? AND time > ? AND time <= ? ORDER BY time, transaction_id"
)


def _same(stored: tuple, transaction: Transaction) -> bool:
    return stored == (
        transaction.time,
        transaction.customer_id,
        transaction.terminal_id,
        transaction.amount,
    )


class SQLiteHistory:
    """``HistoryStore`` in one SQLite file."""

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 10_000) -> None:
        self.path = Path(path)
        # autocommit off by hand: each call is one explicit transaction
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SQLiteHistory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, transactions: Iterable[Transaction]) -> list[bool]:
        """Store transactions in one durable write; per transaction, True if new, False if it
        was already stored with the same content. Nothing is stored if one conflicts."""
        added = []
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for tx in transactions:
                if not math.isfinite(tx.amount):
                    raise UserError(f"transaction {tx.transaction_id}: amount {tx.amount}")
                cursor = self._db.execute(
                    "INSERT INTO history (transaction_id, time, customer_id, terminal_id, amount) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (transaction_id) DO NOTHING",
                    (tx.transaction_id, tx.time, tx.customer_id, tx.terminal_id, tx.amount),
                )
                if cursor.rowcount == 0:
                    stored = self._db.execute(
                        "SELECT time, customer_id, terminal_id, amount FROM history "
                        "WHERE transaction_id = ?",
                        (tx.transaction_id,),
                    ).fetchone()
                    if not _same(stored, tx):
                        raise ConflictError(
                            f"transaction_id {tx.transaction_id} is already stored with other "
                            "content"
                        )
                added.append(cursor.rowcount == 1)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return added

    def label(self, labels: Iterable[tuple[int, int]]) -> None:
        """Record confirmed labels (transaction_id, 0 or 1) in one durable write."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for transaction_id, fraud in labels:
                if fraud not in (0, 1):
                    raise UserError(f"transaction {transaction_id}: tx_fraud {fraud} is not 0/1")
                cursor = self._db.execute(
                    "UPDATE history SET fraud = ? WHERE transaction_id = ?",
                    (int(fraud), transaction_id),
                )
                if cursor.rowcount == 0:
                    raise UnknownTransactionError(f"no stored transaction {transaction_id}")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _rows(self, column: str, key: int | str, *, after: int, until: int, value: str) -> History:
        index = "by_customer" if column == "customer_id" else "by_terminal"
        found = self._db.execute(
            _ROWS.format(value=value, index=index, column=column), (key, after, until)
        ).fetchall()
        if not found:
            empty = np.zeros(0, dtype=np.int64)
            return History(empty, empty, np.zeros(0, dtype=np.float64))
        times, ids, values = zip(*found, strict=True)
        return History(
            np.array(times, dtype=np.int64),
            np.array(ids, dtype=np.int64),
            np.array(values, dtype=np.float64),
        )

    def customer_rows(self, customer_id: int | str, *, after: int, until: int) -> History:
        """The customer's rows with after < time <= until, amounts as values."""
        return self._rows("customer_id", customer_id, after=after, until=until, value="amount")

    def terminal_rows(self, terminal_id: int | str, *, after: int, until: int) -> History:
        """The terminal's rows with after < time <= until, labels known so far (0 if not)."""
        return self._rows(
            "terminal_id", terminal_id, after=after, until=until, value="coalesce(fraud, 0)"
        )

    def prune(self, *, before: int) -> int:
        """Delete rows at or before ``before`` (older than every window); the count deleted."""
        self._db.execute("BEGIN IMMEDIATE")
        deleted = self._db.execute("DELETE FROM history WHERE time <= ?", (before,)).rowcount
        self._db.execute("COMMIT")
        return deleted

    def count(self) -> int:
        return self._db.execute("SELECT count(*) FROM history").fetchone()[0]

    def query_plan(self, column: str) -> str:
        """How SQLite reads one key's rows (for tests: an index search, never a scan)."""
        index = "by_customer" if column == "customer_id" else "by_terminal"
        sql = _ROWS.format(value="amount", index=index, column=column)
        return " ".join(row[-1] for row in self._db.execute(f"EXPLAIN QUERY PLAN {sql}", (1, 0, 1)))


def transactions_from_frame(frame: pd.DataFrame) -> list[Transaction]:
    """Canonical rows as store transactions (exact ids, times in nanoseconds)."""
    times = frame[schema.TX_DATETIME].to_numpy(dtype="datetime64[ns]").view(np.int64)
    return [
        Transaction(int(tx_id), int(time), _key(customer), _key(terminal), float(amount))
        for tx_id, time, customer, terminal, amount in zip(
            frame[schema.TRANSACTION_ID].to_numpy(dtype=np.int64),
            times,
            frame[schema.CUSTOMER_ID].to_numpy(),
            frame[schema.TERMINAL_ID].to_numpy(),
            frame[schema.TX_AMOUNT].to_numpy(dtype=np.float64),
            strict=True,
        )
    ]


def _key(value: object) -> int | str:
    """An id as SQLite stores it: a Python int (numpy ints are not bound) or text."""
    return int(value) if isinstance(value, int | np.integer) else str(value)


def seed(store: SQLiteHistory, frame: pd.DataFrame, *, labels_known_until: int | None) -> None:
    """Load canonical rows into the store; labels of rows at or before ``labels_known_until``
    (None: every label in the frame)."""
    store.add(transactions_from_frame(frame))
    if schema.TX_FRAUD not in frame:
        return
    times = frame[schema.TX_DATETIME].to_numpy(dtype="datetime64[ns]").view(np.int64)
    known = frame[schema.TX_FRAUD].notna().to_numpy()
    if labels_known_until is not None:
        known = known & (times <= labels_known_until)
    store.label(
        zip(
            frame.loc[known, schema.TRANSACTION_ID].astype("int64").tolist(),
            frame.loc[known, schema.TX_FRAUD].astype("int64").tolist(),
            strict=True,
        )
    )


def features_from_store(
    store: HistoryStore, transaction: Transaction, *, params: FeaturesParams
) -> np.ndarray:
    """One transaction's features (``feature_names`` order) from the rows its windows need:
    its customer's last days and its terminal's rows up to the label delay."""
    customer_span, terminal_span = (span.value for span in history_needed(params))
    delay = pd.Timedelta(days=params.label_delay_days).value
    return transaction_features(
        time=transaction.time,
        transaction_id=transaction.transaction_id,
        amount=transaction.amount,
        customer=store.customer_rows(
            transaction.customer_id,
            after=transaction.time - customer_span,
            until=transaction.time,
        ),
        terminal=store.terminal_rows(
            transaction.terminal_id,
            after=transaction.time - terminal_span,
            until=transaction.time - delay,
        ),
        params=params,
    )
