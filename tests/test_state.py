"""The running state (constant work per transaction) against the batch kernels, its definition:
every group, ties, labels arriving or changing after their transaction, and forgetting."""

from __future__ import annotations

import copy as copy_module

import numpy as np
import pandas as pd
import pytest

from conftest import transactions
from fraudlab.core import schema
from fraudlab.features.batch import build_features
from fraudlab.features.names import GROUPS, feature_names
from fraudlab.features.state import (
    CardState,
    States,
    TerminalState,
    bulk_cards,
    bulk_places,
    calendar,
    plan_of,
    replay,
    with_row,
)
from helpers import exact_columns, features_with

DAY = 86_400 * 10**9


def _assert_same(online: pd.DataFrame, batch: pd.DataFrame, names: list[str]) -> None:
    # the batch returns its rows in (time, id) order, the replay in the frame's
    online = online.loc[batch[schema.TRANSACTION_ID].to_numpy()]
    got = online[names].to_numpy()
    expected = batch[names].to_numpy(dtype=np.float64)
    exact = exact_columns(names)
    np.testing.assert_array_equal(got[:, exact], expected[:, exact])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("groups", [[], ["amount_ratios", "known_labels"], list(GROUPS)],
                         ids=["handbook", "default", "every group"])  # fmt: skip
def test_the_running_state_gives_the_batch_features(small_transactions, groups):
    params = features_with(groups=groups)
    online = replay(small_transactions, params).set_index(small_transactions[schema.TRANSACTION_ID])
    _assert_same(online, build_features(small_transactions, params), feature_names(params))


def test_same_time_rows_follow_the_id_order_and_window_edges_are_open():
    frame = transactions(
        [
            (3, "2018-04-01 10:00", 1, 1, 30.0, 0),
            (1, "2018-04-01 10:00", 1, 1, 10.0, 1),
            (2, "2018-04-01 10:00", 1, 2, 20.0, 0),
            (4, "2018-04-02 10:00", 1, 1, 40.0, 0),  # exactly a day later: the first leave
            (5, "2018-04-08 10:00", 2, 1, 50.0, 0),  # a week after 1 and 3: their labels in
            (6, "2018-04-08 10:00", 1, 1, 60.0, 0),
        ]
    )
    params = features_with(groups=list(GROUPS), customer_windows_days=[1, 7],
                           terminal_windows_days=[1, 7])  # fmt: skip
    online = replay(frame, params).set_index(frame[schema.TRANSACTION_ID])
    _assert_same(online, build_features(frame, params), feature_names(params))


def _replay_with_labels_posted(frame: pd.DataFrame, params, *, late_by: int) -> list[dict]:
    """The running state fed as the service feeds it: transactions in order without labels,
    each label posted ``late_by`` ns after it is due (or before, if negative)."""
    plan = plan_of(params)
    rows = frame.sort_values([schema.TX_DATETIME, schema.TRANSACTION_ID])
    times = rows[schema.TX_DATETIME].to_numpy(dtype="datetime64[ns]").view(np.int64)
    delay = params.label_delay_days * DAY
    cards, places, pending, out = {}, {}, [], []
    for time, row in zip(times.tolist(), rows.itertuples(index=False), strict=True):
        while pending and pending[0][0] + delay + late_by <= time:
            when, terminal, tx_id, fraud = pending.pop(0)
            assert places[terminal].set_label(tx_id, when, fraud)
        card = cards.setdefault(row.customer_id, CardState(plan))
        place = places.setdefault(row.terminal_id, TerminalState(params))
        values = card.append(time, row.transaction_id, row.tx_amount)
        values |= place.append(time, row.transaction_id, None)
        out.append(values)
        pending.append((time, row.terminal_id, row.transaction_id, int(row.tx_fraud)))
    return out


def test_labels_posted_when_due_give_the_batch_features(small_transactions):
    params = features_with(groups=list(GROUPS))
    posted = _replay_with_labels_posted(small_transactions, params, late_by=0)
    batch = build_features(small_transactions, params).sort_values(
        [schema.TX_DATETIME, schema.TRANSACTION_ID]
    )
    terminal = [name for name in feature_names(params) if name.startswith("terminal_id")]
    got = pd.DataFrame(posted)[terminal].to_numpy()
    np.testing.assert_array_equal(got, batch[terminal].to_numpy(dtype=np.float64))


