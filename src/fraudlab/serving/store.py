"""The scoring service's history: the rows the online feature windows read, in an embedded SQLite
database behind a small interface (``HistoryStore``), so a networked store can replace it.

* A write is durable once the call returns: WAL journal, one transaction per call. With
  ``fsync=True`` (``synchronous=FULL``) every commit reaches the disk, so a power cut loses
  nothing acknowledged; with ``fsync=False`` (``NORMAL``) a commit reaches the operating system
  only, which survives a ``kill -9`` of the process but not a power cut.
* Several processes may share the file. ``exclusive()`` (a lock file beside the database)
  serialises whole read-compute-write cycles between them, so a transaction is scored with every
  transaction committed before it, whichever process took it.
* Rows are kept in arrival order (a sequence number), indexed by transaction id and by time.
  The features read the running state in memory (``fraudlab.serving.live``), kept current from
  the store's change log; per-customer and per-terminal SQL indexes would serve no query and
  cost most of a write (every insert lands on random leaf pages of both).
* Adding a transaction is idempotent: the same id with the same content is accepted again and
  changes nothing (clients retry); with other content it is a ``ConflictError``. The scoring
  service's answer is kept with the transaction, so a retry gets the same answer.
* Every row has a sequence number and every label change is logged, so a process keeping the
  running state in memory catches up with other processes' writes cheaply.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
import pandas as pd

from fraudlab.core import schema
from fraudlab.core.errors import UserError

log = logging.getLogger(__name__)

# SQLite's default limit on bound variables is 32766; stay well below it.
_CHUNK = 10_000


@dataclass(frozen=True)
class Transaction:
    transaction_id: int
    time: int  # nanoseconds since the epoch, naive UTC
    customer_id: int | str
    terminal_id: int | str
    amount: float

    def content(self) -> tuple:
        return (self.time, self.customer_id, self.terminal_id, self.amount)


# The store's schema version (SQLite's user_version): 1, rows and the label log (stores made
# before versioning read 0 and are treated as 1); 2, each label change's previous value and time.
SCHEMA_VERSION = 2


class StoreVersionError(UserError):
    """A store this fraudlab cannot read or migrate."""


class ConflictError(UserError):
    """A transaction id already stored with other content."""


class UnknownTransactionError(UserError):
    """A label for a transaction the store has never seen."""


class StaleError(Exception):
    """A shared store's log moved on since the round's features were computed: the round is
    computed again (see ``fraudlab.serving.redis_store``)."""


class Stored(NamedTuple):
    transaction: Transaction
    answer: str | None  # the scoring service's answer (JSON), if it scored the transaction


class Changes(NamedTuple):
    """Rows and label changes committed after a cursor, and the cursor after them."""

    rows: list[tuple]  # (transaction_id, time, customer_id, terminal_id, amount, fraud)
    labels: list[tuple]  # (row sequence, transaction_id, time, terminal_id, fraud)
    cursor: tuple[int, int]  # (last row sequence, last label sequence)


class HistoryStore(Protocol):
    """What the scoring service needs of a store: ``SQLiteHistory`` (one machine) or
    ``RedisHistory`` (shared by replicas)."""

    kind: str

    def add(
        self,
        transactions: Iterable[Transaction],
        answers: Iterable[str | None] | None = None,
        labels: Iterable[int | None] | None = None,
    ) -> list[bool]: ...

    def add_scored(
        self,
        transactions: list[Transaction],
        answers: list[str],
        *,
        prune_before: int,
        prune_limit: int,
        expect: tuple[int, int] | None = None,
    ) -> tuple[int, int]: ...

    def lookup(self, transaction_ids: Iterable[int]) -> dict[int, Stored]: ...

    def label(self, labels: Iterable[tuple[int, int]]) -> list[tuple[int, int, int]]: ...

    def changes(self, cursor: tuple[int, int]) -> Changes: ...

    def read(
        self, cursor: tuple[int, int], transaction_ids: Iterable[int]
    ) -> tuple[Changes, dict[int, Stored]]: ...

    def cursor(self) -> tuple[int, int]: ...

    def prune(self, *, before: int, limit: int | None = None) -> int: ...

    def count(self) -> int: ...

    def exclusive(self) -> contextlib.AbstractContextManager[None]: ...

    def newest_time(self) -> int | None: ...

    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    transaction_id INTEGER NOT NULL UNIQUE,
    time INTEGER NOT NULL,
    customer_id NOT NULL,
    terminal_id NOT NULL,
    amount REAL NOT NULL,
    fraud INTEGER CHECK (fraud IN (0, 1)),
    answer TEXT
);
CREATE INDEX IF NOT EXISTS by_time ON history (time);
CREATE TABLE IF NOT EXISTS label_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    transaction_id INTEGER NOT NULL,
    time INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS label_log_by_time ON label_log (time);
"""
# every label change is kept: the value it replaced and when (ms since the epoch, UTC); the
# latest counts. Added to the label log of stores made before it kept them.
_LABEL_HISTORY = (("fraud", "INTEGER"), ("previous", "INTEGER"), ("recorded_at", "INTEGER"))
_LABEL_TRIGGER = """
DROP TRIGGER IF EXISTS log_label;
CREATE TRIGGER log_label AFTER UPDATE OF fraud ON history
WHEN old.fraud IS NOT new.fraud
BEGIN
    INSERT INTO label_log (transaction_id, time, fraud, previous, recorded_at) VALUES (
        new.transaction_id, new.time, new.fraud, old.fraud,
        CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
    );
END;
"""
# the queries the service runs, each an index search (tests check the plans)
_LOOKUP = "SELECT {columns}, answer FROM history WHERE transaction_id IN ({marks})"
_NEW_ROWS = "SELECT seq, {columns}, coalesce(fraud, 0) FROM history WHERE seq > ? ORDER BY seq"
_NEW_LABELS = (
    "SELECT log.seq, h.seq, h.transaction_id, h.time, h.terminal_id, h.fraud "
    "FROM label_log AS log JOIN history AS h USING (transaction_id) "
    "WHERE log.seq > ? ORDER BY log.seq"
)
_OLDEST = "SELECT seq FROM history INDEXED BY by_time WHERE time <= ? ORDER BY time LIMIT ?"
_COLUMNS = "transaction_id, time, customer_id, terminal_id, amount"
_INSERT = f"INSERT INTO history ({_COLUMNS}, answer, fraud) VALUES (?, ?, ?, ?, ?, ?, ?)"


