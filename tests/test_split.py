"""Time split: periods, the delay gap, known-card removal and prequential folds."""

from __future__ import annotations

import datetime as dt

import pytest

from conftest import transactions
from fraudlab.core.params import SplitParams
from fraudlab.modeling.split import (
    SplitError,
    fold_train_start,
    frame_reader,
    prequential_folds,
    prequential_test_end,
    prequential_test_parts,
    prequential_test_train_start,
    train_test_split,
)

START = dt.date(2018, 4, 10)  # day 0; train days 0-1, gap day 2, test days 3-4


def _frame():
    return transactions(
        [
            (1, "2018-04-09 12:00", "old", 1, 1.0, 1),  # fraud before day 0: not "known"
            (2, "2018-04-10 12:00", "c1", 1, 1.0, 1),  # day 0 fraud: c1 known from the start
            (3, "2018-04-11 12:00", "c2", 1, 1.0, 0),
            (4, "2018-04-12 12:00", "c2", 1, 1.0, 1),  # gap day 2: known from test day 4
            (5, "2018-04-13 12:00", "c1", 1, 1.0, 0),
            (6, "2018-04-13 12:00", "c2", 1, 1.0, 0),  # day 3: 3 - 1 - 1 = 1 < 2, c2 kept
            (7, "2018-04-13 13:00", "c3", 1, 1.0, 1),  # test-day fraud: never known in the test
            (8, "2018-04-14 12:00", "c2", 1, 1.0, 0),  # day 4: c2's fraud on day 2 is known
            (9, "2018-04-14 12:00", "c3", 1, 1.0, 0),
            (10, "2018-04-14 12:00", "old", 1, 1.0, 0),
            (11, "2018-04-15 00:00", "c4", 1, 1.0, 0),  # day 5: after the test period
        ]
    )


def test_split_periods_gap_and_known_cards():
    train, test = train_test_split(
        _frame(), train_start=START, train_days=2, delay_days=1, test_days=2
    )
    assert train["transaction_id"].tolist() == [2, 3]
    assert test["transaction_id"].tolist() == [6, 7, 9, 10]


def test_split_fails_clearly_when_a_period_is_empty():
    with pytest.raises(SplitError, match="no transactions in the training period"):
        train_test_split(
            _frame(), train_start=dt.date(2017, 1, 1), train_days=2, delay_days=1, test_days=2
        )
    with pytest.raises(SplitError, match="no transactions in the test period"):
        train_test_split(
            _frame(), train_start=dt.date(2018, 4, 13), train_days=1, delay_days=5, test_days=2
        )


def test_prequential_folds_end_before_training_and_step_back_one_test_period(small_transactions):
    params = SplitParams(
        train_start=dt.date(2018, 5, 10), train_days=7, test_days=7, n_folds=3, test_folds=1
    )
    assert [fold_train_start(params, delay_days=7, fold=k) for k in range(3)] == [
        dt.date(2018, 4, 26),
        dt.date(2018, 4, 19),
        dt.date(2018, 4, 12),
    ]
    folds = prequential_folds(small_transactions, params, delay_days=7)
    valid = folds[folds["role"] == "valid"].groupby("fold")["tx_datetime"]
    # fold 0 validates on the test split's training period, whose labels training uses anyway
    assert valid.min()[0] >= dt.datetime(2018, 5, 10)
    assert valid.max()[0] < dt.datetime(2018, 5, 17)
    assert (valid.min().dt.normalize().diff().dropna() == -dt.timedelta(days=7)).all()


def test_prequential_folds_refuse_to_start_before_the_data(small_transactions):
    params = SplitParams(
        train_start=dt.date(2018, 5, 10), train_days=7, test_days=7, n_folds=5, test_folds=1
    )
    with pytest.raises(SplitError, match="validation fold 4"):
        prequential_folds(small_transactions, params, delay_days=7)


def test_the_prequential_test_steps_forward_from_the_test_split(small_transactions):
    """Fold 0 is the test split; each next fold trains and tests one test period later, its
    test period cleaned of the cards known by then, as the test split's is."""
    params = SplitParams(
        train_start=dt.date(2018, 4, 10), train_days=7, test_days=7, n_folds=1, test_folds=3
    )
    parts = list(
        prequential_test_parts(
            frame_reader(small_transactions), params, delay_days=7,
            span=(small_transactions["tx_datetime"].min(), small_transactions["tx_datetime"].max()),
        )
    )  # fmt: skip
    assert [(train, test) for train, test, _, _ in parts] == [
        ("2018-04-10..2018-04-16", "2018-04-24..2018-04-30"),
        ("2018-04-17..2018-04-23", "2018-05-01..2018-05-07"),
        ("2018-04-24..2018-04-30", "2018-05-08..2018-05-14"),
    ]
    expected_train, expected_test = train_test_split(
        small_transactions, train_start=dt.date(2018, 4, 17), train_days=7, delay_days=7,
        test_days=7,
    )  # fmt: skip
    _, _, train, test = parts[1]
    assert train["transaction_id"].tolist() == expected_train["transaction_id"].tolist()
    assert test["transaction_id"].tolist() == expected_test["transaction_id"].tolist()
    starts = [prequential_test_train_start(params, fold=k) for k in range(3)]
    assert [str(day) for day in starts] == [p[0].split("..")[0] for p in parts]
    assert prequential_test_end(params, delay_days=7) == dt.date(2018, 5, 15)
