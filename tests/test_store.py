"""The history stores (SQLite, Redis): a replay through them gives the batch features, writes are
idempotent and durable through kill -9, and each refuses a schema it cannot read."""

from __future__ import annotations

import collections
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from conftest import transactions
from fraudlab.core import schema
from fraudlab.core.errors import UserError
from fraudlab.features.batch import build_features
from fraudlab.features.names import feature_names
from fraudlab.serving.live import LiveState
from fraudlab.serving.store import (
    SCHEMA_VERSION,
    Checkpointer,
    ConflictError,
    HistoryStore,
    SQLiteHistory,
    StoreVersionError,
    Transaction,
    UnknownTransactionError,
    open_history,
    seed,
    transactions_from_frame,
)
from helpers import exact_columns, features_with

DAY = 86_400 * 10**9


@pytest.fixture
def store(store_location):
    with open_history(store_location, fsync=True) as opened:
        yield opened


@pytest.fixture
def sqlite_store(tmp_path):
    with SQLiteHistory(tmp_path / "history.db") as opened:
        yield opened


@pytest.mark.slow  # every transaction of the small data, one at a time
def test_a_replay_through_the_store_gives_every_batch_feature(
    store_location, small_transactions, features_params
):
    """Seed the store with the days before a cut (labels known up to cut - delay), then replay
    every later transaction in time order as a service would see it: a label arrives once the
    clock has passed its transaction's time plus the delay, each transaction is scored from the
    store, then stored. Every feature equals the batch's (counts exactly, means within 1e-9)."""
    batch = build_features(small_transactions, features_params)
    names = feature_names(features_params)
    times = batch[schema.TX_DATETIME].to_numpy(dtype="datetime64[ns]").view(np.int64)
    cut = times[0] + 30 * DAY
    delay = features_params.label_delay_days * DAY
    labels = batch[schema.TX_FRAUD].to_numpy()
    with open_history(store_location, fsync=False) as store:
        seed(store, batch[times < cut], labels_known_until=cut - delay)
        live = LiveState(store, features_params)
        ids = batch[schema.TRANSACTION_ID].to_numpy()
        # rows whose label has not arrived yet, in time order (labels arrive in that order)
        pending = collections.deque(np.flatnonzero((times < cut) & (times > cut - delay)))
        replayed = np.flatnonzero(times >= cut)
        online = []
        for tx, i in zip(transactions_from_frame(batch.iloc[replayed]), replayed, strict=True):
            due = []
            while pending and times[pending[0]] + delay <= tx.time:
                due.append(pending.popleft())
            store.label((int(ids[j]), int(labels[j])) for j in due)
            live.refresh()
            online.append(live.score([tx])[0][0])
            store.add([tx])
            live.commit(store.cursor())
            pending.append(i)
    expected = batch.iloc[replayed][names].to_numpy(dtype=np.float64)
    online = np.array(online)
    exact = exact_columns(names)
    assert len(replayed) > 1000
    np.testing.assert_array_equal(online[:, exact], expected[:, exact])
    np.testing.assert_allclose(online, expected, rtol=0, atol=1e-9)


def _live(store: HistoryStore) -> LiveState:
    live = LiveState(store, features_with())
    live.refresh()
    return live


def _tx(tx_id: int, amount: float = 10.0, customer: int | str = 1) -> Transaction:
    return Transaction(tx_id, 1_000 * DAY + tx_id, customer, 7, amount)


def test_the_same_transaction_twice_is_accepted_and_stored_once(store):
    assert store.add([_tx(1), _tx(2)]) == [True, True]
    assert store.add([_tx(1)]) == [False]
    assert store.count() == 2


def test_a_conflicting_id_stores_nothing_of_its_batch(store):
    store.add([_tx(1)])
    with pytest.raises(ConflictError, match="transaction_id 1 is already stored with other"):
        store.add([_tx(2), _tx(1, amount=99.0)])
    assert store.count() == 1  # transaction 2 was rolled back with the batch