def _chunks(values: list, size: int = _CHUNK) -> Iterator[list]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _placeholders(n: int) -> str:
    return ",".join("?" * n)


class SQLiteHistory:
    """``HistoryStore`` in one SQLite file."""

    kind = "sqlite"

    def __init__(
        self,
        path: str | Path,
        *,
        fsync: bool = True,
        busy_timeout_ms: int = 10_000,
        autocheckpoint: bool = True,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # autocommit off by hand: each call is one explicit transaction
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute(f"PRAGMA synchronous = {'FULL' if fsync else 'NORMAL'}")
        self._db.execute("PRAGMA cache_size = -131072")  # 128 MiB of pages, not SQLite's 2 MiB
        if not autocheckpoint:
            # the owner runs ``Checkpointer``: a commit never waits for a checkpoint's fsyncs
            self._db.execute("PRAGMA wal_autocheckpoint = 0")
        self._lock = open(f"{self.path}.lock", "a+b")  # noqa: SIM115 (held until close)
        # the change-log end this connection knows, and SQLite's data_version then: while no
        # other connection commits, ``changes`` from that end has nothing to read
        self._known_end: tuple[int, int] | None = None
        self._data_version = -1
        with self.exclusive():
            self._migrate()

    def _migrate(self) -> None:
        """Create the schema, or bring an older store's up to ``SCHEMA_VERSION``; a store
        written by a newer fraudlab, or a database that is not a store, is refused."""
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreVersionError(
                f"{self.path}: its schema is version {version}, written by a newer fraudlab "
                f"(this one knows versions up to {SCHEMA_VERSION}): upgrade fraudlab, or "
                "serve from another store"
            )
        tables = {
            row[0]
            for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if tables - {"sqlite_sequence"} and "history" not in tables:
            raise StoreVersionError(
                f"{self.path}: a SQLite database, but not a fraudlab history store (tables "
                f"{sorted(tables)})"
            )
        self._db.executescript(_SCHEMA)
        if version < 2:  # 2 keeps each label change's previous value and time
            self._add_label_history()
        if version != SCHEMA_VERSION:
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            log.info("%s: store schema version %d -> %d", self.path, version, SCHEMA_VERSION)

    def _add_label_history(self) -> None:
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(label_log)")}
        missing = [(name, kind) for name, kind in _LABEL_HISTORY if name not in columns]
        if (
            missing
            or not self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = 'log_label' "
                "AND sql LIKE '%recorded_at%'"
            ).fetchone()
        ):
            script = "".join(f"ALTER TABLE label_log ADD COLUMN {n} {k};" for n, k in missing)
            self._db.executescript(f"BEGIN; {script} {_LABEL_TRIGGER} COMMIT;")

    def close(self) -> None:
        self._db.close()
        self._lock.close()

    def __enter__(self) -> SQLiteHistory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the store's lock across processes (it wakes a waiter at once, where SQLite's
        busy handler would sleep and retry)."""
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def lookup(self, transaction_ids: Iterable[int]) -> dict[int, Stored]:
        """The stored transactions among ``transaction_ids``, with their answers."""
        found = {}
        for chunk in _chunks(list(dict.fromkeys(transaction_ids))):
            rows = self._db.execute(
                _LOOKUP.format(columns=_COLUMNS, marks=_placeholders(len(chunk))), chunk
            )
            for *values, answer in rows:
                found[values[0]] = Stored(Transaction(*values), answer)
        return found

    def add(
        self,
        transactions: Iterable[Transaction],
        answers: Iterable[str | None] | None = None,
        labels: Iterable[int | None] | None = None,
    ) -> list[bool]:
        """Store transactions (and the service's answers, or their labels when seeding) in
        one durable write; per transaction, True if new, False if it was already stored with
        the same content. Nothing is stored if one conflicts."""
        with self._transaction():
            added, new = new_rows(self, transactions, answers, labels)
            self._db.executemany(_INSERT, [(*_row(tx), answer, label) for tx, answer, label in new])
            self._known_end = None  # the rows grew
        return added

    def label(self, labels: Iterable[tuple[int, int]]) -> list[tuple[int, int, int]]:
        """Record confirmed labels (transaction_id, 0 or 1) in one durable write; nothing is
        recorded if one is invalid or unknown. The latest label counts, and each change is
        kept in the label log; returns the changes of a label already given (transaction_id,
        from, to), e.g. an investigation reopened."""
        labels = checked_labels(labels)
        with self._transaction():
            known: dict[int, int | None] = {}
            for chunk in _chunks(list(dict.fromkeys(tx_id for tx_id, _ in labels))):
                known.update(
                    self._db.execute(
                        "SELECT transaction_id, fraud FROM history "
                        f"WHERE transaction_id IN ({_placeholders(len(chunk))})",
                        chunk,
                    ).fetchall()
                )
            unknown = [tx_id for tx_id, _ in labels if tx_id not in known]
            if unknown:
                raise UnknownTransactionError(
                    f"no stored transaction {unknown[0]}"
                    + (f" (and {len(unknown) - 1} more unknown)" if len(unknown) > 1 else "")
                )
            self._db.executemany(
                "UPDATE history SET fraud = ? WHERE transaction_id = ?",
                [(int(fraud), tx_id) for tx_id, fraud in labels],
            )
            self._known_end = None  # the label log grew
        changed = []
        for tx_id, fraud in labels:
            if known[tx_id] is not None and known[tx_id] != fraud:
                changed.append((tx_id, known[tx_id], fraud))
            known[tx_id] = fraud
        return changed

    def read(
        self, cursor: tuple[int, int], transaction_ids: Iterable[int]
    ) -> tuple[Changes, dict[int, Stored]]:
        """``changes(cursor)`` and ``lookup(transaction_ids)``: what a scoring round reads
        (the caller holds ``exclusive()``, so nothing is written between the two)."""
        return self.changes(cursor), self.lookup(transaction_ids)

    def changes(self, cursor: tuple[int, int]) -> Changes:
        """Rows added and labels changed after ``cursor`` (read in one snapshot)."""
        if cursor == self._known_end and self._data_version == self._version():
            return Changes(rows=[], labels=[], cursor=cursor)
        row_seq, label_seq = cursor
        self._db.execute("BEGIN")
        try:
            version = self._version()
            rows = self._db.execute(_NEW_ROWS.format(columns=_COLUMNS), (row_seq,)).fetchall()
            labels = self._db.execute(_NEW_LABELS, (label_seq,)).fetchall()
            last_label = self._db.execute("SELECT max(seq) FROM label_log").fetchone()[0]
        finally:
            self._db.execute("COMMIT")
        end = (rows[-1][0] if rows else row_seq, last_label or label_seq)
        self._known_end, self._data_version = end, version
        return Changes(
            rows=[row[1:] for row in rows], labels=[row[1:] for row in labels], cursor=end
        )

    def _version(self) -> int:
        # changes when another connection commits, never for this one's own commits
        return self._db.execute("PRAGMA data_version").fetchone()[0]

    def cursor(self) -> tuple[int, int]:
        """The change-log position after everything committed so far."""
        rows = self._db.execute("SELECT max(seq) FROM history").fetchone()[0]
        labels = self._db.execute("SELECT max(seq) FROM label_log").fetchone()[0]
        return (rows or 0, labels or 0)

    def add_scored(
        self,
        transactions: list[Transaction],
        answers: list[str],
        *,
        prune_before: int,
        prune_limit: int,
        expect: tuple[int, int] | None = None,
    ) -> tuple[int, int]:
        """The scorer's write: new transactions with their answers, and the oldest rows at or
        before ``prune_before`` (at most ``prune_limit``) deleted, in one durable transaction;
        the change-log position after it. The caller holds ``exclusive()`` (so the log cannot
        have moved past ``expect``) and has looked the ids up: a stored one still fails
        (ConflictError) and nothing is written."""
        del expect
        _require_finite(transactions)
        rows = [(*_row(tx), answer, None) for tx, answer in zip(transactions, answers, strict=True)]
        with self._transaction():
            try:
                self._db.executemany(_INSERT, rows)
            except sqlite3.IntegrityError as exc:
                raise ConflictError(f"a transaction_id is already stored ({exc})") from None
            self._delete_oldest(before=prune_before, limit=prune_limit)
            end = self.cursor()
        if self._known_end is not None and self._known_end[1] == end[1]:
            # no one else wrote meanwhile (the caller holds ``exclusive()``): only ours moved it
            self._known_end = end
        return end

    def prune(self, *, before: int, limit: int | None = None) -> int:
        """Delete rows at or before ``before`` (older than every window), at most ``limit`` of
        them (the oldest first: a service prunes a little per round, never stalling); the
        count deleted."""
        limit = -1 if limit is None else limit  # SQLite: a negative LIMIT is no limit
        with self._transaction():
            return self._delete_oldest(before=before, limit=limit)

    def _delete_oldest(self, *, before: int, limit: int) -> int:
        deleted = self._db.execute(
            f"DELETE FROM history WHERE seq IN ({_OLDEST})", (before, limit)
        ).rowcount
        self._db.execute(
            "DELETE FROM label_log WHERE seq IN "
            "(SELECT seq FROM label_log INDEXED BY label_log_by_time WHERE time <= ? "
            "ORDER BY time LIMIT ?)",
            (before, limit),
        )
        return deleted

    def count(self) -> int:
        return self._db.execute("SELECT count(*) FROM history").fetchone()[0]

    def newest_time(self) -> int | None:
        return self._db.execute("SELECT max(time) FROM history").fetchone()[0]

    def query_plans(self) -> dict[str, str]:
        """How SQLite runs the service's queries (for tests: index searches, never a scan)."""
        queries = {
            "lookup": (_LOOKUP.format(columns=_COLUMNS, marks="?, ?"), (1, 2)),
            "new rows": (_NEW_ROWS.format(columns=_COLUMNS), (0,)),
            "new labels": (_NEW_LABELS, (0,)),
            "oldest": (_OLDEST, (0, 10)),
        }
        return {
            name: " ".join(row[-1] for row in self._db.execute(f"EXPLAIN QUERY PLAN {sql}", args))
            for name, (sql, args) in queries.items()
        }

    def disk_bytes(self) -> int:
        """The database file and its write-ahead log, in bytes."""
        return sum(
            os.path.getsize(path)
            for path in (self.path, Path(f"{self.path}-wal"))
            if os.path.exists(path)
        )


class Checkpointer:
    """Copies the write-ahead log into the database from a thread of its own connection
    (``PRAGMA wal_checkpoint(PASSIVE)``: it never blocks readers or writers), so that the
    checkpoint's fsyncs stay off the scoring path; the store's connection then opens with
    ``autocheckpoint=False``."""

    def __init__(self, path: str | Path, *, every_seconds: float = 1.0) -> None:
        self.path = Path(path)
        self.every = every_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fraudlab-checkpoint", daemon=True)

    def start(self) -> Checkpointer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None)
        failing = False
        try:
            while not self._stop.wait(self.every):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:
                    if not failing:  # once per incident, not every second
                        log.warning("checkpoints of %s fail (%s); retrying", self.path, exc)
                    failing = True
                else:
                    if failing:
                        log.warning("checkpoints of %s succeed again", self.path)
                    failing = False
        finally:
            db.close()


