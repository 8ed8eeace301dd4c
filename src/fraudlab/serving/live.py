"""The scoring service's online state: the running feature state (``fraudlab.features.state``)
of every card and terminal in the history store, kept current from the store's change log.

The store stays the truth. This copy is built from it at start (rows in (time, id) order),
takes in what other processes commit before every round, and takes a round's new transactions
only once they are committed (``commit``); a write that fails replays the touched cards and
terminals without them (``rollback``).
"""

from __future__ import annotations

import numpy as np

from fraudlab.core.params import FeaturesParams
from fraudlab.features.state import States, bulk_cards, bulk_places
from fraudlab.serving.store import Changes, HistoryStore, Transaction

# past this many rows at once (a store loaded at start), states are built in bulk
_BULK_ROWS = 10_000
# rows transposed per slice: one ``zip(*rows)`` over a whole store is a single call holding the
# GIL for about a second, long enough, on a busy machine, for a supervisor's liveness check of a
# worker that is loading to fail
_TRANSPOSE_ROWS = 20_000


def _columns(rows: list[tuple]) -> tuple:
    """(ids, times, customers, terminals, amounts, labels) of change-log rows."""
    parts = [list(zip(*rows[at : at + _TRANSPOSE_ROWS], strict=True))
             for at in range(0, len(rows), _TRANSPOSE_ROWS)]  # fmt: skip

    def numbers(column: int, dtype: type) -> np.ndarray:
        return np.concatenate([np.array(part[column], dtype=dtype) for part in parts])

    def objects(column: int) -> list:
        return [value for part in parts for value in part[column]]

    return (
        numbers(0, np.int64),
        numbers(1, np.int64),
        objects(2),
        objects(3),
        numbers(4, np.float64),
        numbers(5, np.int64),
    )


class LiveState:
    def __init__(self, store: HistoryStore, params: FeaturesParams) -> None:
        self.store = store
        self.params = params
        self.states = States(params)
        self.cursor = (0, 0)
        self.newest: int | None = None
        self._newest_before: int | None = None
        self._sweep: list = []

    @property
    def cards(self) -> dict:
        return self.states.cards

    @property
    def places(self) -> dict:
        return self.states.places

    def refresh(self, changes: Changes | None = None) -> None:
        """Take in every row and label committed since the last refresh (by any process), or
        ``changes``, read from the store at ``cursor``."""
        if changes is None:
            changes = self.store.changes(self.cursor)
        if not self.cards and len(changes.rows) > _BULK_ROWS:
            self._load(changes.rows)  # the whole store, at start
        else:
            # rows in (time, id) order: each card and terminal then appends in constant time,
            # unless another process committed an earlier transaction after a later one
            for tx_id, time, customer, terminal, amount, fraud in sorted(
                changes.rows, key=lambda row: (row[1], row[0])
            ):
                # scored by another process (or seeded): the state moves, no features needed
                self.states.take(time, tx_id, customer, terminal, amount, fraud)
                if self.newest is None or time > self.newest:
                    self.newest = time
        for row_seq, tx_id, time, terminal, fraud in changes.labels:
            # a row read in this refresh already carries its label (the same snapshot)
            place = self.places.get(terminal)
            if row_seq <= self.cursor[0] and place is not None:
                place.set_label(tx_id, time, fraud)
        self.cursor = changes.cursor

    def _load(self, rows: list[tuple]) -> None:
        """Build every state at once with array operations (what appending the rows one by
        one gives, tested, in a fraction of the time)."""
        ids, times, customers, terminals, amounts, labels = _columns(rows)
        self.states.cards = bulk_cards(customers, times, ids, amounts, self.params)
        self.states.places = bulk_places(terminals, times, ids, labels, self.params)
        self.newest = int(times.max())

    def _add(self, tx: Transaction, *, label: int | None) -> dict[str, float]:
        if self.newest is None or tx.time > self.newest:
            self.newest = tx.time
        return self.states.add(tx.time, tx.transaction_id, tx.customer_id, tx.terminal_id,
                               tx.amount, label)  # fmt: skip

    def score(self, new: list[Transaction]) -> tuple[np.ndarray, int]:
        """The features of new transactions (in (time, id) order, each seeing the ones before
        it), taken into the state at once; ``commit`` or ``rollback`` after the write. Also the
        number of them later than their card's newest row."""
        matrix = np.empty((len(new), len(self.states.names)))
        self._newest_before = self.newest
        late = 0
        for k, tx in enumerate(new):
            card = self.cards.get(tx.customer_id)
            late += card is not None and not card.is_next(tx.time, tx.transaction_id)
            matrix[k] = self.states.row(self._add(tx, label=None))
        return matrix, late

    def commit(self, cursor: tuple[int, int]) -> None:
        """The round's rows are in the store: the change log's position after them."""
        self.cursor = cursor

    def rollback(self, new: list[Transaction]) -> None:
        """The round's write failed: replay its cards and terminals without its rows."""
        self.newest = self._newest_before  # the data clock does not move either
        self.states.without(
            {tx.customer_id for tx in new},
            {tx.terminal_id for tx in new},
            {tx.transaction_id for tx in new},
        )

    def forget(self, *, before: int, budget: int | None = None) -> None:
        """Drop rows at or before ``before`` that no window holds: in every card and terminal,
        or (``budget``) in the next few of a round-robin sweep, so a service spreads the work;
        an emptied one is forgotten."""
        if budget is None:
            keys = [(self.cards, key) for key in self.cards]
            keys += [(self.places, key) for key in self.places]
        else:
            if not self._sweep:
                self._sweep.extend((self.cards, key) for key in self.cards)
                self._sweep.extend((self.places, key) for key in self.places)
            keys = [self._sweep.pop() for _ in range(min(budget, len(self._sweep)))]
        for states, key in keys:
            state = states.get(key)
            if state is None:
                continue
            state.forget(before)
            if not len(state.times):
                del states[key]

    def size(self) -> int:
        return sum(len(card.times) for card in self.cards.values())
