"""Window features against hand-computed answers, the tie rule, leakage and online/batch parity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import transactions
from fraudlab.core import schema
from fraudlab.features.batch import build_features
from fraudlab.features.kernels import _range_max
from fraudlab.features.names import GROUPS, feature_names, group_feature_names, history_needed
from fraudlab.features.online import (
    histories,
    online_features,
    transaction_features,
)
from helpers import exact_columns, features_with


def _by_id(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.set_index("transaction_id").sort_index()


def test_customer_windows_cover_t_minus_n_to_t_including_current():
    frame = transactions(
        [
            (1, "2018-04-02 10:00", "A", 1, 10.0, 0),
            (2, "2018-04-02 12:00", "A", 2, 20.0, 0),
            (3, "2018-04-03 11:00", "A", 3, 30.0, 0),
            (4, "2018-04-10 11:00", "A", 4, 40.0, 0),  # exactly 7 days after id 3: 3 drops out
            (5, "2018-04-02 11:00", "B", 1, 99.0, 0),  # another customer never counts for A
        ]
    )
    params = features_with(
        customer_windows_days=[1, 7, 30],
        terminal_windows_days=[1],
        label_delay_days=7,
        night_end_hour=6,
    )
    got = _by_id(build_features(frame, params))

    assert got.loc[[1, 2, 3, 4], "customer_id_nb_tx_1day_window"].tolist() == [1, 2, 2, 1]
    assert got.loc[[1, 2, 3, 4], "customer_id_avg_amount_1day_window"].tolist() == [
        10.0,
        15.0,
        25.0,
        40.0,
    ]
    assert got.loc[[1, 2, 3, 4], "customer_id_nb_tx_7day_window"].tolist() == [1, 2, 3, 1]
    assert got.loc[[1, 2, 3, 4], "customer_id_avg_amount_7day_window"].tolist() == [
        10.0,
        15.0,
        20.0,
        40.0,
    ]
    assert got.loc[[1, 2, 3, 4], "customer_id_nb_tx_30day_window"].tolist() == [1, 2, 3, 4]
    assert got.loc[4, "customer_id_avg_amount_30day_window"] == 25.0
    assert got.loc[5, "customer_id_nb_tx_30day_window"] == 1


def test_terminal_windows_are_shifted_by_the_label_delay():
    frame = transactions(
        [
            (1, "2018-04-01 10:00", 1, "T", 5.0, 1),
            (2, "2018-04-01 11:00", 2, "T", 5.0, 0),
            (3, "2018-04-08 10:00", 3, "T", 5.0, 1),  # known_until = 04-01 10:00: sees id 1 only
            (4, "2018-04-08 10:30", 4, "T", 5.0, 0),  # sees id 1 only; ids 3 and 4 are too recent
            (5, "2018-04-08 11:00", 5, "T", 5.0, 0),  # sees ids 1 and 2
            (6, "2018-04-09 09:00", 6, "T", 5.0, 0),  # (03-31 09:00, 04-02 09:00]: ids 1 and 2
            (7, "2018-04-09 10:00", 7, "T", 5.0, 0),  # (04-01 10:00, 04-02 10:00]: id 2 only
            (8, "2018-04-16 10:00", 8, "T", 5.0, 0),  # window (04-08 10:00, 04-09 10:00]: 4..7
            (9, "2018-04-08 10:00", 9, "U", 5.0, 0),  # a terminal with no known history
        ]
    )
    params = features_with(
        customer_windows_days=[1],
        terminal_windows_days=[1, 7],
        label_delay_days=7,
        night_end_hour=6,
    )
    got = _by_id(build_features(frame, params))

    assert got["terminal_id_nb_tx_1day_window"].tolist() == [0, 0, 1, 1, 2, 2, 1, 4, 0]
    assert got["terminal_id_risk_1day_window"].tolist() == [0, 0, 1, 1, 0.5, 0.5, 0, 0, 0]
    # 7-day window of id 8: (04-02 10:00, 04-09 10:00] holds ids 3..7, one fraud (id 3)
    assert got.loc[8, "terminal_id_nb_tx_7day_window"] == 5
    assert got.loc[8, "terminal_id_risk_7day_window"] == pytest.approx(0.2)


def test_same_timestamp_rule_orders_ties_by_transaction_id():
    frame = transactions(
        [
            (5, "2018-04-02 10:00", "A", 1, 20.0, 0),
            (3, "2018-04-02 10:00", "A", 1, 10.0, 0),
            (9, "2018-04-02 10:00", "A", 1, 60.0, 0),
        ]
    )
    params = features_with(
        customer_windows_days=[1], terminal_windows_days=[1], label_delay_days=1, night_end_hour=6
    )
    got = _by_id(build_features(frame, params))
    assert got["customer_id_nb_tx_1day_window"].tolist() == [1, 2, 3]
    assert got["customer_id_avg_amount_1day_window"].tolist() == [10.0, 15.0, 30.0]


def test_calendar_flags():
    frame = transactions(
        [
            (1, "2018-04-07 06:59", "A", 1, 1.0, 0),  # Saturday, hour 6: night
            (2, "2018-04-09 07:00", "A", 1, 1.0, 0),  # Monday, hour 7: day
            (3, "2018-04-08 00:00", "A", 1, 1.0, 0),  # Sunday midnight
        ]
    )
    params = features_with(
        customer_windows_days=[1], terminal_windows_days=[1], label_delay_days=1, night_end_hour=6
    )
    got = _by_id(build_features(frame, params))
    assert got["tx_during_weekend"].tolist() == [1, 0, 1]
    assert got["tx_during_night"].tolist() == [1, 0, 1]


def test_row_order_of_the_input_does_not_matter(small_transactions, features_params):
    expected = build_features(small_transactions, features_params)
    shuffled = small_transactions.sample(frac=1.0, random_state=3)
    got = build_features(shuffled, features_params)
    pd.testing.assert_frame_equal(got, expected)


def test_string_ids_give_the_same_features_as_integer_ids(small_transactions, features_params):
    as_strings = small_transactions.assign(
        customer_id="c" + small_transactions["customer_id"].astype(str),
        terminal_id="t" + small_transactions["terminal_id"].astype(str),
    )
    names = feature_names(features_params)
    got = build_features(as_strings, features_params)[names]
    pd.testing.assert_frame_equal(got, build_features(small_transactions, features_params)[names])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_label_inside_the_delay_or_after_t_and_no_future_row_changes_a_feature(
    small_transactions, features_params, seed
):
    rng = np.random.default_rng(seed)
    names = feature_names(features_params)
    row = small_transactions.iloc[
        int(rng.integers(len(small_transactions) // 2, len(small_transactions)))
    ]
    t = row["tx_datetime"]
    delay = pd.Timedelta(days=features_params.label_delay_days)
    recent = small_transactions["tx_datetime"] > t - delay
    later = (small_transactions["tx_datetime"] > t) | (
        (small_transactions["tx_datetime"] == t)
        & (small_transactions["transaction_id"] > row["transaction_id"])
    )
    tampered = small_transactions.assign(
        tx_fraud=np.where(
            recent, 1 - small_transactions["tx_fraud"], small_transactions["tx_fraud"]
        ),
        tx_amount=np.where(
            later, small_transactions["tx_amount"] * 7, small_transactions["tx_amount"]
        ),
    )
    assert recent.sum() > 100
    assert later.any()

    def features_of_row(frame: pd.DataFrame) -> pd.Series:
        built = build_features(frame, features_params)
        return built.loc[built["transaction_id"] == row["transaction_id"], names].iloc[0]

    pd.testing.assert_series_equal(features_of_row(tampered), features_of_row(small_transactions))


def test_online_features_from_history_equal_batch_features(small_transactions, features_params):
    names = feature_names(features_params)
    batch = _by_id(build_features(small_transactions, features_params))
    ordered = small_transactions.sort_values(["tx_datetime", "transaction_id"])
    rng = np.random.default_rng(11)
    for position in rng.choice(np.arange(len(ordered) // 3, len(ordered)), size=40, replace=False):
        history = ordered.iloc[:position]
        new = ordered.iloc[[position]].drop(columns=["tx_fraud"])
        online = online_features(history, new, params=features_params).iloc[0]
        expected = batch.loc[new["transaction_id"].iloc[0], names]
        np.testing.assert_allclose(
            online[names].to_numpy(float), expected.to_numpy(float), rtol=1e-12, atol=0
        )


def test_online_features_handle_simultaneous_arrivals(features_params):
    history = transactions([(1, "2018-04-02 10:00", "A", "T", 10.0, 0)])
    new = transactions([(2, "2018-04-02 10:00", "A", "T", 30.0, 0)]).drop(columns=["tx_fraud"])
    got = online_features(history, new, params=features_params).iloc[0]
    assert got["customer_id_nb_tx_1day_window"] == 2
    assert got["customer_id_avg_amount_1day_window"] == 20.0


@pytest.mark.slow  # every transaction of the small data, one at a time
def test_every_transaction_scored_online_equals_batch(small_transactions, features_params):
    """The online path (the batch kernels on one customer's and one terminal's stored rows) gives
    every transaction of the data its batch features: counts, flags, maxima, medians and run
    lengths exactly, means and rates to 1e-9 (a sum over fewer rows may differ in the last
    bits)."""
    names = feature_names(features_params)
    batch = build_features(small_transactions, features_params)
    history = batch[list(schema.REQUIRED_COLUMNS)]
    times = history["tx_datetime"].to_numpy(dtype="datetime64[ns]").view(np.int64)
    ids = history["transaction_id"].to_numpy()
    by = {
        "customer_id": histories(history, "customer_id", history["tx_amount"].to_numpy()),
        "terminal_id": histories(history, "terminal_id", history["tx_fraud"].to_numpy()),
    }
    online = np.array(
        [
            transaction_features(
                time=int(time),
                transaction_id=int(tx_id),
                amount=float(amount),
                customer=by["customer_id"][customer],
                terminal=by["terminal_id"][terminal],
                params=features_params,
            )
            for time, tx_id, amount, customer, terminal in zip(
                times,
                ids,
                history["tx_amount"],
                history["customer_id"],
                history["terminal_id"],
                strict=True,
            )
        ]
    )
    expected = batch[names].to_numpy(dtype=np.float64)
    exact = exact_columns(names)
    np.testing.assert_array_equal(online[:, exact], expected[:, exact])
    np.testing.assert_allclose(online, expected, rtol=0, atol=1e-9)


def _extended(**values):
    """Every group, short windows for hand-computed frames."""
    return features_with(
        groups=list(GROUPS),
        customer_windows_days=[1],
        terminal_windows_days=[1, 7],
        label_delay_days=7,
        amount_windows_days=[7, 30],
        last_payments=3,
        anomaly_factor=3.0,
        anomaly_windows_days=[2, 14],
    ).model_copy(update=values)


def test_amount_ratios_compare_with_earlier_payments_only():
    frame = transactions(
        [
            (1, "2018-04-01 10:00", "A", 1, 10.0, 0),  # no earlier payment: ratios 1
            (2, "2018-04-02 10:00", "A", 1, 30.0, 0),  # earlier [10]
            (3, "2018-04-05 10:00", "A", 1, 20.0, 0),  # earlier [10, 30]
            (4, "2018-04-09 10:00", "A", 1, 40.0, 0),  # 7 days: id 2 is at t - 7d, out: [20]
            (5, "2018-04-05 10:00", "B", 1, 999.0, 0),  # another card never counts for A
            (6, "2018-04-01 10:00", "C", 1, 0.0, 0),
            (7, "2018-04-01 11:00", "C", 1, 5.0, 0),  # a zero baseline gives 1, not infinity
        ]
    )
    got = _by_id(build_features(frame, _extended()))
    mean_7, max_7 = (
        got["customer_id_amount_over_mean_7day_window"],
        got["customer_id_amount_over_max_7day_window"],
    )
    mean_30, max_30 = (
        got["customer_id_amount_over_mean_30day_window"],
        got["customer_id_amount_over_max_30day_window"],
    )
    assert mean_7.loc[[1, 2, 3, 4, 5, 6, 7]].tolist() == [1.0, 3.0, 1.0, 2.0, 1.0, 1.0, 1.0]
    assert max_7.loc[[1, 2, 3, 4, 5, 7]].tolist() == [1.0, 3.0, 20 / 30, 2.0, 1.0, 1.0]
    assert mean_30.loc[4] == 2.0  # earlier [10, 30, 20]
    assert max_30.loc[4] == 40 / 30


def test_last_payments_median_and_zscore_of_the_cards_last_n():
    frame = transactions(
        [
            (1, "2018-04-01 10:00", "A", 1, 10.0, 0),
            (2, "2018-04-02 10:00", "A", 1, 30.0, 0),  # last [10]: median 10, z 0 (one value)
            (3, "2018-04-03 10:00", "A", 1, 20.0, 0),  # last [30, 10]: median 20, z 0
            (4, "2018-04-04 10:00", "A", 1, 40.0, 0),
            (5, "2018-04-05 10:00", "A", 1, 100.0, 0),  # last 3: [40, 20, 30]
            (6, "2018-05-20 10:00", "A", 1, 50.0, 0),  # 45 days on: past the 30-day look-back
            (7, "2018-04-01 10:00", "B", 1, 20.0, 0),
            (8, "2018-04-01 10:00", "B", 1, 20.0, 0),
            (9, "2018-04-01 10:00", "B", 1, 60.0, 0),  # last [20, 20]: no spread, z 0
        ]
    )
    got = _by_id(build_features(frame, _extended()))
    median = got["customer_id_amount_over_median_last_3"]
    zscore = got["customer_id_amount_zscore_last_3"]
    assert median.loc[[1, 2, 3, 5, 6, 9]].tolist() == [1.0, 3.0, 1.0, 100 / 30, 1.0, 3.0]
    # mean 30, sample std sqrt((10² + 10² + 0²) / 2) = 10
    assert zscore.loc[5] == 7.0
    assert zscore.loc[[1, 2, 3, 6, 9]].tolist() == [0.0] * 5
    # id 4's last 3: [20, 30, 10], mean 20, std 10
    assert zscore.loc[4] == 2.0


def test_anomaly_counts_count_payments_far_above_the_cards_median():
    frame = transactions(
        [
            (1, "2018-04-01 10:00", "A", 1, 10.0, 0),  # no median: never anomalous
            (2, "2018-04-02 10:00", "A", 1, 10.0, 0),
            (3, "2018-04-03 10:00", "A", 1, 50.0, 0),  # > 3 x 10: anomalous
            (4, "2018-04-05 10:00", "A", 1, 10.0, 0),  # 2 days: id 3 at exactly t - 2d is out
            (5, "2018-04-21 10:00", "A", 1, 100.0, 0),  # last 3 [10, 50, 10]: anomalous
            (6, "2018-04-21 10:00", "A", 1, 30.0, 0),  # = 3 x 10, not above; counts id 5
        ]
    )
    got = _by_id(build_features(frame, _extended()))
    assert got["customer_id_nb_anomalies_2day_window"].tolist() == [0, 0, 1, 0, 1, 1]
    assert got["customer_id_nb_anomalies_14day_window"].tolist() == [0, 0, 1, 1, 1, 1]


def test_known_labels_see_the_terminals_labels_up_to_t_minus_the_delay():
    frame = transactions(
        [
            (1, "2018-04-01 10:00", 1, "T", 5.0, 0),
            (2, "2018-04-02 10:00", 2, "T", 5.0, 1),
            (3, "2018-04-03 10:00", 3, "T", 5.0, 1),
            (4, "2018-04-09 10:00", 4, "T", 5.0, 0),  # knows ids 1, 2: a run of one, 7 days old
            (5, "2018-04-10 12:00", 5, "T", 5.0, 0),  # knows ids 1-3: a run of two since id 2
            (6, "2018-04-17 09:00", 6, "T", 5.0, 0),  # knows ids 3, 4 (14 days back): no run
            (7, "2018-04-17 11:00", 7, "T", 5.0, 0),  # knows id 4 only: no fraud within reach
            (8, "2018-04-01 00:00", 8, "U", 5.0, 1),
            (9, "2018-04-05 00:00", 9, "U", 5.0, 1),
            (10, "2018-04-16 00:00", 10, "U", 5.0, 0),  # id 8 is out of reach: the run is id 9
            (11, "2018-04-16 00:00", 11, "V", 5.0, 0),  # nothing known
        ]
    )
    got = _by_id(build_features(frame, _extended()))
    ids = [4, 5, 6, 7, 10, 11]
    assert got.loc[ids, "terminal_id_last_known_fraud"].tolist() == [1, 1, 0, 0, 1, 0]
    assert got.loc[ids, "terminal_id_known_fraud_run_length"].tolist() == [1, 2, 0, 0, 1, 0]
    assert got.loc[ids, "terminal_id_known_fraud_run_age_days"].tolist() == [
        7.0,
        8 + 2 / 24,
        0.0,
        0.0,
        11.0,
        0.0,
    ]
    # none within reach: the reach itself, delay + longest window = 14 days
    assert got.loc[ids, "terminal_id_days_since_known_fraud"].tolist() == [
        7.0,
        7 + 2 / 24,
        13 + 23 / 24,
        14.0,
        11.0,
        14.0,
    ]


def test_the_handbook_set_is_the_15_features_and_groups_add_their_columns(small_transactions):
    windows = {"customer_windows_days": [1, 7, 30], "terminal_windows_days": [1, 7, 30]}
    handbook = _extended(groups=[], **windows)
    assert len(feature_names(handbook)) == 15
    got = build_features(small_transactions, handbook)
    assert not [name for name in got if name.startswith(("customer_id_amount", "terminal_id_k"))]
    every = build_features(small_transactions, _extended(**windows))
    pd.testing.assert_frame_equal(every[list(got.columns)], got)
    for group in GROUPS:
        alone = _extended(groups=[group], **windows)
        names = feature_names(alone)
        assert names[:15] == feature_names(handbook)
        assert names[15:] == group_feature_names(alone)[group]
        pd.testing.assert_frame_equal(
            build_features(small_transactions, alone)[names], every[names]
        )


def test_history_needed_covers_what_each_group_reads():
    customer, terminal = history_needed(_extended(groups=[]))
    assert (customer.days, terminal.days) == (1, 14)
    assert history_needed(_extended(groups=["amount_ratios"]))[0].days == 30
    assert history_needed(_extended(groups=["last_payments"]))[0].days == 30
    # an anomaly 14 days back was judged against the 30 days before it
    assert history_needed(_extended(groups=["anomaly_counts"]))[0].days == 44
    assert history_needed(_extended(groups=["known_labels"]))[1].days == 14


@pytest.mark.parametrize("n_ranges", [5, 500])  # slices, and the sparse table
def test_range_max_is_the_max_of_each_range(n_ranges):
    rng = np.random.default_rng(n_ranges)
    values = rng.normal(size=300)
    starts = rng.integers(0, 300, n_ranges)
    ends = np.minimum(starts + rng.integers(0, 80, n_ranges), 300)
    got = _range_max(values, starts, ends)
    expected = [values[a:b].max() if b > a else np.nan for a, b in zip(starts, ends, strict=True)]
    np.testing.assert_array_equal(got, expected)