def new_rows(
    store: HistoryStore,
    transactions: Iterable[Transaction],
    answers: Iterable[str | None] | None,
    labels: Iterable[int | None] | None,
) -> tuple[list[bool], list[tuple[Transaction, str | None, int | None]]]:
    """What ``add`` stores: per transaction, whether it is new, and the new ones with their
    answers and labels; a ConflictError for an id stored (or given earlier) with other
    content."""
    transactions = list(transactions)
    answers = [None] * len(transactions) if answers is None else list(answers)
    labels = [None] * len(transactions) if labels is None else list(labels)
    _require_finite(transactions)
    known = {
        tx_id: stored.transaction.content()
        for tx_id, stored in store.lookup(tx.transaction_id for tx in transactions).items()
    }
    added, new = [], []
    for tx, answer, label in zip(transactions, answers, labels, strict=True):
        stored = known.get(tx.transaction_id)
        if stored is None:
            known[tx.transaction_id] = tx.content()
            new.append((tx, answer, label))
        elif stored != tx.content():
            raise ConflictError(
                f"transaction_id {tx.transaction_id} is already stored with other content"
            )
        added.append(stored is None)
    return added, new


def checked_labels(labels: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """(transaction_id, 0 or 1) pairs; a UserError for any other label."""
    labels = [(int(tx_id), fraud) for tx_id, fraud in labels]
    for transaction_id, fraud in labels:
        if fraud not in (0, 1) or isinstance(fraud, bool):
            raise UserError(f"transaction {transaction_id}: tx_fraud {fraud} is not 0/1")
    return labels


def _require_finite(transactions: Iterable[Transaction]) -> None:
    for tx in transactions:
        if not math.isfinite(tx.amount):
            raise UserError(f"transaction {tx.transaction_id}: amount {tx.amount}")


def _row(tx: Transaction) -> tuple:
    return (tx.transaction_id, tx.time, tx.customer_id, tx.terminal_id, tx.amount)


def transactions_from_frame(frame: pd.DataFrame) -> list[Transaction]:
    """Canonical rows as store transactions (exact ids, times in nanoseconds)."""
    times = frame[schema.TX_DATETIME].to_numpy(dtype="datetime64[ns]").view(np.int64)
    return [
        Transaction(int(tx_id), int(time), id_value(customer), id_value(terminal), float(amount))
        for tx_id, time, customer, terminal, amount in zip(
            frame[schema.TRANSACTION_ID].to_numpy(dtype=np.int64),
            times,
            frame[schema.CUSTOMER_ID].to_numpy(),
            frame[schema.TERMINAL_ID].to_numpy(),
            frame[schema.TX_AMOUNT].to_numpy(dtype=np.float64),
            strict=True,
        )
    ]


def id_value(value: object) -> int | str:
    """An id as SQLite stores it: a Python int (numpy ints are not bound) or text."""
    return int(value) if isinstance(value, int | np.integer) else str(value)


def seed(store: HistoryStore, frame: pd.DataFrame, *, labels_known_until: int | None) -> None:
    """Load canonical rows into the store, new rows with their labels in the same write;
    labels of rows at or before ``labels_known_until`` (None: every label in the frame)."""
    transactions = transactions_from_frame(frame)
    labels: list[int | None] = [None] * len(transactions)
    if schema.TX_FRAUD in frame:
        times = frame[schema.TX_DATETIME].to_numpy(dtype="datetime64[ns]").view(np.int64)
        known = frame[schema.TX_FRAUD].notna().to_numpy()
        if labels_known_until is not None:
            known = known & (times <= labels_known_until)
        values = frame[schema.TX_FRAUD].to_numpy()
        labels = [int(value) if ok else None for value, ok in zip(values, known, strict=True)]
    with store.exclusive():
        added = store.add(transactions, labels=labels)
        # rows stored before keep their place; their labels are recorded as changes
        relabel = [
            (tx.transaction_id, label)
            for tx, label, new in zip(transactions, labels, added, strict=True)
            if not new and label is not None
        ]
        if relabel:
            store.label(relabel)


def open_history(location: str, *, fsync: bool, autocheckpoint: bool = True) -> HistoryStore:
    """The store at ``location``: a Redis URL (shared by replicas) or a SQLite file."""
    # imported here: the Redis store builds on this module's types
    from fraudlab.serving.redis_store import RedisHistory, is_redis_url

    if is_redis_url(location):
        return RedisHistory(location)
    return SQLiteHistory(location, fsync=fsync, autocheckpoint=autocheckpoint)