def test_labels_need_a_known_transaction_and_a_0_or_1(store):
    store.add([_tx(1)])
    with pytest.raises(UnknownTransactionError, match="no stored transaction 5"):
        store.label([(1, 1), (5, 0)])
    with pytest.raises(UserError, match="tx_fraud 2 is not 0/1"):
        store.label([(1, 2)])
    live = _live(store)
    assert live.places[7].labels.tolist() == [0]
    store.label([(1, 1)])
    live.refresh()  # the label arrives through the change log
    assert live.places[7].labels.tolist() == [1]
    assert _live(store).places[7].labels.tolist() == [1]


def test_text_ids_and_integer_ids_are_kept_apart(store):
    store.add([_tx(1, customer=7), _tx(2, customer="7")])
    live = _live(store)
    assert live.cards[7].ids.tolist() == [1]
    assert live.cards["7"].ids.tolist() == [2]


def test_the_service_queries_search_an_index_and_never_scan(sqlite_store):
    for name, plan in sqlite_store.query_plans().items():
        assert "SEARCH" in plan, (name, plan)
        assert "SCAN" not in plan, (name, plan)


def test_another_connection_writes_reach_the_copy_in_memory(store, store_location):
    live = _live(store)
    with open_history(store_location, fsync=True) as other:  # as another process would
        other.add([_tx(1), _tx(2, customer=2)])
        other.label([(1, 1)])
    live.refresh()
    assert live.cards[1].ids.tolist() == [1]
    assert live.places[7].labels.tolist() == [1, 0]
    assert live.cursor == store.cursor()


def test_pruning_drops_only_rows_older_than_the_windows(store):
    frame = transactions(
        [(1, "2018-04-01 10:00", 1, 1, 1.0, 0), (2, "2018-05-01 10:00", 1, 1, 2.0, 0)]
    )
    seed(store, frame, labels_known_until=None)
    assert store.prune(before=pd.Timestamp("2018-04-15").value, limit=10) == 1
    assert sorted(store.lookup([1, 2])) == [2]
    live = _live(store)
    live.forget(before=pd.Timestamp("2018-04-15").value, budget=2)
    assert live.cards[1].ids.tolist() == [2]


WRITER = """
import sys
from fraudlab.serving.store import SQLiteHistory, Transaction
store = SQLiteHistory(sys.argv[1])
for i in range(1, 100_000):
    store.add([Transaction(i, i, i % 13, i % 7, float(i))])
    print(i, flush=True)
"""


def test_every_acknowledged_write_survives_kill_9(tmp_path):
    path = tmp_path / "history.db"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    acknowledged = [int(writer.stdout.readline()) for _ in range(300)]
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    with SQLiteHistory(path) as reopened:
        stored = reopened.count()
        ids = _live(reopened).cards[0].ids.tolist()
        assert stored >= len(acknowledged)  # the last write may have landed unacknowledged
        assert ids == [i for i in range(1, stored + 1) if i % 13 == 0]  # each once, in order
        assert reopened.add([Transaction(10**6, 10**6, 0, 0, 1.0)]) == [True]  # and continues


def test_the_checkpointer_moves_the_log_into_the_database(tmp_path):
    path = tmp_path / "history.db"
    with SQLiteHistory(path, fsync=False, autocheckpoint=False) as store:
        empty = path.stat().st_size
        for start in range(1, 3_000, 100):  # many commits, far past SQLite's 1,000-page default
            store.add([_tx(i, amount=float(i)) for i in range(start, start + 100)])
        assert path.stat().st_size == empty  # everything still in the log
        checkpointer = Checkpointer(path, every_seconds=0.01).start()
        try:
            deadline = time.monotonic() + 30
            while path.stat().st_size == empty and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            checkpointer.stop()
        assert path.stat().st_size > empty
        assert store.count() == 3_000