def test_labels_posted_late_or_changed_move_the_windows_and_runs_exactly():
    """A label known only after its row passed the frontier, then changed twice: each time the
    terminal's windows and runs equal a fresh replay with the labels as they stand."""
    params = features_with(groups=["known_labels"], terminal_windows_days=[1, 7],
                           label_delay_days=1)  # fmt: skip
    rows = [(n, n * DAY // 4, n % 2) for n in range(1, 40)]  # four a day, every other a fraud
    place = TerminalState(params)
    for tx_id, time, _ in rows:
        place.append(time, tx_id, None)
    now = rows[-1][1] + DAY // 8
    labels = {tx_id: fraud for tx_id, _, fraud in rows}
    time_of = {tx_id: time for tx_id, time, _ in rows}
    for tx_id, fraud in labels.items():
        assert place.set_label(tx_id, time_of[tx_id], fraud)
    for changed in ([(35, 0)], [(35, 1), (33, 0)], [(20, 1)]):
        for tx_id, fraud in changed:
            place.set_label(tx_id, time_of[tx_id], fraud)
            labels[tx_id] = fraud
        fresh = TerminalState(params)
        for tx_id, time, _ in rows:
            fresh.append(time, tx_id, labels[tx_id])
        probe = 10_000 + len(labels)
        assert _probe(place, now, probe) == _probe(fresh, now, probe)
    assert not place.set_label(999, time_of[20], 1)  # never seen


def _probe(place: TerminalState, time: int, tx_id: int) -> dict:
    """The features a transaction at ``time`` would get, without keeping it."""
    copy = TerminalState.__new__(TerminalState)
    for slot in TerminalState.__slots__:
        value = getattr(place, slot)
        setattr(copy, slot, copy_module.copy(value))
    return copy.append(time, tx_id, None)


def test_forgetting_old_rows_changes_no_feature(small_transactions):
    """Rows are dropped once older than every window (as retention does), the features stay."""
    params = features_with(groups=list(GROUPS), amount_windows_days=[7, 30])
    plan = plan_of(params)
    rows = small_transactions.sort_values([schema.TX_DATETIME, schema.TRANSACTION_ID])
    times = rows[schema.TX_DATETIME].to_numpy(dtype="datetime64[ns]").view(np.int64)
    kept = {"cards": {}, "places": {}}
    pruned = {"cards": {}, "places": {}}
    for time, row in zip(times.tolist(), rows.itertuples(index=False), strict=True):
        answers = []
        for states in (kept, pruned):
            card = states["cards"].setdefault(row.customer_id, CardState(plan))
            place = states["places"].setdefault(row.terminal_id, TerminalState(params))
            values = card.append(time, row.transaction_id, row.tx_amount)
            values |= place.append(time, row.transaction_id, int(row.tx_fraud))
            answers.append(values)
        assert answers[0] == answers[1]
        if row.transaction_id % 50:
            continue  # forget every 50 transactions
        for card in pruned["cards"].values():
            card.forget(time - 31 * DAY)
        for place in pruned["places"].values():
            place.forget(time - 38 * DAY)
    held = sum(len(card) for card in pruned["cards"].values())
    assert held < sum(len(card) for card in kept["cards"].values())


def test_a_late_transaction_is_replayed_into_place_and_gets_the_batch_features(
    small_transactions,
):
    """Every 40th transaction arrives 7 places late. A row whose earlier rows have all arrived
    (the late ones included) gets the batch's features; the card or terminal is replayed around
    a late one, and what follows is exact again."""
    params = features_with(groups=list(GROUPS))
    plan = plan_of(params)
    names = feature_names(params)
    ordered = small_transactions.sort_values([schema.TX_DATETIME, schema.TRANSACTION_ID])
    batch = build_features(small_transactions, params)
    expected_of = dict(zip(batch[schema.TRANSACTION_ID].tolist(),
                           batch[names].to_numpy(dtype=np.float64), strict=True))  # fmt: skip
    rows = list(ordered.itertuples(index=False))
    times = ordered[schema.TX_DATETIME].to_numpy(dtype="datetime64[ns]").view(np.int64).tolist()
    arrival = list(range(len(rows)))
    for late in range(40, len(rows) - 8, 40):
        arrival.remove(late)
        arrival.insert(late + 7, late)
    cards, places, late_ones, got, expected = {}, {}, 0, [], []
    arrived_before = -1  # every row up to this position in order has arrived
    seen = set()
    for position in arrival:
        row = rows[position]
        time = times[position]
        card = cards.get(row.customer_id) or CardState(plan)
        place = places.get(row.terminal_id) or TerminalState(params)
        late_ones += not (card.is_next(time, row.transaction_id)
                          and place.is_next(time, row.transaction_id))  # fmt: skip
        cards[row.customer_id], values = with_row(card, time, row.transaction_id, row.tx_amount)
        places[row.terminal_id], more = with_row(place, time, row.transaction_id,
                                                   int(row.tx_fraud))  # fmt: skip
        seen.add(position)
        while arrived_before + 1 in seen:
            arrived_before += 1
        if arrived_before >= position:
            values |= more | {"tx_amount": row.tx_amount}
            values["tx_during_weekend"], values["tx_during_night"] = calendar(
                time, params.night_end_hour
            )
            got.append([values[n] for n in names])
            expected.append(expected_of[row.transaction_id])
    assert late_ones > 20  # cards or terminals that had moved on
    assert len(got) > len(rows) * 0.8
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)


def test_states_built_in_bulk_equal_states_built_one_row_at_a_time(small_transactions):
    """A service loads its store in bulk: the states must be those appending gives, so the
    transactions after the load get the same features either way."""
    params = features_with(groups=list(GROUPS))
    plan = plan_of(params)
    rows = small_transactions.sort_values([schema.TX_DATETIME, schema.TRANSACTION_ID])
    loaded, later = rows.iloc[: len(rows) * 4 // 5], rows.iloc[len(rows) * 4 // 5 :]
    times = loaded[schema.TX_DATETIME].to_numpy(dtype="datetime64[ns]").view(np.int64)
    ids = loaded[schema.TRANSACTION_ID].to_numpy(dtype=np.int64)
    shuffled = np.random.default_rng(0).permutation(len(loaded))  # bulk takes any order
    bulk = (
        bulk_cards(loaded[schema.CUSTOMER_ID].to_numpy()[shuffled].tolist(), times[shuffled],
                   ids[shuffled], loaded[schema.TX_AMOUNT].to_numpy()[shuffled], params),
        bulk_places(loaded[schema.TERMINAL_ID].to_numpy()[shuffled].tolist(), times[shuffled],
                    ids[shuffled], loaded[schema.TX_FRAUD].to_numpy()[shuffled], params),
    )  # fmt: skip
    appended: tuple[dict, dict] = ({}, {})
    for time, row in zip(times.tolist(), loaded.itertuples(index=False), strict=True):
        appended[0].setdefault(row.customer_id, CardState(plan)).append(
            time, row.transaction_id, row.tx_amount
        )
        appended[1].setdefault(row.terminal_id, TerminalState(params)).append(
            time, row.transaction_id, int(row.tx_fraud)
        )
    later_times = later[schema.TX_DATETIME].to_numpy(dtype="datetime64[ns]").view(np.int64)
    answers = []
    for states in (bulk, appended):
        cards, places = states
        out = []
        for time, row in zip(later_times.tolist(), later.itertuples(index=False), strict=True):
            card = cards.setdefault(row.customer_id, None) or CardState(plan)
            place = places.setdefault(row.terminal_id, None) or TerminalState(params)
            cards[row.customer_id], places[row.terminal_id] = card, place
            values = card.append(time, row.transaction_id, row.tx_amount)
            values |= place.append(time, row.transaction_id, int(row.tx_fraud))
            out.append([values[name] for name in sorted(values)])
        answers.append(np.array(out))
    assert len(answers[0]) > 1000
    np.testing.assert_allclose(answers[0], answers[1], rtol=0, atol=1e-9)
    counts = [k for k, name in enumerate(sorted(values)) if "nb_" in name or "run_length" in name]
    np.testing.assert_array_equal(answers[0][:, counts], answers[1][:, counts])


def test_rows_taken_without_features_leave_the_state_adding_them_leaves(small_transactions):
    """A row another process scored is taken in without its features (in order, or late: a
    replay that computes no features): every later transaction's features are the ones it gets
    when every row is added with its features."""
    params = features_with(groups=list(GROUPS))
    ordered = small_transactions.sort_values([schema.TX_DATETIME, schema.TRANSACTION_ID])
    rows = list(ordered.itertuples(index=False))
    times = ordered[schema.TX_DATETIME].to_numpy(dtype="datetime64[ns]").view(np.int64).tolist()
    split = len(rows) // 2
    arrival = list(range(split))
    for late in range(30, split - 8, 30):  # some taken late
        arrival.remove(late)
        arrival.insert(late + 5, late)

    def fill(states: States, order: list[int], *, take: bool) -> None:
        for k in order:
            row = rows[k]
            args = (times[k], row.transaction_id, row.customer_id, row.terminal_id,
                    row.tx_amount, int(row.tx_fraud))  # fmt: skip
            if take:
                states.take(*args)
            else:
                states.add(*args)

    taken, added = States(params), States(params)
    fill(taken, arrival, take=True)
    fill(added, arrival, take=False)
    for k in range(split, len(rows)):
        row = rows[k]
        args = (times[k], row.transaction_id, row.customer_id, row.terminal_id, row.tx_amount,
                int(row.tx_fraud))  # fmt: skip
        assert taken.row(taken.add(*args)) == added.row(added.add(*args))
