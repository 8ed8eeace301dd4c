"""How many days the protocol needs, against the data's own span: dates computed by hand."""

from __future__ import annotations

import datetime as dt

import pandas as pd

from fraudlab.core.params import SplitParams
from fraudlab.modeling.span import Span, check_span, span_needed
from helpers import features_with

# the committed protocol: 7 days train from 2018-07-25, 7 days delay, 7 days test, 4 folds
SPLIT = SplitParams(
    train_start=dt.date(2018, 7, 25), train_days=7, test_days=7, n_folds=4, test_folds=1
)
FEATURES = features_with(groups=["amount_ratios", "known_labels"], amount_windows_days=[7, 30, 90])


def test_the_committed_protocol_reaches_back_to_march():
    # earliest fold trains from 07-25 - (7 delay + 7 test + 3 x 7 further folds) = 06-20; the
    # amount windows look back 90 days from there: 03-22; the test period ends 08-14 inclusive
    assert span_needed(SPLIT, FEATURES) == Span(
        history_from=dt.date(2018, 3, 22),
        folds_from=dt.date(2018, 6, 20),
        test_until=dt.date(2018, 8, 15),
    )


def test_the_prequential_test_reaches_to_the_handbooks_last_test_week():
    # 4 test periods from 08-08: the last one trains 08-15..08-21 and tests 08-29..09-04, the
    # handbook's test weeks after model selection (2018-08-08..09-04)
    four = SPLIT.model_copy(update={"test_folds": 4})
    assert span_needed(four, FEATURES).test_until == dt.date(2018, 9, 5)
    found = check_span(
        pd.Timestamp("2018-01-01"), pd.Timestamp("2018-08-31 12:00"), split=four, features=FEATURES
    )
    (error,) = found.errors
    assert error.startswith(
        "the data end on 2018-08-31 but the test periods of the prequential test run to "
        "2018-09-04: move split.train_start 4 days earlier, or lower split.test_folds or "
        "split.test_days"
    )
    # none: the test period alone, as with one
    none = SPLIT.model_copy(update={"test_folds": 0})
    assert span_needed(none, FEATURES) == span_needed(SPLIT, FEATURES)


def test_the_handbooks_features_need_only_their_longest_window():
    # 15 features: the terminal windows reach back delay 7 + 30 = 37 days: 06-20 - 37 = 05-14
    assert span_needed(SPLIT, features_with(groups=[])).history_from == dt.date(2018, 5, 14)


def test_data_from_april_warn_that_the_first_windows_are_partial():
    found = check_span(
        pd.Timestamp("2018-04-01 00:00:01"),
        pd.Timestamp("2018-09-30 23:58:51"),
        split=SPLIT,
        features=FEATURES,
    )
    assert found.errors == []
    (warning,) = found.warnings
    assert "2018-04-01, 10 days after 2018-03-22" in warning
    assert "the protocol needs 146 days" in warning  # 03-22 .. 08-15
    # folds from 04-01 + 35 days; full windows from 04-01 + 125; the test week (20 days after
    # train_start) ends by 09-30: train_start 09-10 at the latest
    assert "split.train_start can be 2018-05-06..2018-09-10 (2018-08-04 or later" in warning


def test_data_that_end_inside_the_test_period_are_an_error_naming_the_days():
    found = check_span(
        pd.Timestamp("2018-01-01"), pd.Timestamp("2018-08-10 12:00"), split=SPLIT, features=FEATURES
    )
    (error,) = found.errors
    assert error.startswith("the data end on 2018-08-10 but the test period runs to 2018-08-14")
    assert "split.train_start 4 days earlier" in error
    assert found.warnings == []


def test_data_that_begin_after_the_earliest_fold_are_an_error_naming_the_param():
    found = check_span(
        pd.Timestamp("2018-06-25"), pd.Timestamp("2018-12-31"), split=SPLIT, features=FEATURES
    )
    (error,) = found.errors
    assert "the earliest of the 4 validation folds trains from 2018-06-20" in error
    assert "5 days later, or lower split.n_folds" in error


def test_data_covering_everything_say_nothing():
    found = check_span(
        pd.Timestamp("2018-03-22"), pd.Timestamp("2018-08-14 23:59"), split=SPLIT, features=FEATURES
    )
    assert found == ([], [])