def test_the_change_log_is_skipped_only_while_no_one_else_wrote(store, store_location):
    live = _live(store)
    with store.exclusive():
        cursor = store.add_scored([_tx(1)], ['{"a": 1}'], prune_before=0, prune_limit=10)
    assert cursor == store.cursor()
    live.commit(cursor)
    assert store.changes(cursor).rows == []  # its own write, already in the copy
    store.label([(1, 1)])  # the same connection: the label log grew, and must be read
    labelled = store.changes(cursor)
    assert [row[1] for row in labelled.labels] == [1]
    assert store.changes(labelled.cursor) == ([], [], labelled.cursor)
    with open_history(store_location, fsync=True) as other:
        other.add([_tx(2, customer=2)])
    changes = store.changes(labelled.cursor)
    assert [row[0] for row in changes.rows] == [2]  # another connection's row is never missed


def test_a_scored_write_that_conflicts_stores_nothing(store):
    store.add([_tx(1)])
    with store.exclusive(), pytest.raises(ConflictError, match="already stored"):
        store.add_scored([_tx(2), _tx(1)], ["{}", "{}"], prune_before=0, prune_limit=10)
    assert store.count() == 1


def test_a_scored_write_prunes_in_the_same_transaction(sqlite_store):
    store = sqlite_store
    store.add([_tx(1), _tx(2), _tx(3)])  # at times 1000 days + 1, 2 and 3 ns
    with store.exclusive():
        store.add_scored([_tx(4)], ["{}"], prune_before=1_000 * DAY + 2, prune_limit=5)
    assert sorted(store.lookup([1, 2, 3, 4])) == [3, 4]


def test_a_label_changed_keeps_its_history_and_the_latest_counts(tmp_path):
    with SQLiteHistory(tmp_path / "labels.db", fsync=False) as store:
        store.add([Transaction(1, 10, 1, 1, 5.0), Transaction(2, 20, 1, 1, 6.0)])
        assert store.label([(1, 1), (2, 0)]) == []  # first labels: nothing changed
        assert store.label([(1, 0)]) == [(1, 1, 0)]
        assert store.label([(1, 1), (2, 0)]) == [(1, 0, 1)]  # the same label again: no change
        history = store._db.execute(
            "SELECT transaction_id, previous, fraud, recorded_at FROM label_log ORDER BY seq"
        ).fetchall()
        latest = store._db.execute("SELECT fraud FROM history WHERE transaction_id = 1")
        assert latest.fetchone() == (1,)
    assert [row[:3] for row in history] == [(1, None, 1), (2, None, 0), (1, 1, 0), (1, 0, 1)]
    assert all(row[3] > 1_700_000_000_000 for row in history)  # ms since the epoch, now


def test_a_store_made_before_label_history_gains_it(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript(  # the schema before label history and versioning
            "CREATE TABLE history (seq INTEGER PRIMARY KEY AUTOINCREMENT, transaction_id "
            "INTEGER NOT NULL UNIQUE, time INTEGER NOT NULL, customer_id NOT NULL, terminal_id "
            "NOT NULL, amount REAL NOT NULL, fraud INTEGER CHECK (fraud IN (0, 1)), answer TEXT);"
            "CREATE TABLE label_log (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
            "transaction_id INTEGER NOT NULL, time INTEGER NOT NULL);"
        )
    with SQLiteHistory(path, fsync=False) as store:
        store.add([Transaction(1, 10, 1, 1, 5.0)])
        store.label([(1, 1)])
        assert store.label([(1, 0)]) == [(1, 1, 0)]
        rows = store._db.execute("SELECT previous, fraud FROM label_log ORDER BY seq").fetchall()
        version = store._db.execute("PRAGMA user_version").fetchone()[0]
    assert rows == [(None, 1), (1, 0)]
    assert version == SCHEMA_VERSION  # migrated from before versioning (0)


def test_the_schema_is_versioned_and_a_store_it_cannot_read_is_refused(tmp_path):
    with SQLiteHistory(tmp_path / "new.db") as store:
        assert store._db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    future = tmp_path / "future.db"
    with sqlite3.connect(future) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreVersionError, match=r"written by a newer fraudlab"):
        SQLiteHistory(future)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE invoices (id INTEGER)")
    with pytest.raises(StoreVersionError, match=r"not a fraudlab history store"):
        SQLiteHistory(other)
    with sqlite3.connect(other) as db:  # and nothing was added to it
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert tables == {"invoices"}
